"""The contract every decoding backend implements (onnxruntime on CPU and CUDA, torch, TensorRT).

A backend owns the tensors: cross-attention K/V and self-attention caches are opaque handles that may live on
a GPU. It has
    encode(mel, into=None, slots=None)  the encoder: cross K/V for each window, in a new handle or written into
                                        given slots of an existing one (a pool)
    new_cross(slots) / new_cache(rows, capacity)
                                        empty handles: a pool of cross K/V slots, a pool of cache rows
    step(request, cache, cross)         one decoder call on a range of cache rows, updating them in place, and
                                        returning what the request picks (backends/step.py)
    close()
The decoding loop never looks inside a handle, so a new backend slots in by implementing encode, new_cross,
new_cache and _decode (the raw decoder call returning logits): step's default picks from those logits in numpy
(backends/picking.py). A GPU backend overrides step to pick on the device.

Shapes:
    mel      (n_audio, n_mels, 3000)                   float32
    cross    per layer (slots, n_head, 1500, head_dim)  the model's dtype
    cache    per layer (rows, n_head, capacity, head_dim)
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np

from whisper_export.backends.picking import Pick, pick_from_logits
from whisper_export.backends.step import StepRequest, StepResult, check_request
from whisper_export.dims import ModelDims
from whisper_export.graph_io import N_FRAMES

CrossKV = Any  # backend-owned encoder outputs (per-layer cross-attention K/V) in `slots` audio slots
SelfCache = Any  # backend-owned self-attention caches: `rows` rows of `capacity` positions per layer


class BackendError(RuntimeError):
    """A backend that cannot be created or run (missing provider, bad device, ...)."""


class Backend(abc.ABC):
    """Runs the Whisper encoder and decoder steps; see the module docstring and backends/step.py."""

    dims: ModelDims
    precision: str  # "fp32" | "fp16": the dtype of caches and cross K/V
    max_rows: int | None = None  # the most cache rows one step may cover (an engine's profile), None: no limit

    # -- the contract ----------------------------------------------------------------------------------

    @abc.abstractmethod
    def encode(self, mel: np.ndarray, into: CrossKV | None = None, slots: Sequence[int] | None = None) -> CrossKV:
        """mel (n, n_mels, 3000) float32 -> the cross K/V of the n windows: a new handle of n slots, or written
        into slots[i] of `into` (then `into` is returned)."""

    @abc.abstractmethod
    def new_cross(self, slots: int) -> CrossKV:
        """A cross K/V handle of `slots` audio slots for encode(into=...) to fill."""

    @abc.abstractmethod
    def new_cache(self, rows: int, capacity: int) -> SelfCache:
        """Self-attention caches for `rows` decoder rows of `capacity` positions (positions a row has not
        written are hidden from it by the decoder's mask, so they need no clearing)."""

    @abc.abstractmethod
    def _decode(self, request: StepRequest, cache: SelfCache, cross: CrossKV) -> np.ndarray:
        """The decoder on rows [request.start, request.stop) after reordering them by request.sources, updating
        the cache in place: logits (R, P, V) float32 at request.logit_positions()."""

    def step(self, request: StepRequest, cache: SelfCache, cross: CrossKV) -> StepResult:
        """One decoder call and what request.pick asks of it (backends/step.py). This default returns the logits
        or picks from them in numpy; streamed greedy steps (pick.steps > 1) run one call per step here."""
        self.check_request(request, cache, cross)
        pick = request.pick
        if pick.kind == "logits":
            return StepResult(logits=self._decode(request, cache, cross))
        if pick.steps == 1:
            logits = self._decode(request, cache, cross)[:, 0]
            return StepResult(None, *pick_from_logits(pick, logits, request.state))
        return self._greedy_steps(request, cache, cross)

    def _greedy_steps(self, request: StepRequest, cache: SelfCache, cross: CrossKV) -> StepResult:
        """pick.steps greedy steps one call at a time, each fed the previous choice (and, under the timestamp
        rules, the state it moves on to), until every live row has chosen pick.stop_token."""
        pick, state = request.pick, request.state
        one = Pick("best", bias=pick.bias, rules=pick.rules)
        stopped = ~request.live_rows()
        tokens, offsets = request.tokens, request.offsets
        chosen, logprobs = [], []
        for j in range(pick.steps):
            one_step = StepRequest(tokens, offsets + j, request.start, request.group, None, one, state=state)
            best, logprob = pick_from_logits(one, self._decode(one_step, cache, cross)[:, 0], state)
            chosen.append(best[:, 0])
            logprobs.append(logprob[:, 0])
            tokens = best
            if pick.rules is not None:
                state = pick.rules.next_state(state, best[:, 0])
            if pick.stop_token is not None:
                stopped |= best[:, 0] == pick.stop_token
                if stopped.all():
                    break
        return StepResult(None, np.stack(chosen, axis=1), np.stack(logprobs, axis=1).astype(np.float32))

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

    def align_matrices(self, cross: CrossKV, audio_rows: np.ndarray, tokens: np.ndarray, lengths: np.ndarray,
                       frames: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """align() followed by openai-whisper's alignment matrix of each row, computed where the scores lie
        (graph_io's alignment_matrix.onnx), or None where this backend has no cheaper way than the host's
        (runtime/words.alignment_matrix over align()'s scores, which the caller then uses).

        frames (A,) int64: each row's audio positions (its window's mel frames // 2). Returns (the matrices
        (A, T, n_audio_ctx) float32: softmax over the row's frames, normalised over its tokens, median-filtered
        along time, the heads' mean; NaN where openai's is; unspecified at or past a row's length or frames,
        align()'s probabilities)."""
        return None

    def close(self) -> None:
        """Release sessions and device memory; the backend is unusable afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- validation shared by implementations: messages name the tensor, received and expected ----------

    def check_request(self, request: StepRequest, cache: Any, cross: Any) -> None:
        check_request(request, self.dims.n_vocab, cache.rows, cache.capacity, cross.slots)

    def check_new_cache(self, rows: int, capacity: int) -> None:
        if not isinstance(rows, int) or rows < 1 or not 1 <= capacity <= self.dims.n_text_ctx:
            raise ValueError(
                f"new_cache: received rows={rows}, capacity={capacity}, expected rows >= 1 and "
                f"1 <= capacity <= n_text_ctx={self.dims.n_text_ctx}"
            )

    @staticmethod
    def check_new_cross(slots: int) -> None:
        if not isinstance(slots, int) or slots < 1:
            raise ValueError(f"new_cross: received slots={slots!r}, expected an int >= 1")

    @staticmethod
    def check_handles(cache: Any, cross: Any, cache_type: type, cross_type: type) -> None:
        """step() takes only the handles this backend's own new_cache()/new_cross()/encode() returned."""
        if not isinstance(cache, cache_type) or not isinstance(cross, cross_type):
            raise TypeError(
                f"step: received cache {type(cache).__name__} and cross {type(cross).__name__}, expected the "
                "handles this backend's new_cache() and encode() return"
            )

    def check_encode(self, mel: np.ndarray, into: Any, slots: Sequence[int] | None, cross_type: type) -> list[int]:
        """The checks of encode(); returns the slots written (0..n-1 of a new handle when into is None)."""
        expected = f"(n_audio, {self.dims.n_mels}, {N_FRAMES}) float32"
        if not isinstance(mel, np.ndarray):
            raise TypeError(f"in_mel: received {type(mel).__name__}, expected a numpy array {expected}")
        if mel.dtype != np.float32:
            raise ValueError(f"in_mel: received dtype {mel.dtype}, expected float32")
        if mel.ndim != 3 or mel.shape[1:] != (self.dims.n_mels, N_FRAMES) or mel.shape[0] < 1:
            raise ValueError(f"in_mel: received shape {mel.shape}, expected {expected}")
        if into is None:
            if slots is not None:
                raise ValueError("encode: received slots without a cross handle to write them into")
            return list(range(mel.shape[0]))
        if not isinstance(into, cross_type):
            raise TypeError(f"encode: received into={type(into).__name__}, expected a handle of this backend's")
        slots = [int(s) for s in (slots if slots is not None else range(mel.shape[0]))]
        if len(slots) != mel.shape[0] or len(set(slots)) != len(slots) or min(slots) < 0 or max(slots) >= into.slots:
            raise ValueError(f"encode slots: received {slots} for {mel.shape[0]} windows, expected as many distinct "
                             f"slots in 0..{into.slots - 1}")
        return slots
