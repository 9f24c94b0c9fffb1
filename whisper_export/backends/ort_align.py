"""align.onnx on onnxruntime (Backend.align): the session, and runs on the cross K/V as the backend holds them,
numpy arrays (CPU) or OrtValues in device buffers (CUDA, bound where they lie: nothing copied through the host).
The shapes and the request check are Backend.align's (backends/base.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from whisper_export import graph_io
from whisper_export.bundle import Bundle
from whisper_export.dims import ModelDims


def check_align_request(dims: ModelDims, n_audio: int, audio_rows: np.ndarray, tokens: np.ndarray,
                        lengths: np.ndarray) -> None:
    """ValueError naming the input, what was received and what was expected, for Backend.align's arguments."""
    for name, value, ndim in (("tokens", tokens, 2), ("audio_rows", audio_rows, 1), ("lengths", lengths, 1)):
        if not isinstance(value, np.ndarray) or value.dtype != np.int64 or value.ndim != ndim:
            received = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
            raise ValueError(f"align {name}: received {received}, expected a {ndim}-D int64 numpy array")
    rows, n_tokens = tokens.shape
    if rows < 1 or not 2 <= n_tokens <= dims.n_text_ctx:
        raise ValueError(f"align tokens: received shape {tokens.shape}, expected (rows >= 1, 2..{dims.n_text_ctx})")
    if tokens.min() < 0 or tokens.max() >= dims.n_vocab:
        raise ValueError(f"align tokens: received ids {tokens.min()}..{tokens.max()}, expected 0..{dims.n_vocab - 1}")
    if audio_rows.shape != (rows,) or audio_rows.min() < 0 or audio_rows.max() >= n_audio:
        raise ValueError(f"align audio_rows: received {audio_rows.tolist()}, expected {rows} rows in 0..{n_audio - 1} "
                         "(rows of the cross K/V)")
    if lengths.shape != (rows,) or lengths.min() < 2 or lengths.max() > n_tokens:
        raise ValueError(f"align lengths: received {lengths.tolist()}, expected {rows} lengths in 2..{n_tokens}")


class AlignRunner:
    """align.onnx's session (opened by the backend's own session factory: same device, threads and stream)."""

    def __init__(self, bundle: Bundle, open_session: Callable[[Path, list[str], list[str]], Any]):
        self.dims = bundle.dims
        self.n_heads = len(bundle.alignment_heads)
        self._inputs = graph_io.align_inputs(self.dims.n_text_layer)
        self.session = open_session(bundle.require_align(), self._inputs, graph_io.align_outputs())

    def run(self, cross_values: list[Any], n_audio: int, audio_rows: np.ndarray, tokens: np.ndarray,
            lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """cross_values in graph_io.cross_inputs order: numpy arrays, or OrtValues bound in place."""
        check_align_request(self.dims, n_audio, audio_rows, tokens, lengths)
        tokens = np.ascontiguousarray(tokens)
        audio_rows = np.ascontiguousarray(audio_rows)
        cross_names = self._inputs[2:]
        if all(isinstance(value, np.ndarray) for value in cross_values):
            feeds = {graph_io.TOKENS: tokens, graph_io.AUDIO_ROWS: audio_rows, **dict(zip(cross_names, cross_values))}
            qk, probs = self.session.run(graph_io.align_outputs(), feeds)
            return qk, probs
        binding = self.session.io_binding()
        binding.bind_cpu_input(graph_io.TOKENS, tokens)
        binding.bind_cpu_input(graph_io.AUDIO_ROWS, audio_rows)
        for name, value in zip(cross_names, cross_values):
            binding.bind_ortvalue_input(name, value)
        for name in graph_io.align_outputs():
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        qk, probs = (value.numpy() for value in binding.get_outputs())
        return qk, probs
