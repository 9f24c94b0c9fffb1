"""The small roles of the decoding loop, in numpy, shaped like openai-whisper's decoding.py.

LogitFilter.apply(logits, tokens)   masks logits in place before a token is chosen
TokenDecoder.update/finalize        chooses tokens (greedy/sampling, beam search) and collects candidates
SequenceRanker.rank                 picks one candidate per audio

Shapes: rows R = n_audio x n_group (audio-major), logits (R, n_vocab) float32, tokens (R, T) int64 holding the
whole sequence (prompt included), sum_logprobs (R,) float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from whisper_export.backends.picking import TimestampRules, chosen_logprobs, top_candidates
from whisper_export.tokenizer import SpecialTokens


# -- logit filters ------------------------------------------------------------------------------------


class LogitFilter:
    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        """logits (R, V) modified in place given tokens (R, T) so far."""
        raise NotImplementedError

    def later_bias(self, n_vocab: int) -> np.ndarray | None:
        """What apply() does on every step after the first sampled one, as an additive (V,) float32 bias of 0
        and -inf; None when that depends on the tokens (then the decoding loop needs the logits)."""
        return None


class SuppressTokens(LogitFilter):
    def __init__(self, token_ids: Sequence[int]):
        self.ids = np.asarray(sorted(set(token_ids)), dtype=np.int64)

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        logits[:, self.ids] = -np.inf

    def later_bias(self, n_vocab: int) -> np.ndarray:
        bias = np.zeros(n_vocab, np.float32)
        bias[self.ids] = -np.inf
        return bias


class SuppressBlank(LogitFilter):
    """A window's text never starts with a bare space or ends before it begins."""

    def __init__(self, blank_ids: Sequence[int], sample_begin: int):
        self.ids = list(blank_ids)
        self.sample_begin = sample_begin

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        if tokens.shape[1] == self.sample_begin:
            logits[:, self.ids] = -np.inf

    def later_bias(self, n_vocab: int) -> np.ndarray:
        return np.zeros(n_vocab, np.float32)  # it acts on the first sampled step only


class ApplyTimestampRules(LogitFilter):
    """Keep timestamp tokens well-formed: in pairs around text, never decreasing, the first one early.

    The rules after the first sampled token are backends.picking.TimestampRules, a per-row state a backend can
    apply on the device; this filter adds what only the first sampled step does (a timestamp first, and not a
    late one) and applies them all to host logits."""

    def __init__(self, special: SpecialTokens, sample_begin: int, max_initial_timestamp_index: int | None):
        self.special = special
        self.sample_begin = sample_begin
        self.max_initial_timestamp_index = max_initial_timestamp_index
        self.rules = TimestampRules(special.timestamp_begin, special.eot, special.no_timestamps)

    def state(self, tokens: np.ndarray) -> np.ndarray:
        """Each row's timestamp state (R, 3) from the tokens (R, T) so far (TimestampRules.state)."""
        return self.rules.state(tokens[:, self.sample_begin :])

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        ts_begin = self.special.timestamp_begin
        logits[:, self.special.no_timestamps] = -np.inf
        self.rules.apply_limits(logits, self.rules.limits_of(self.state(tokens)))
        if tokens.shape[1] == self.sample_begin:
            # the first sampled token is a timestamp, and not too late a one
            logits[:, :ts_begin] = -np.inf
            if self.max_initial_timestamp_index is not None:
                logits[:, ts_begin + self.max_initial_timestamp_index + 1 :] = -np.inf
        self.rules.prefer_timestamps(logits)


# -- token decoders -----------------------------------------------------------------------------------


class TokenDecoder:
    def reset(self) -> None:
        """Forget state from a previous run."""

    def update(self, tokens: np.ndarray, logits: np.ndarray, sum_logprobs: np.ndarray) -> tuple[np.ndarray, bool]:
        """Append one token per row, chosen from logits (R, V), or (1, V) shared by every row. Returns (tokens
        (R, T + 1), whether every audio is complete); sum_logprobs (R,) is updated in place."""
        raise NotImplementedError

    def finalize(self, tokens: np.ndarray, sum_logprobs: np.ndarray) -> tuple[list[list[list[int]]], list[list[float]]]:
        """tokens (n_audio, n_group, T), sum_logprobs (n_audio, n_group) -> candidates per audio, each a
        token list ending in eot, and their summed log probabilities."""
        raise NotImplementedError


