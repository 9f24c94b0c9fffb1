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
    """align.onnx's session (opened by the backend's own session factory: same device, threads and stream) and,
    for alignment matrices, the packaged alignment_matrix.onnx's on the same device: the scores stay where align.onnx
    wrote them."""

    def __init__(self, bundle: Bundle, open_session: Callable[[Path, list[str], list[str]], Any]):
        self.dims = bundle.dims
        self.n_heads = len(bundle.alignment_heads)
        self._inputs = graph_io.align_inputs(self.dims.n_text_layer)
        self._open = open_session
        self.session = open_session(bundle.require_align(), self._inputs, graph_io.align_outputs())
        self._matrix_session: Any = None

    def run(self, cross_values: list[Any], n_audio: int, audio_rows: np.ndarray, tokens: np.ndarray,
            lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Backend.align: cross_values in graph_io.cross_inputs order, numpy arrays or OrtValues bound in place."""
        qk, probs = self._run_align(cross_values, n_audio, audio_rows, tokens, lengths, "cpu", 0)
        return qk if isinstance(qk, np.ndarray) else qk.numpy(), probs

    def run_matrices(self, cross_values: list[Any], n_audio: int, audio_rows: np.ndarray, tokens: np.ndarray,
                     lengths: np.ndarray, frames: np.ndarray,
                     scores_on: tuple[str, int] = ("cpu", 0)) -> tuple[np.ndarray, np.ndarray]:
        """Backend.align_matrices: align.onnx, then alignment_matrix.onnx on its scores, bound on scores_on (an
        onnxruntime device name and id) when the cross K/V are OrtValues."""
        check_frames(frames, len(tokens), self.dims.n_audio_ctx)
        qk, probs = self._run_align(cross_values, n_audio, audio_rows, tokens, lengths, *scores_on)
        if self._matrix_session is None:
            self._matrix_session = self._open(graph_io.ALIGNMENT_MATRIX_PATH, graph_io.alignment_matrix_inputs(),
                                              [graph_io.ALIGNMENT_MATRIX])
        binding = self._matrix_session.io_binding()
        if isinstance(qk, np.ndarray):
            binding.bind_cpu_input(graph_io.IN_ALIGNMENT_QK, qk)
        else:
            binding.bind_ortvalue_input(graph_io.IN_ALIGNMENT_QK, qk)
        binding.bind_cpu_input(graph_io.IN_LENGTHS, np.ascontiguousarray(lengths))
        binding.bind_cpu_input(graph_io.IN_FRAMES, np.ascontiguousarray(frames))
        binding.bind_output(graph_io.ALIGNMENT_MATRIX, "cpu")
        self._matrix_session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy(), probs

    def _run_align(self, cross_values: list[Any], n_audio: int, audio_rows: np.ndarray, tokens: np.ndarray,
                   lengths: np.ndarray, qk_device: str, qk_device_id: int) -> tuple[Any, np.ndarray]:
        """align.onnx's (scores, probabilities): the scores a numpy array, or an OrtValue on qk_device when the
        cross K/V are OrtValues (bound in place)."""
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
        binding.bind_output(graph_io.ALIGNMENT_QK, qk_device, qk_device_id)
        binding.bind_output(graph_io.TEXT_PROBS, "cpu")
        self.session.run_with_iobinding(binding)
        qk, probs = binding.get_outputs()
        return qk, probs.numpy()


def check_frames(frames: np.ndarray, rows: int, n_audio_ctx: int) -> None:
    """ValueError for Backend.align_matrices' frames: (rows,) int64 in 0..n_audio_ctx."""
    if (not isinstance(frames, np.ndarray) or frames.dtype != np.int64 or frames.shape != (rows,)
            or frames.min() < 0 or frames.max() > n_audio_ctx):
        received = f"{frames.dtype} {frames.tolist()}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"align frames: received {received}, expected {rows} int64 counts in 0..{n_audio_ctx} "
                         "(each window's mel frames // 2)")
