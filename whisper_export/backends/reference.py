"""The torch backend: reference_model.model.Whisper in fp32 on CPU, behind the same contract as the graphs.

It is the ground truth the ONNX graphs are checked against and what `--backend torch` runs when no bundle
has been exported. torch is imported only when this backend is built, never by the runtime itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from whisper_export.backends.base import Backend


@dataclass
class _Cross:
    k: list[Any]  # torch tensors (n_audio, H, 1500, hd), one per layer
    v: list[Any]
    n_audio: int


@dataclass
class _Cache:
    k: list[Any]  # torch tensors (rows, H, capacity, hd), one per layer
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

    def encode(self, mel: np.ndarray) -> _Cross:
        self.check_mel(mel)
        with self._torch.inference_mode():
            k, v = self.model.encode(self._torch.from_numpy(mel))
        return _Cross(k, v, mel.shape[0])

    def new_cache(self, rows: int, capacity: int) -> _Cache:
        self.check_new_cache(rows, capacity)
        k, v = self.model.empty_cache(rows, capacity)
        return _Cache(k, v, rows, capacity)

    def decode(self, tokens, offsets, cache_index, logit_positions, cache: _Cache, cross: _Cross):
        self.check_handles(cache, cross, _Cache, _Cross)
        self.check_step(tokens, offsets, cache_index, logit_positions, cache.rows, cache.capacity, cross.n_audio)
        t = self._torch.from_numpy
        with self._torch.inference_mode():
            logits, k, v = self.model.decoder(
                t(tokens), t(offsets), t(cache_index), cache.k, cache.v, cross.k, cross.v, t(logit_positions)
            )
        return logits.numpy(), _Cache(k, v, cache.rows, cache.capacity)

    def tokenizer(self):
        return self.checkpoint.tokenizer()

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
