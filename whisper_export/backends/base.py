"""The contract every decoding backend implements (onnxruntime, torch, and TensorRT in engines/ later).

A backend owns the tensors: cross-attention K/V and self-attention caches are opaque handles that may
live on a GPU; only logits come back to the host as numpy. The decoding loop (decoding.py) never looks
inside them, so a new backend slots in by implementing these five members.

Shapes (see whisper_export/graph_io.py for the graph contract they mirror):
    mel            (n_audio, n_mels, 3000)  float32
    tokens         (rows, n_new)            int64   rows = n_audio x beams, audio-major
    offsets        (rows,)                  int64   cache position of each row's first new token
    cache_index    (rows,)                  int64   which cache row each row continues (beam reorder); the
                                                    backend reorders its caches before the step when this is
                                                    not the identity (the decoder graph does not gather them)
    logit_positions (P,)                    int64   which of the n_new positions get logits
    logits         (rows, P, n_vocab)       float32
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from whisper_export.backends.picking import chosen_logprobs, top_candidates
from whisper_export.dims import ModelDims
from whisper_export.graph_io import N_FRAMES

CrossKV = Any  # backend-owned encoder output (per-layer cross-attention K/V), n_audio rows
SelfCache = Any  # backend-owned self-attention caches, (rows, n_head, capacity, head_dim) per layer


class BackendError(RuntimeError):
    """A backend that cannot be created or run (missing provider, bad device, ...)."""


class Backend(abc.ABC):
    """Runs the Whisper encoder and one decoder step; see the module docstring for shapes."""

    dims: ModelDims
    precision: str  # "fp32" | "fp16": the dtype of caches and cross K/V

    @abc.abstractmethod
    def encode(self, mel: np.ndarray) -> CrossKV:
        """mel (n_audio, n_mels, 3000) float32 -> cross K/V handle with n_audio rows."""

    @abc.abstractmethod
    def new_cache(self, rows: int, capacity: int) -> SelfCache:
        """Zeroed self-attention caches for `rows` decoder rows of `capacity` positions."""

    @abc.abstractmethod
    def decode(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        cache_index: np.ndarray,
        logit_positions: np.ndarray,
        cache: SelfCache,
        cross: CrossKV,
    ) -> tuple[np.ndarray, SelfCache]:
        """One decoder step. Returns (logits (rows, P, n_vocab) float32, the updated cache).

        The input cache is consumed: callers must use only the returned one afterwards (backends may
        recycle the old buffers).
        """

    def decode_best(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        cache_index: np.ndarray,
        logit_bias: np.ndarray,
        cache: SelfCache,
        cross: CrossKV,
    ) -> tuple[np.ndarray, np.ndarray, SelfCache]:
        """A one-token step (tokens (rows, 1)) that returns, per row, argmax(logits + logit_bias) and its
        log-probability under log_softmax(logits + logit_bias), and the updated cache, instead of the logits.

        logit_bias (n_vocab,) float32 holds 0 or -inf (the logit filters that do not depend on the tokens):
        greedy decoding without timestamps needs nothing else from a step. This default decodes and selects
        in numpy (bit for bit what sampling.GreedyDecoder computes); a GPU backend selects on the device and
        copies 12 bytes per row to the host instead of 4 x n_vocab.
        """
        biased, cache = self._biased_step(tokens, offsets, cache_index, logit_bias, cache, cross)
        return (*self._best_of(biased), cache)

    def _biased_step(self, tokens, offsets, cache_index, logit_bias, cache, cross) -> tuple[np.ndarray, SelfCache]:
        """The numpy defaults' common start: a one-token step's logits + logit_bias (R, V), and the cache."""
        self.check_logit_bias(logit_bias)
        logits, cache = self.decode(tokens, offsets, cache_index, np.zeros(1, np.int64), cache, cross)
        return logits[:, 0] + logit_bias, cache

    @staticmethod
    def _best_of(filtered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(argmax, its log-probability) of each row of filtered logits (R, V), as sampling.GreedyDecoder."""
        best = filtered.argmax(axis=-1)
        return best, chosen_logprobs(filtered, best)

    def decode_top(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        cache_index: np.ndarray,
        logit_bias: np.ndarray,
        k: int,
        cache: SelfCache,
        cross: CrossKV,
    ) -> tuple[np.ndarray, np.ndarray, SelfCache]:
        """A one-token step that returns, per row, the k best tokens of logits + logit_bias (R, k) int64, best
        first and the lowest id first on ties, their log-probabilities under log_softmax(logits + logit_bias)
        (R, k) float32, and the updated cache: a beam search's candidates (BeamSearchDecoder.update_top). This
        default selects in numpy (sampling.top_candidates); a GPU backend selects on the device."""
        biased, cache = self._biased_step(tokens, offsets, cache_index, logit_bias, cache, cross)
        return (*top_candidates(biased, k), cache)

    def decode_best_limited(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        cache_index: np.ndarray,
        logit_bias: np.ndarray,
        state: np.ndarray,
        rules: Any,
        cache: SelfCache,
        cross: CrossKV,
    ) -> tuple[np.ndarray, np.ndarray, SelfCache]:
        """decode_best with openai's timestamp rules after the first sampled step: logits + logit_bias, then
        rules.apply_limits(rules.limits_of(state)) for each row's timestamp state (R, 3)
        (sampling.ApplyTimestampRules.state) and rules.prefer_timestamps, then the argmax and its
        log-probability, bit for bit what the logit filters and GreedyDecoder compute on host logits. This
        default does exactly that in numpy; a GPU backend applies the rules on the device
        (timestamp_rules.onnx)."""
        filtered, cache = self._ruled_step(tokens, offsets, cache_index, logit_bias, state, rules, cache, cross)
        return (*self._best_of(filtered), cache)

    def _ruled_step(self, tokens, offsets, cache_index, logit_bias, state, rules, cache, cross):
        """The timestamp defaults' common start: a one-token step's logits + logit_bias under the timestamp rules
        of each row's state (R, 3): rules.apply_limits(limits_of(state)), then rules.prefer_timestamps."""
        self.check_timestamp_state(state, tokens.shape[0])
        biased, cache = self._biased_step(tokens, offsets, cache_index, logit_bias, cache, cross)
        rules.apply_limits(biased, rules.limits_of(state))
        rules.prefer_timestamps(biased)
        return biased, cache

    def decode_top_limited(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        cache_index: np.ndarray,
        logit_bias: np.ndarray,
        state: np.ndarray,
        rules: Any,
        k: int,
        cache: SelfCache,
        cross: CrossKV,
    ) -> tuple[np.ndarray, np.ndarray, SelfCache]:
        """decode_top under the timestamp rules of each row's state (R, 3), filtered as decode_best_limited
        filters: a beam search's candidates with timestamps. This default does it in numpy on the logits (bit for
        bit the logit filters and BeamSearchDecoder on host logits); a GPU backend on the device
        (timestamp_top.onnx)."""
        filtered, cache = self._ruled_step(tokens, offsets, cache_index, logit_bias, state, rules, cache, cross)
        return (*top_candidates(filtered, k), cache)

    def decode_greedy(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        logit_bias: np.ndarray,
        cache: SelfCache,
        cross: CrossKV,
        steps: int,
        stop_token: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, SelfCache]:
        """Up to `steps` greedy one-token steps, each fed the previous one's choice: step 0 takes tokens (rows, 1)
        at offsets, step j the token step j - 1 chose at offsets + j. Returns the chosen tokens (rows, k) int64,
        their log-probabilities (rows, k) float32 (as decode_best) and the updated cache, which holds all k.

        k = steps unless every row has chosen stop_token; then k is at least the step where the last row chose
        it (a backend that queues steps ahead finishes those too). The caller drops what follows a row's stop
        token. This default is decode_best step by step, stopping at once; a GPU backend streams the steps on
        the device and reads their choices without synchronising (ort_greedy.py)."""
        identity = np.arange(tokens.shape[0], dtype=np.int64)

        def step(j: int, tokens: np.ndarray, cache: SelfCache):
            return self.decode_best(tokens, offsets + j, identity, logit_bias, cache, cross)

        return self._step_by_step(step, tokens, cache, steps, stop_token)

    def decode_greedy_limited(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        logit_bias: np.ndarray,
        state: np.ndarray,
        rules: Any,
        cache: SelfCache,
        cross: CrossKV,
        steps: int,
        stop_token: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, SelfCache]:
        """decode_greedy under the timestamp rules: each step is decode_best_limited from the timestamp state
        (R, 3) of the rows so far, which the step's choice moves on (rules.next_state); the rows must have
        sampled a token already. Same returns and stop rule as decode_greedy. This default runs
        decode_best_limited step by step; a GPU backend streams the steps, the state moving on on the device."""
        identity = np.arange(tokens.shape[0], dtype=np.int64)
        states = [state]  # step j's

        def step(j: int, tokens: np.ndarray, cache: SelfCache):
            best, logprob, cache = self.decode_best_limited(tokens, offsets + j, identity, logit_bias, states[j],
                                                            rules, cache, cross)
            states.append(rules.next_state(states[j], best))
            return best, logprob, cache

        return self._step_by_step(step, tokens, cache, steps, stop_token)

    def _step_by_step(self, step, tokens: np.ndarray, cache: SelfCache, steps: int,
                      stop_token: int | None) -> tuple[np.ndarray, np.ndarray, SelfCache]:
        """The greedy defaults' loop: step(j, tokens (rows, 1), cache) -> (best, log-probability, cache), each
        step fed the previous one's choice, until `steps` or every row has chosen stop_token."""
        self.check_greedy(tokens, steps)
        stopped = np.zeros(tokens.shape[0], dtype=bool)
        chosen, logprobs = [], []
        for j in range(steps):
            best, logprob, cache = step(j, tokens, cache)
            chosen.append(best)
            logprobs.append(logprob)
            tokens = best.astype(np.int64)[:, None]
            if stop_token is not None:
                stopped |= best == stop_token
                if stopped.all():
                    break
        return np.stack(chosen, axis=1).astype(np.int64), np.stack(logprobs, axis=1).astype(np.float32), cache

    def align(self, cross: CrossKV, audio_rows: np.ndarray, tokens: np.ndarray,
              lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Word timestamps' decoder run over finished windows (graph_io's align.onnx).

        cross: the windows' encoder output as encode() returned it (still alive); audio_rows (A,) int64: which of
        its rows each alignment row attends to; tokens (A, T) int64: each row's sot sequence, <|notimestamps|>,
        text tokens and eot, padded at the end to the longest; lengths (A,) int64: each row's real token count.
        Returns (the alignment heads' raw cross-attention scores q.k / sqrt(hd) (A, n_heads, T, n_audio_ctx)
        float32, the probability of each next text token (A, T - 1) float32: softmax over the text vocabulary
        (ids < eot) of position t at token t + 1, 0 where that token is not text). Positions at or past a row's
        length are unspecified."""
        raise BackendError(f"{type(self).__name__}: received a request for word timestamps, expected a backend that "
                           "implements align() (onnxruntime or torch)")

    def close(self) -> None:
        """Release sessions and device memory; the backend is unusable afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def reorders(cache_index: np.ndarray) -> bool:
        """Whether a step's rows continue other rows' caches (a beam reorder) rather than their own."""
        return not np.array_equal(cache_index, np.arange(cache_index.shape[0]))

    # -- validation shared by implementations: messages name the tensor, received and expected ----

    def check_new_cache(self, rows: int, capacity: int) -> None:
        if rows < 1 or not 1 <= capacity <= self.dims.n_text_ctx:
            raise ValueError(
                f"new_cache: received rows={rows}, capacity={capacity}, expected rows >= 1 and "
                f"1 <= capacity <= n_text_ctx={self.dims.n_text_ctx}"
            )

    @staticmethod
    def check_handles(cache: Any, cross: Any, cache_type: type, cross_type: type) -> None:
        """decode() takes only the handles this backend's own new_cache() and encode() returned."""
        if not isinstance(cache, cache_type) or not isinstance(cross, cross_type):
            raise TypeError(
                f"decode: received cache {type(cache).__name__} and cross {type(cross).__name__}, expected the "
                "handles this backend's new_cache() and encode() return"
            )

    def check_logit_bias(self, logit_bias: np.ndarray) -> None:
        if not isinstance(logit_bias, np.ndarray) or logit_bias.shape != (self.dims.n_vocab,):
            raise ValueError(f"logit_bias: received {getattr(logit_bias, 'shape', type(logit_bias).__name__)}, "
                             f"expected a ({self.dims.n_vocab},) float32 array")

    @staticmethod
    def check_timestamp_state(state: np.ndarray, rows: int) -> None:
        if state.shape != (rows, 3) or state.dtype != np.int64:
            raise ValueError(f"timestamp state: received {state.dtype} {state.shape}, expected int64 ({rows}, 3)")

    @staticmethod
    def check_greedy(tokens: np.ndarray, steps: int) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: received {steps!r}, expected an int >= 1")
        if getattr(tokens, "ndim", 0) != 2 or tokens.shape[1] != 1:
            raise ValueError(f"in_tokens: received shape {getattr(tokens, 'shape', None)}, expected (rows, 1): greedy "
                             "steps take one token per row")

    def check_mel(self, mel: np.ndarray) -> None:
        expected = f"(n_audio, {self.dims.n_mels}, {N_FRAMES}) float32"
        if not isinstance(mel, np.ndarray):
            raise TypeError(f"in_mel: received {type(mel).__name__}, expected a numpy array {expected}")
        if mel.dtype != np.float32:
            raise ValueError(f"in_mel: received dtype {mel.dtype}, expected float32")
        if mel.ndim != 3 or mel.shape[1:] != (self.dims.n_mels, N_FRAMES) or mel.shape[0] < 1:
            raise ValueError(f"in_mel: received shape {mel.shape}, expected {expected}")

    def check_step(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        cache_index: np.ndarray,
        logit_positions: np.ndarray,
        rows: int,
        capacity: int,
        n_audio: int,
    ) -> None:
        """rows/capacity come from the cache, n_audio from the cross K/V."""
        for name, value, ndim in (
            ("in_tokens", tokens, 2),
            ("in_offsets", offsets, 1),
            ("in_cache_index", cache_index, 1),
            ("in_logit_positions", logit_positions, 1),
        ):
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{name}: received {type(value).__name__}, expected a numpy int64 array")
            if value.dtype != np.int64:
                raise ValueError(f"{name}: received dtype {value.dtype}, expected int64")
            if value.ndim != ndim:
                raise ValueError(f"{name}: received shape {value.shape}, expected {ndim} dimension(s)")
        n_new = tokens.shape[1]
        if tokens.shape[0] != rows or n_new < 1:
            raise ValueError(f"in_tokens: received shape {tokens.shape}, expected ({rows}, n_new >= 1) (cache rows)")
        if rows % n_audio:
            raise ValueError(
                f"in_tokens: received {rows} rows for {n_audio} audios, expected a multiple of n_audio "
                "(rows = n_audio x beams, audio-major)"
            )
        for name, value in (("in_offsets", offsets), ("in_cache_index", cache_index)):
            if value.shape != (rows,):
                raise ValueError(f"{name}: received shape {value.shape}, expected ({rows},)")
        if tokens.min() < 0 or tokens.max() >= self.dims.n_vocab:
            raise ValueError(f"in_tokens: received ids {tokens.min()}..{tokens.max()}, expected 0..{self.dims.n_vocab - 1}")
        if offsets.min() < 0 or offsets.max() + n_new > capacity:
            raise ValueError(
                f"in_offsets: received {offsets.min()}..{offsets.max()} with {n_new} new tokens, "
                f"expected offset + n_new <= cache capacity {capacity}"
            )
        if cache_index.min() < 0 or cache_index.max() >= rows:
            raise ValueError(f"in_cache_index: received {cache_index.min()}..{cache_index.max()}, expected 0..{rows - 1}")
        # beams never move between audios: cross K/V row r // beams must stay the same
        beams = rows // n_audio
        if np.any(cache_index // beams != np.arange(rows) // beams):
            raise ValueError(
                f"in_cache_index: received {cache_index.tolist()}, expected each row to continue a row "
                f"of the same audio ({beams} rows per audio)"
            )
        if logit_positions.size < 1 or logit_positions.min() < 0 or logit_positions.max() >= n_new:
            raise ValueError(
                f"in_logit_positions: received {logit_positions.tolist()}, expected 1+ positions in 0..{n_new - 1}"
            )
