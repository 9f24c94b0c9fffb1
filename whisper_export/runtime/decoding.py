"""Decoding one 30 s window: the roles of sampling.py wired together, one step at a time.

Shaped like openai-whisper's DecodingTask: WindowDecode builds the prompt, the logit filters, the token decoder
and the ranker from DecodingOptions in one constructor. It does not run the decoder itself: the scheduler
(scheduler.py) batches many windows' steps into one backend call per step and hands each window its rows'
share. What a window wants from each step is data (a backends.picking.Pick): the prompt step's logits go to the
host (the first sampled token has rules of its own), and after it the best token (greedy), each beam's
candidates (beam search) or the logits (sampling), under the filters that do not depend on the tokens as one
bias, and under the timestamp rules as per-row state, so a backend can pick on the device.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from whisper_export.backends.picking import Pick, log_softmax
from whisper_export.backends.step import StepResult
from whisper_export.dims import ModelDims
from whisper_export.runtime.audio import CHUNK_LENGTH
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


def suppress_set(tokenizer: WhisperTokenizer, options: DecodingOptions) -> tuple[int, ...]:
    """openai-whisper's suppress list: the user's ids (-1 = non-speech symbols) plus the control tokens
    that must never be sampled (task, sot, sot_prev, sot_lm, no_speech)."""
    ids = list(options.suppress_token_ids())
    if -1 in ids:
        ids = [t for t in ids if t >= 0] + list(tokenizer.non_speech_tokens)
    s = tokenizer.special
    ids += [s.transcribe, s.translate, s.sot, s.sot_prev, s.sot_lm, s.no_speech]
    return tuple(sorted(set(ids)))


def initial_tokens(tokenizer: WhisperTokenizer, options: DecodingOptions, language: str | None,
                   prompt: str | list[int] | None, n_ctx: int, sample_len: int) -> list[int]:
    """[<|startofprev|> previous text] sot sequence [<|notimestamps|>] [prefix], as openai-whisper builds them."""
    o, tok = options, tokenizer
    tokens = tok.sot_sequence(language if tok.is_multilingual else None, o.task)
    if o.without_timestamps:
        tokens = tokens + [tok.special.no_timestamps]
    if o.prefix:
        prefix = tok.encode(" " + o.prefix.strip()) if isinstance(o.prefix, str) else list(o.prefix)
        if sample_len < n_ctx // 2:  # prefix and sample share half the context
            prefix = prefix[-(n_ctx // 2 - sample_len) :]
        tokens = tokens + prefix
    if prompt:
        # the previous text may use at most half the context
        prompt = tok.encode(" " + prompt.strip()) if isinstance(prompt, str) else list(prompt)
        tokens = [tok.special.sot_prev] + prompt[-(n_ctx // 2 - 1) :] + tokens
    return tokens


class WindowDecode:
    """One window at one temperature: its rows (group = beams, samples, or 1), their tokens so far, and the roles
    that turn each step's output into the next tokens. The scheduler asks for prompt(), feeds take_prompt() the
    prompt step's logits at prompt_positions, then repeatedly takes next_step() and feeds take_step() its result,
    until finished; result() ranks the candidates."""

    def __init__(self, tokenizer: WhisperTokenizer, dims: ModelDims, options: DecodingOptions, language: str,
                 prompt: str | list[int] | None = None, rng: np.random.Generator | None = None):
        o, special = options, tokenizer.special
        if tokenizer.n_vocab != dims.n_vocab:
            raise ValueError(f"tokenizer: received n_vocab {tokenizer.n_vocab}, expected the model's {dims.n_vocab}")
        # raises for an unknown language, or translate/non-English on an English-only model
        tokenizer.sot_sequence(o.language or ("en" if tokenizer.is_multilingual else None), o.task)
        self.tokenizer, self.options, self.language = tokenizer, o, language
        self.group = o.beam_size or o.best_of or 1
        self.n_ctx, self.n_vocab = dims.n_text_ctx, dims.n_vocab
        self.sample_len = o.sample_len or self.n_ctx // 2
        initial = initial_tokens(tokenizer, o, language, prompt, self.n_ctx, self.sample_len)
        self.sample_begin = len(initial)
        self.sot_index = initial.index(special.sot)
        # tokens a row may hold: openai-whisper stops once a row holds more than n_ctx, so the last sampled token
        # (never fed back) may be the (n_ctx + 1)-th
        self.limit = min(self.n_ctx + 1, self.sample_begin + self.sample_len)
        self.eot = special.eot

        self.logit_filters: list[LogitFilter] = []
        if o.suppress_blank:
            self.logit_filters.append(SuppressBlank(tokenizer.encode(" ") + [special.eot], self.sample_begin))
        suppress = suppress_set(tokenizer, o)
        if suppress:
            self.logit_filters.append(SuppressTokens(suppress))
        self.timestamp_rules: ApplyTimestampRules | None = None
        if not o.without_timestamps:
            precision = CHUNK_LENGTH / dims.n_audio_ctx  # 0.02 s per timestamp token
            max_initial = round(o.max_initial_timestamp / precision) if o.max_initial_timestamp else None
            self.timestamp_rules = ApplyTimestampRules(special, self.sample_begin, max_initial)
            self.logit_filters.append(self.timestamp_rules)
        self.decoder: TokenDecoder
        if o.beam_size is not None:
            self.decoder = BeamSearchDecoder(o.beam_size, special.eot, o.patience)
        else:
            self.decoder = GreedyDecoder(o.temperature, special.eot, rng or np.random.default_rng(o.seed))
        self.sequence_ranker = MaximumLikelihoodRanker(o.length_penalty)
        self.later = self._later_pick()

        self.tokens = np.repeat(np.asarray([initial], dtype=np.int64), self.group, axis=0)  # (G, T)
        self.sum_logprobs = np.zeros(self.group, dtype=np.float64)
        self.no_speech_prob = float("nan")
        self.finished = False
        self.sources: list[int] | None = None  # a beam step's reorder: the row each row continues

    # -- what to pick -------------------------------------------------------------------------------------

    def _later_pick(self) -> Pick:
        """What every step after the prompt step asks for: the decoder needs only the best of the filtered
        logits (greedy at temperature 0: the argmax; beam search: each row's candidates) and every filter but
        the timestamp rules is a fixed bias: then the backend picks; else the logits come to the host."""
        picks = isinstance(self.decoder, BeamSearchDecoder) or self.decoder.temperature == 0  # type: ignore[attr-defined]
        bias = np.zeros(self.n_vocab, np.float32)
        for logit_filter in self.logit_filters:
            part = (self.timestamp_rules.rules.fixed_bias(self.n_vocab) if logit_filter is self.timestamp_rules
                    else logit_filter.later_bias(self.n_vocab))
            if part is None:
                picks = False
                break
            bias += part
        if not picks:
            return Pick("logits")
        rules = self.timestamp_rules.rules if self.timestamp_rules is not None else None
        if isinstance(self.decoder, BeamSearchDecoder):
            return Pick("top", k=self.decoder.candidates, bias=bias, rules=rules)
        return Pick("best", bias=bias, rules=rules, stop_token=self.eot)

    def pick_key(self) -> tuple:
        """Windows whose later steps ask for the same pick (and have as many rows) can share a backend call."""
        p = self.later
        bias = hash(p.bias.tobytes()) if p.bias is not None else None
        return self.group, p.kind, p.k, p.rules is not None, bias

    # -- the scheduler's side -------------------------------------------------------------------------------

    def prompt(self) -> np.ndarray:
        """The prompt step's tokens (G, sample_begin), written at offset 0."""
        return self.tokens

    @property
    def prompt_positions(self) -> tuple[int, int]:
        """The prompt positions whose logits take_prompt needs: after <|startoftranscript|>, and the last."""
        return self.sot_index, self.sample_begin - 1

    def take_prompt(self, logits: np.ndarray) -> None:
        """logits (G, 2, V) at prompt_positions: the no-speech probability, then the first sampled token."""
        self.no_speech_prob = float(np.exp(log_softmax(logits[:1, 0]))[0, self.tokenizer.special.no_speech])
        first = np.array(logits[:, 1], dtype=np.float32)  # (G, V)
        if len(first) > 1 and (first == first[:1]).all():
            # the G rows hold one prompt: filter one row and let the decoder choose for all from it (beam search's
            # candidates, or G samples), the same tokens as from G copies at a G-th of the host work
            first = first[:1]
        self._update_from_logits(first)

    def budget(self) -> int:
        """Steps this window may still take (each appends one token per row)."""
        return self.limit - self.tokens.shape[1]

    def next_tokens(self) -> np.ndarray:
        """(G, 1): each row's last token, which the next step writes at offset()."""
        return self.tokens[:, -1:]

    def offset(self) -> int:
        return self.tokens.shape[1] - 1

    def timestamp_state(self) -> np.ndarray | None:
        return self.timestamp_rules.state(self.tokens) if self.later.rules is not None else None

    def take_step(self, result: StepResult) -> None:
        """The rows' share of a step that asked for self.later (logits (G, 1, V), or tokens and log-probabilities
        (G, k))."""
        self.sources = None
        if self.later.kind == "logits":
            assert result.logits is not None
            self._update_from_logits(np.array(result.logits[:, 0], dtype=np.float32))
        elif self.later.kind == "top":
            assert isinstance(self.decoder, BeamSearchDecoder)
            self.tokens, completed = self.decoder.update_top(self.tokens, result.tokens, result.logprobs,
                                                             self.sum_logprobs)
            self.sources = self.decoder.source_indices
            self._after(completed)
        else:
            assert isinstance(self.decoder, GreedyDecoder) and result.tokens is not None
            for j in range(result.tokens.shape[1]):
                self.tokens, completed = self.decoder.update_chosen(self.tokens, result.tokens[:, j],
                                                                    result.logprobs[:, j], self.sum_logprobs)
                self._after(completed)
                if self.finished:
                    break

    def _update_from_logits(self, logits: np.ndarray) -> None:
        """logits (G, V), or (1, V) shared by every row (whose tokens are then the same too)."""
        for logit_filter in self.logit_filters:
            logit_filter.apply(logits, self.tokens[: len(logits)])
        self.tokens, completed = self.decoder.update(self.tokens, logits, self.sum_logprobs)
        if isinstance(self.decoder, BeamSearchDecoder):
            self.sources = self.decoder.source_indices
        self._after(completed)

    def _after(self, completed: bool) -> None:
        # a full cache cannot take another token
        self.finished = completed or self.tokens.shape[1] >= self.limit

    # -- the outcome ------------------------------------------------------------------------------------

    def result(self, language_probs: dict[str, float] | None = None) -> DecodingResult:
        tokens, sums = self.tokens[None], self.sum_logprobs[None]  # (1, G, T): one audio
        candidates, scores = self.decoder.finalize(tokens, sums)
        # the sampled tokens only: from the end of the prompt to the first eot
        candidates = [[seq[self.sample_begin : seq.index(self.eot, self.sample_begin)] for seq in group]
                      for group in candidates]
        choice = self.sequence_ranker.rank(candidates, scores)[0]
        seq, sum_lp = candidates[0][choice], scores[0][choice]
        text = self.tokenizer.decode(seq).strip()
        return DecodingResult(
            language=self.language,
            tokens=seq,
            text=text,
            avg_logprob=sum_lp / (len(seq) + 1),  # + 1: the eot's log probability is in the sum
            sum_logprob=sum_lp,
            no_speech_prob=self.no_speech_prob,
            temperature=self.options.temperature,
            compression_ratio=compression_ratio(text),
            language_probs=language_probs,
        )


def detect_language(backend, tokenizer: WhisperTokenizer, cross, n_audio: int) -> tuple[list[str], list[dict[str, float]]]:
    """The most likely language of each audio whose cross K/V fill slots 0..n_audio-1 of `cross`: a softmax
    over the language tokens after <|startoftranscript|>."""
    from whisper_export.backends.step import StepRequest

    special = tokenizer.special
    if not tokenizer.is_multilingual:
        raise ValueError(f"detect_language: received an English-only model (n_vocab={tokenizer.n_vocab}), expected a multilingual one")
    cache = backend.new_cache(n_audio, 1)
    request = StepRequest(np.full((n_audio, 1), special.sot, dtype=np.int64), np.zeros(n_audio, np.int64))
    logits = backend.step(request, cache, cross).logits[:, 0]  # (n_audio, V)
    lang_ids = np.asarray(special.language_tokens)
    probs = np.exp(log_softmax(logits[:, lang_ids]))  # masking the rest to -inf == a softmax over these
    codes = special.language_codes
    return [codes[int(i)] for i in probs.argmax(-1)], [dict(zip(codes, map(float, p))) for p in probs]
