"""Decoding one 30 s window per audio: the roles of sampling.py wired together around a backend.

Shaped like openai-whisper's decoding.py: DecodingTask builds the prompt, the logit filters, the token
decoder and the ranker from DecodingOptions; _main_loop asks Inference for logits, filters them and lets
the decoder choose. Inference owns the decoder rows, their cache offsets and the self-attention cache; the
backend owns every tensor (see backends/base.py), so beam reordering is an index passed to the next step
and the backend reorders its caches before that step (greedy steps never do).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from whisper_export.runtime.audio import CHUNK_LENGTH
from whisper_export.backends.base import Backend, CrossKV
from whisper_export.runtime.options import DecodingOptions
from whisper_export.runtime.sampling import (
    ApplyTimestampRules,
    BeamSearchDecoder,
    GreedyDecoder,
    LogitFilter,
    MaximumLikelihoodRanker,
    SuppressBlank,
    SuppressTokens,
    TokenDecoder,
    log_softmax,
)
from whisper_export.tokenizer import WhisperTokenizer


@dataclass(frozen=True)
class DecodingResult:
    language: str
    tokens: list[int]  # the sampled tokens, without prompt and eot
    text: str
    avg_logprob: float
    sum_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float
    language_probs: dict[str, float] | None = field(default=None, repr=False)


def compression_ratio(text: str) -> float:
    """How well zlib compresses the text: repetitive (hallucinated) text compresses far better than speech."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class Inference:
    """The decoder state of one decoding run: rows, how many tokens each has in the cache, the cache."""

    def __init__(self, backend: Backend, cross: CrossKV, capacity: int):
        self.backend = backend
        self.cross = cross
        self.capacity = capacity
        self.reset()

    def reset(self) -> None:
        self.cache = None
        self.length = 0  # tokens of every row already in the cache
        self.cache_index: np.ndarray | None = None

    def logits(self, tokens: np.ndarray, positions: Sequence[int] = (-1,)) -> np.ndarray:
        """tokens (R, T): the whole sequences so far; only the T - length new ones are sent.

        positions index the T tokens (negative from the end) and must be new ones.
        Returns float32 logits (R, len(positions), n_vocab).
        """
        rows, total = tokens.shape
        if self.cache is None:
            self.cache = self.backend.new_cache(rows, self.capacity)
        new = np.ascontiguousarray(tokens[:, self.length :], dtype=np.int64)
        at = np.asarray([p % total - self.length for p in positions], dtype=np.int64)
        offsets, cache_index = self._next_step(rows)
        logits, self.cache = self.backend.decode(new, offsets, cache_index, at, self.cache, self.cross)
        self.length = total
        return logits

    def greedy(self, tokens: np.ndarray, logit_bias: np.ndarray, steps: int,
               stop_token: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Up to `steps` greedy tokens per row after tokens (R, T), each step fed the previous choice, fewer once
        every row has chosen stop_token (Backend.decode_greedy): (chosen (R, k), their log-probabilities (R, k))."""
        assert self.cache_index is None, "greedy steps never reorder the cache"
        new, offsets, _ = self._one_more(tokens)
        chosen, logprobs, self.cache = self.backend.decode_greedy(new, offsets, logit_bias, self.cache, self.cross,
                                                                  steps, stop_token)
        self.length += chosen.shape[1]
        return chosen, logprobs

    def top(self, tokens: np.ndarray, logit_bias: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each row's k best next tokens after tokens (R, T), best first, and their log-probabilities under
        the logits + logit_bias (Backend.decode_top): ((R, k) int64, (R, k) float32)."""
        new, offsets, cache_index = self._one_more(tokens)
        top, logprobs, self.cache = self.backend.decode_top(new, offsets, cache_index, logit_bias, k, self.cache,
                                                            self.cross)
        self.length += 1
        return top, logprobs

    def top_limited(self, tokens: np.ndarray, logit_bias: np.ndarray, rules: ApplyTimestampRules,
                    k: int) -> tuple[np.ndarray, np.ndarray]:
        """top() under the timestamp rules of each row's state after tokens (R, T) (Backend.decode_top_limited)."""
        new, offsets, cache_index = self._one_more(tokens)
        top, logprobs, self.cache = self.backend.decode_top_limited(new, offsets, cache_index, logit_bias,
                                                                    rules.state(tokens), rules, k, self.cache, self.cross)
        self.length += 1
        return top, logprobs

    def greedy_limited(self, tokens: np.ndarray, logit_bias: np.ndarray, rules: ApplyTimestampRules, steps: int,
                       stop_token: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """greedy() under logit_bias and the timestamp rules, from the rows' timestamp state after tokens (R, T)
        (Backend.decode_greedy_limited): (chosen (R, k), their log-probabilities (R, k))."""
        assert self.cache_index is None, "greedy steps never reorder the cache"
        new, offsets, _ = self._one_more(tokens)
        chosen, logprobs, self.cache = self.backend.decode_greedy_limited(
            new, offsets, logit_bias, rules.state(tokens), rules, self.cache, self.cross, steps, stop_token)
        self.length += chosen.shape[1]
        return chosen, logprobs

    def _one_more(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(the last token of each row (R, 1), offsets, cache_index) of a step that continues a started decode
        (tokens (R, T) hold exactly one token more than the cache)."""
        assert self.cache is not None and tokens.shape[1] == self.length + 1, "a step continues a decode by one token"
        return (np.ascontiguousarray(tokens[:, -1:], dtype=np.int64), *self._next_step(tokens.shape[0]))

    def _next_step(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, cache_index) of the next step: every row continues at length, from the row a pending
        rearrange_kv_cache named (or its own); the pending reorder is used up."""
        cache_index = self.cache_index if self.cache_index is not None else np.arange(rows, dtype=np.int64)
        self.cache_index = None
        return np.full(rows, self.length, dtype=np.int64), cache_index

    def rearrange_kv_cache(self, source_indices: Sequence[int]) -> None:
        """Row r continues cache row source_indices[r] from the next step on (the backend reorders)."""
        self.cache_index = np.asarray(source_indices, dtype=np.int64)


def suppress_set(tokenizer: WhisperTokenizer, options: DecodingOptions) -> tuple[int, ...]:
    """openai-whisper's suppress list: the user's ids (-1 = non-speech symbols) plus the control tokens
    that must never be sampled (task, sot, sot_prev, sot_lm, no_speech)."""
    ids = list(options.suppress_token_ids())
    if -1 in ids:
        ids = [t for t in ids if t >= 0] + list(tokenizer.non_speech_tokens)
    s = tokenizer.special
    ids += [s.transcribe, s.translate, s.sot, s.sot_prev, s.sot_lm, s.no_speech]
    return tuple(sorted(set(ids)))


def detect_language(
    backend: Backend, tokenizer: WhisperTokenizer, cross: CrossKV, n_audio: int
) -> tuple[list[str], list[dict[str, float]]]:
    """The most likely language of each audio: softmax over the language tokens after [sot]."""
    special = tokenizer.special
    if not tokenizer.is_multilingual:
        raise ValueError(f"detect_language: received an English-only model (n_vocab={tokenizer.n_vocab}), expected a multilingual one")
    inference = Inference(backend, cross, capacity=1)
    logits = inference.logits(np.full((n_audio, 1), special.sot, dtype=np.int64))[:, 0]  # (n_audio, V)
    lang_ids = np.asarray(special.language_tokens)
    probs = np.exp(log_softmax(logits[:, lang_ids]))  # masking the rest to -inf == a softmax over these
    codes = special.language_codes
    return [codes[int(i)] for i in probs.argmax(-1)], [dict(zip(codes, map(float, p))) for p in probs]


class DecodingTask:
    def __init__(self, backend: Backend, tokenizer: WhisperTokenizer, options: DecodingOptions):
        self.backend, self.tokenizer, self.options = backend, tokenizer, options
        special = tokenizer.special
        dims = backend.dims
        if tokenizer.n_vocab != dims.n_vocab:
            raise ValueError(f"tokenizer: received n_vocab {tokenizer.n_vocab}, expected the model's {dims.n_vocab}")
        # raises for an unknown language, or translate/non-English on an English-only model
        tokenizer.sot_sequence(options.language or ("en" if tokenizer.is_multilingual else None), options.task)
        self.n_group = options.beam_size or options.best_of or 1
        self.n_ctx = dims.n_text_ctx
        self.sample_len = options.sample_len or self.n_ctx // 2
        self.eot = special.eot

        self.sequence_ranker = MaximumLikelihoodRanker(options.length_penalty)
        self.logit_filters: list[LogitFilter] = []
        self._suppress = suppress_set(tokenizer, options)
        self._rng = np.random.default_rng(options.seed)

    def _initial_tokens(self, language: str, prompt: str | list[int] | None) -> list[int]:
        o, tok = self.options, self.tokenizer
        tokens = tok.sot_sequence(language if tok.is_multilingual else None, o.task)
        if o.without_timestamps:
            tokens = tokens + [tok.special.no_timestamps]
        if o.prefix:
            prefix = tok.encode(" " + o.prefix.strip()) if isinstance(o.prefix, str) else list(o.prefix)
            if self.sample_len < self.n_ctx // 2:  # prefix and sample share half the context
                prefix = prefix[-(self.n_ctx // 2 - self.sample_len) :]
            tokens = tokens + prefix
        if prompt:
            # the previous text may use at most half the context
            prompt = tok.encode(" " + prompt.strip()) if isinstance(prompt, str) else list(prompt)
            tokens = [tok.special.sot_prev] + prompt[-(self.n_ctx // 2 - 1) :] + tokens
        return tokens

    def _wire(self, inference: Inference, sample_begin: int) -> TokenDecoder:
        """Build the filters and the token decoder for a prompt of sample_begin tokens."""
        o, special = self.options, self.tokenizer.special
        self.logit_filters = []
        if o.suppress_blank:
            self.logit_filters.append(SuppressBlank(self.tokenizer.encode(" ") + [special.eot], sample_begin))
        if self._suppress:
            self.logit_filters.append(SuppressTokens(self._suppress))
        if not o.without_timestamps:
            precision = CHUNK_LENGTH / self.backend.dims.n_audio_ctx  # 0.02 s per timestamp token
            max_initial = None
            if o.max_initial_timestamp:
                max_initial = round(o.max_initial_timestamp / precision)
            self.logit_filters.append(ApplyTimestampRules(special, sample_begin, max_initial))
        if o.beam_size is not None:
            return BeamSearchDecoder(o.beam_size, special.eot, inference, o.patience)
        return GreedyDecoder(o.temperature, special.eot, self._rng)

    def _picked(self, decoder: TokenDecoder) -> tuple[np.ndarray, ApplyTimestampRules | None] | None:
        """How the backend can pick the tokens after the first sampled step, with no logits to the host: (the
        filters as one bias, None) when every filter is a fixed bias (_later_bias); (the other filters' bias,
        the timestamp rules) for greedy at temperature 0 and beam search with timestamps; None when the host
        needs the logits."""
        later_bias = self._later_bias(decoder)
        if later_bias is not None:
            return later_bias, None
        if not (isinstance(decoder, GreedyDecoder) and decoder.temperature == 0 or isinstance(decoder, BeamSearchDecoder)):
            return None
        rules = [f for f in self.logit_filters if isinstance(f, ApplyTimestampRules)]
        if len(rules) != 1:
            return None
        bias = rules[0].fixed_bias(self.backend.dims.n_vocab)
        for logit_filter in self.logit_filters:
            if logit_filter is not rules[0]:
                part = logit_filter.later_bias(bias.shape[0])
                if part is None:
                    return None
                bias += part
        return bias, rules[0]

    def _later_bias(self, decoder: TokenDecoder) -> np.ndarray | None:
        """The logit filters of every step after the first as one additive bias, when the decoder needs only
        the best of the filtered logits (greedy at temperature 0: the argmax; beam search: each row's candidates)
        and every filter is independent of the tokens."""
        if not (isinstance(decoder, GreedyDecoder) and decoder.temperature == 0 or isinstance(decoder, BeamSearchDecoder)):
            return None
        bias = np.zeros(self.backend.dims.n_vocab, np.float32)
        for logit_filter in self.logit_filters:
            part = logit_filter.later_bias(bias.shape[0])
            if part is None:
                return None
            bias += part
        return bias

    def run(
        self,
        cross: CrossKV,
        n_audio: int,
        languages: Sequence[str | None] | None = None,
        prompts: Sequence[str | list[int] | None] | None = None,
    ) -> list[DecodingResult]:
        """Decode n_audio windows whose encoder output is cross.

        languages/prompts: per audio, overriding options.language/options.prompt (transcribe_batch decodes
        files with different languages and previous text together); None entries mean "detect"/"no prompt".
        Every audio's prompt must have the same length: the rows share one token array.
        """
        o, tok = self.options, self.tokenizer
        langs = list(languages) if languages is not None else [o.language] * n_audio
        prompts = list(prompts) if prompts is not None else [o.prompt] * n_audio
        if len(langs) != n_audio or len(prompts) != n_audio:
            raise ValueError(f"received {len(langs)} languages and {len(prompts)} prompts, expected {n_audio} each")
        language_probs: list[dict[str, float] | None] = [None] * n_audio
        if not tok.is_multilingual:
            langs = ["en"] * n_audio
        elif any(lang is None for lang in langs):
            detected, probs = detect_language(self.backend, tok, cross, n_audio)
            langs = [lang or d for lang, d in zip(langs, detected)]
            language_probs = list(probs)

        resolved: list[str] = [lang or "en" for lang in langs]  # every None was detected above
        initial = [self._initial_tokens(lang, prompt) for lang, prompt in zip(resolved, prompts)]
        if len({len(t) for t in initial}) != 1:
            raise ValueError(f"received prompts of {sorted({len(t) for t in initial})} tokens, expected one length per batch")
        sample_begin = len(initial[0])
        sot_index = initial[0].index(tok.special.sot)
        capacity = min(self.n_ctx, sample_begin + self.sample_len)
        inference = Inference(self.backend, cross, capacity)
        decoder = self._wire(inference, sample_begin)
        tokens = np.repeat(np.asarray(initial, dtype=np.int64), self.n_group, axis=0)  # (n_audio * n_group, L)

        tokens, sum_logprobs, no_speech = self._main_loop(inference, decoder, tokens, sot_index, capacity)

        tokens = tokens.reshape(n_audio, self.n_group, -1)
        sum_logprobs = sum_logprobs.reshape(n_audio, self.n_group)
        no_speech = no_speech[:: self.n_group]
        candidates, scores = decoder.finalize(tokens, sum_logprobs)
        # the sampled tokens only: from the end of the prompt to the first eot
        candidates = [[seq[sample_begin : seq.index(self.eot, sample_begin)] for seq in group] for group in candidates]
        selected = self.sequence_ranker.rank(candidates, scores)
        results = []
        for i, choice in enumerate(selected):
            seq, sum_lp = candidates[i][choice], scores[i][choice]
            text = tok.decode(seq).strip()
            results.append(
                DecodingResult(
                    language=resolved[i],
                    tokens=seq,
                    text=text,
                    avg_logprob=sum_lp / (len(seq) + 1),  # + 1: the eot's log probability is in the sum
                    sum_logprob=sum_lp,
                    no_speech_prob=float(no_speech[i]),
                    temperature=o.temperature,
                    compression_ratio=compression_ratio(text),
                    language_probs=language_probs[i],
                )
            )
        return results

    def _main_loop(self, inference: Inference, decoder: TokenDecoder, tokens: np.ndarray, sot_index: int, capacity: int):
        n_rows = tokens.shape[0]
        sum_logprobs = np.zeros(n_rows, dtype=np.float64)
        no_speech_probs = np.full(n_rows, np.nan)
        decoder.reset()
        picked = self._picked(decoder)
        i = 0
        while i < self.sample_len:
            if i > 0 and picked is not None:  # the backend picks: no logits to the host
                budget = min(self.sample_len - i, capacity - tokens.shape[-1])
                tokens, completed, steps = self._picked_steps(inference, decoder, tokens, *picked, sum_logprobs,
                                                              budget)
                i += steps
            else:
                if i == 0:  # the prompt step also yields the logits after <|startoftranscript|>
                    logits = inference.logits(tokens, positions=(sot_index, -1))
                    no_speech_probs = np.exp(log_softmax(logits[:, 0]))[:, self.tokenizer.special.no_speech]
                else:
                    logits = inference.logits(tokens)
                logits = logits[:, -1]  # (R, V), the backend's own array: filtered in place
                for logit_filter in self.logit_filters:
                    logit_filter.apply(logits, tokens)
                tokens, completed = decoder.update(tokens, logits, sum_logprobs)
                i += 1
            # a full cache cannot take another token
            if completed or tokens.shape[-1] >= capacity:
                break
        return tokens, sum_logprobs, no_speech_probs

    def _picked_steps(self, inference: Inference, decoder: TokenDecoder, tokens: np.ndarray, later_bias: np.ndarray,
                      rules: ApplyTimestampRules | None, sum_logprobs: np.ndarray,
                      budget: int) -> tuple[np.ndarray, bool, int]:
        """Steps whose tokens the backend picks from the logits + later_bias: a beam step from each row's
        candidates (Backend.decode_top; under the timestamp rules: decode_top_limited), or greedy steps up to `budget` (under the timestamp rules:
        Backend.decode_greedy_limited), each fed the previous choice on the backend's side until every row has
        chosen eot (what follows a row's eot is dropped). Returns (tokens, completed, steps run)."""
        if isinstance(decoder, BeamSearchDecoder):
            if rules is not None:
                top, top_logprobs = inference.top_limited(tokens, later_bias, rules, decoder.candidates)
            else:
                top, top_logprobs = inference.top(tokens, later_bias, decoder.candidates)
            return (*decoder.update_top(tokens, top, top_logprobs, sum_logprobs), 1)
        assert isinstance(decoder, GreedyDecoder)
        if rules is not None:
            chosen, logprobs = inference.greedy_limited(tokens, later_bias, rules, budget, stop_token=self.eot)
        else:
            chosen, logprobs = inference.greedy(tokens, later_bias, budget, stop_token=self.eot)
        completed = False
        for j in range(chosen.shape[1]):
            tokens, completed = decoder.update_chosen(tokens, chosen[:, j], logprobs[:, j], sum_logprobs)
            if completed:
                break
        return tokens, completed, chosen.shape[1]


def decode(
    backend: Backend, tokenizer: WhisperTokenizer, mel: np.ndarray, options: DecodingOptions | None = None
) -> list[DecodingResult]:
    """mel (n_audio, n_mels, 3000) float32 -> one result per audio."""
    options = options or DecodingOptions()
    task = DecodingTask(backend, tokenizer, options)
    return task.run(backend.encode(mel), mel.shape[0])