class GreedyDecoder(TokenDecoder):
    """Argmax at temperature 0, otherwise a sample from softmax(logits / temperature) (one uniform draw per row)."""

    def __init__(self, temperature: float, eot: int, rng: np.random.Generator | None = None):
        self.temperature = temperature
        self.eot = eot
        self.rng = rng or np.random.default_rng()
        self._buffer: np.ndarray | None = None

    def _scratch(self, shape: tuple[int, ...]) -> np.ndarray:
        """One (R, V) float32 work array, reused every step (a batch of 16 is 3.3 MB)."""
        if self._buffer is None or self._buffer.shape != shape:
            self._buffer = np.empty(shape, np.float32)
        return self._buffer

    def update(self, tokens, logits, sum_logprobs):
        rows = tokens.shape[0]
        if self.temperature == 0:
            next_tokens = np.broadcast_to(logits.argmax(axis=-1), (rows,))
        else:
            next_tokens = self._sample(logits, rows)
        if len(logits) == rows:
            current = chosen_logprobs(logits, next_tokens, self._scratch(logits.shape))
        else:  # one row of logits for all: each row's choice is a column of it
            current = chosen_logprobs(logits, next_tokens[None, :], self._scratch(logits.shape))[0]
        return self.update_chosen(tokens, next_tokens, current, sum_logprobs)

    def _sample(self, logits: np.ndarray, rows: int) -> np.ndarray:
        """One token per row from softmax(logits / T) (logits (rows or 1, V)) by inverse transform: a uniform per
        row against the running sum of the probabilities, in float64 so that the vocabulary's long tail keeps its
        weight. One exp and one sum per row of logits, where Gumbel noise over every logit costs two logarithms and
        a random draw per logit (twice the time at 5 x 51,864)."""
        x = logits.astype(np.float64) / self.temperature
        top = x.max(axis=-1, keepdims=True)
        x -= np.where(np.isfinite(top), top, 0.0)  # a row of -inf only (never left by the filters) stays finite
        np.exp(x, out=x)
        np.cumsum(x, axis=-1, out=x)  # (L, V): cumulative unnormalised probabilities
        own = np.minimum(np.arange(rows), len(x) - 1)  # each row's logits: its own, or the one shared row
        totals = x[own, -1]
        # below the total even where u * total rounds up to it: the first id whose running sum exceeds the target
        # then always has some probability
        targets = np.minimum(self.rng.random(rows) * totals, np.nextafter(totals, 0))
        chosen = np.asarray([np.searchsorted(x[r], t, side="right") for r, t in zip(own, targets)], np.int64)
        return np.where(chosen < x.shape[1], chosen, 0)  # a row of -inf only: id 0, as an argmax of it

    def update_chosen(self, tokens, next_tokens, current, sum_logprobs):
        """update() once the tokens (R,) and their log-probabilities (R,) are chosen (a step that picks "best")."""
        finished = tokens[:, -1] == self.eot
        sum_logprobs += np.where(finished, 0.0, current)  # a finished row's padding costs nothing
        next_tokens = np.where(finished, self.eot, next_tokens).astype(np.int64)
        tokens = np.concatenate([tokens, next_tokens[:, None]], axis=1)
        return tokens, bool((tokens[:, -1] == self.eot).all())

    def finalize(self, tokens, sum_logprobs):
        # every candidate ends with eot, even when sample_len ran out first
        padded = np.concatenate([tokens, np.full(tokens.shape[:2] + (1,), self.eot, tokens.dtype)], axis=-1)
        return [[list(map(int, seq)) for seq in group] for group in padded], sum_logprobs.tolist()


