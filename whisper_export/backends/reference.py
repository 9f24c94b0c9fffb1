"""The torch backend: reference_model.model.Whisper in fp32 on CPU, behind the same contract as the graphs.

It is the ground truth the ONNX graphs are checked against and what `--backend torch` runs when no bundle
has been exported. torch is imported only when this backend is built, never by the runtime itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from whisper_export.backends.base import Backend
from whisper_export.backends.step import StepRequest


@dataclass
class _Cross:
    k: list[Any]  # torch tensors (slots, H, 1500, hd), one per layer
    v: list[Any]
    slots: int


@dataclass
class _Cache:
    k: list[Any]  # torch tensors (rows, H, capacity, hd), one per layer, updated in place
    v: list[Any]
    rows: int
    capacity: int


class TorchBackend(Backend):
    """checkpoint: a reference_model Checkpoint, or a spec for load_checkpoint (None = tiny.en, "base", a path)."""

    def __init__(self, checkpoint=None, threads: int | None = None):
        import torch

        from reference_model.checkpoint import Checkpoint
        from reference_model.model import Whisper
        from reference_model.sources import load_checkpoint

        self._torch = torch
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        if threads is not None:
            torch.set_num_threads(threads)
        self.dims = self.checkpoint.dims
        self.precision = "fp32"
        self.model = Whisper.from_state_dict(self.dims, self.checkpoint.state)

    def new_cross(self, slots: int) -> _Cross:
        self.check_new_cross(slots)
        d = self.dims
        shape = (slots, d.n_text_head, d.n_audio_ctx, d.text_head_dim)
        return _Cross([self._torch.zeros(shape) for _ in range(d.n_text_layer)],
                      [self._torch.zeros(shape) for _ in range(d.n_text_layer)], slots)

    def encode(self, mel: np.ndarray, into: _Cross | None = None, slots=None) -> _Cross:
        written = self.check_encode(mel, into, slots, _Cross)
        with self._torch.inference_mode():
            k, v = self.model.encode(self._torch.from_numpy(mel))
        if into is None:
            return _Cross(k, v, mel.shape[0])
        index = self._torch.as_tensor(written)
        for pool, new in zip(into.k + into.v, k + v):
            pool[index] = new
        return into

    def new_cache(self, rows: int, capacity: int) -> _Cache:
        self.check_new_cache(rows, capacity)
        k, v = self.model.empty_cache(rows, capacity)
        return _Cache(k, v, rows, capacity)

    def _decode(self, request: StepRequest, cache: _Cache, cross: _Cross) -> np.ndarray:
        self.check_handles(cache, cross, _Cache, _Cross)
        t = self._torch.from_numpy
        start, stop, g = request.start, request.stop, request.group
        index = request.cache_index()
        cache_index = t(index) if index is not None else self._torch.arange(request.rows)
        with self._torch.inference_mode():
            logits, k, v = self.model.decoder(
                t(request.tokens), t(request.offsets), cache_index, [c[start:stop] for c in cache.k],
                [c[start:stop] for c in cache.v], [c[start // g : stop // g] for c in cross.k],
                [c[start // g : stop // g] for c in cross.v], t(request.logit_positions()))
            for pool, new in zip(cache.k + cache.v, k + v):
                pool[start:stop] = new
        return logits.numpy()

    def align(self, cross: _Cross, audio_rows, tokens, lengths):
        """Backend.align on the PyTorch decoder (reference_model.alignment: hooks on its cross-attention)."""
        from reference_model.alignment import alignment_outputs
        from reference_model.alignment_heads import resolve_alignment_heads
        from whisper_export.backends.ort_align import check_align_request

        if not isinstance(cross, _Cross):
            raise TypeError(f"align: received cross {type(cross).__name__}, expected the handle encode() returns")
        check_align_request(self.dims, cross.slots, audio_rows, tokens, lengths)
        if getattr(self, "_align_setup", None) is None:  # the heads export would write, the tokenizer's eot
            self._align_setup = resolve_alignment_heads(self.checkpoint)[0], self.tokenizer().special.eot
        heads, eot = self._align_setup
        index = self._torch.from_numpy(audio_rows)
        qk, probs = alignment_outputs(self.model, self._torch.from_numpy(tokens), [k[index] for k in cross.k],
                                      [v[index] for v in cross.v], heads, eot)
        return qk.numpy(), probs.numpy()

    def tokenizer(self):
        return self.checkpoint.tokenizer()

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