class BeamSearchDecoder(TokenDecoder):
    """openai-whisper's beam search: beam_size live beams per audio; stops once every audio has
    round(beam_size * patience) finished sequences. Beams never cross audios, so the rows of an audio
    stay together and the cache reorder (source_indices, which the next step's request carries) stays within
    its block."""

    def __init__(self, beam_size: int, eot: int, patience: float | None = None):
        self.beam_size = beam_size
        self.eot = eot
        self.source_indices: list[int] | None = None  # after update: the row each new row continues
        self.patience = patience or 1.0
        self.max_candidates = round(beam_size * self.patience)
        if self.max_candidates <= 0:
            raise ValueError(f"patience: received {patience} with beam_size {beam_size}, expected beam_size * patience >= 0.5")
        self.finished_sequences: list[dict[tuple[int, ...], float]] | None = None

    def reset(self) -> None:
        self.finished_sequences = None

    def update(self, tokens, logits, sum_logprobs):
        # the k best of each row of logits are its k best log-probabilities (log_softmax shifts a row by one
        # constant); only their log-probabilities are computed
        top, top_logprobs = top_candidates(logits, self.candidates)
        if len(top) != len(tokens):  # one row of logits for all
            top, top_logprobs = np.repeat(top, len(tokens), axis=0), np.repeat(top_logprobs, len(tokens), axis=0)
        return self.update_top(tokens, top, top_logprobs, sum_logprobs)

    @property
    def candidates(self) -> int:
        """Candidates per beam and step: one more than needed, as at most one of them is eot."""
        return self.beam_size + 1

    def update_top(self, tokens, top, top_logprobs, sum_logprobs):
        """update() once each row's `candidates` best tokens (R, k) and their log-probabilities (R, k) are
        known (a step that picks "top"), best first."""
        rows = tokens.shape[0]
        if rows % self.beam_size:
            raise ValueError(f"beam search: received {rows} rows, expected a multiple of beam_size {self.beam_size}")
        n_audio = rows // self.beam_size
        if self.finished_sequences is None:
            self.finished_sequences = [{} for _ in range(n_audio)]
        source_indices: list[int] = []
        chosen: list[int] = []
        new_sums: list[float] = []
        top_rows, logprob_rows, sums = top.tolist(), top_logprobs.tolist(), sum_logprobs.tolist()
        for i in range(n_audio):
            base = i * self.beam_size
            block = tokens[base : base + self.beam_size]  # (beam, T)
            prefix_of = (block[:, None] == block[None]).all(axis=-1).argmax(axis=1).tolist()  # first equal beam
            # a candidate is the sequence prefix + token, keyed here by (its prefix's first beam, token): beams with
            # one prefix (a window's rows right after its prompt) make one sequence, as a dict of whole sequences would
            scores: dict[tuple[int, int], float] = {}
            sources: dict[tuple[int, int], int] = {}
            for j in range(self.beam_size):
                row = base + j
                for token, logprob in zip(top_rows[row], logprob_rows[row]):
                    scores[prefix_of[j], token] = sums[row] + logprob
                    sources[prefix_of[j], token] = row
            # keep the best beam_size unfinished candidates; finished ones go to the candidate list
            finished: dict[tuple[int, ...], float] = {}
            saved = 0
            for key in sorted(scores, key=scores.__getitem__, reverse=True):
                if key[1] == self.eot:
                    finished[tuple(tokens[sources[key]].tolist()) + (self.eot,)] = scores[key]
                else:
                    new_sums.append(scores[key])
                    source_indices.append(sources[key])
                    chosen.append(key[1])
                    saved += 1
                    if saved == self.beam_size:
                        break
            done = self.finished_sequences[i]
            for sequence in sorted(finished, key=finished.__getitem__, reverse=True):
                if len(done) >= self.max_candidates:
                    break  # this audio's candidate list is full; later finishers are ignored
                done[sequence] = finished[sequence]
        sum_logprobs[:] = new_sums
        self.source_indices = source_indices
        completed = all(len(done) >= self.max_candidates for done in self.finished_sequences)
        next_tokens = np.concatenate([tokens[source_indices], np.asarray(chosen, np.int64)[:, None]], axis=1)
        return next_tokens, completed

    def finalize(self, tokens, sum_logprobs):
        assert self.finished_sequences is not None, "finalize() before update()"
        for i, done in enumerate(self.finished_sequences):
            if len(done) < self.beam_size:  # sample_len ran out: add the best unfinished beams
                for j in np.argsort(sum_logprobs[i])[::-1]:
                    done[tuple(tokens[i, j].tolist()) + (self.eot,)] = float(sum_logprobs[i, j])
                    if len(done) >= self.beam_size:
                        break
        return (
            [[list(seq) for seq in done] for done in self.finished_sequences],
            [list(done.values()) for done in self.finished_sequences],
        )


# -- ranking ------------------------------------------------------------------------------------------


class SequenceRanker:
    def rank(self, tokens: list[list[list[int]]], sum_logprobs: list[list[float]]) -> list[int]:
        """Index of the chosen candidate for each audio; tokens are the sampled ones, without eot."""
        raise NotImplementedError


class MaximumLikelihoodRanker(SequenceRanker):
    """Highest length-normalised log probability: divided by the length (length_penalty None), or by
    Google NMT's ((5 + length) / 6) ** alpha."""

    def __init__(self, length_penalty: float | None):
        self.length_penalty = length_penalty

    def rank(self, tokens, sum_logprobs):
        def score(logprob: float, length: int) -> float:
            # max(.., 1): an empty candidate (possible without suppress_blank) must not divide by zero
            penalty = max(length, 1) if self.length_penalty is None else ((5 + length) / 6) ** self.length_penalty
            return logprob / penalty

        return [
            int(np.argmax([score(lp, len(seq)) for seq, lp in zip(seqs, lps)]))
            for seqs, lps in zip(tokens, sum_logprobs)
        ]
