"""What the onnxruntime backends for CPU (ort_cpu.py) and CUDA (ort_cuda.py) share: the bundle, its graph I/O
names, and opening sessions (ort_sessions.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from whisper_export import graph_io
from whisper_export.backends.base import Backend
from whisper_export.backends.ort_align import AlignRunner, check_align_request
from whisper_export.backends.cpu_info import physical_cores
from whisper_export.backends.ort_sessions import open_session
from whisper_export.backends.signed_int8 import cpu_multiplies_u8s8_exactly
from whisper_export.bundle import Bundle, BundleError


class OrtBackend(Backend):
    """The bundle's encoder.onnx and decoder.onnx on one onnxruntime device."""

    device = "cpu"

    def __init__(self, bundle: Bundle | str | os.PathLike, threads: int | None = None, *, device_id: int = 0,
                 provider_options: dict[str, str] | None = None):
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads: received {threads!r}, expected a positive int or None (physical cores)")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(os.fspath(bundle))
        self.dims = self.bundle.dims
        self.precision = self.bundle.precision
        if self.precision not in graph_io.PRECISIONS:
            raise BundleError(f"bundle precision: received {self.precision!r}, expected one of {sorted(graph_io.PRECISIONS)}")
        self.dtype = graph_io.PRECISIONS[self.precision]
        self.device_id = device_id
        self.provider_options = dict(provider_options or {})
        self.threads = threads or physical_cores()
        n_layer = self.dims.n_text_layer
        self._cross_out = graph_io.cross_outputs(n_layer)
        self._cross_in = graph_io.cross_inputs(n_layer)
        self._self_in = graph_io.self_inputs(n_layer)
        self._self_out = graph_io.self_outputs(n_layer)
        # attention="onnxruntime" (graphs_ort.py): the decoder also chooses greedily (an in_logit_bias input and
        # the choice as outputs), and a step of several tokens must be a prompt (every offset 0)
        self.selects = self.bundle.config.get("attention") == "onnxruntime"
        self._dec_out = graph_io.decoder_outputs(n_layer, self.selects)
        self._dec_in = graph_io.decoder_inputs(n_layer, self.selects)
        self._no_bias = np.zeros(self.dims.n_vocab, np.float32)  # a selecting decoder's bias input, when unused
        self._align: AlignRunner | None = None  # align.onnx (ort_align.py), opened by the first align()
        # an int8 bundle's MatMulInteger weights as int8 where MLAS's u8 x s8 kernel is exact (signed_int8.py)
        self._signed_int8 = (self.device == "cpu" and (self.bundle.config.get("quantize") or {}).get("form")
                             == "matmul_integer" and cpu_multiplies_u8s8_exactly())

    def _session(self, path: Path, inputs: list[str], outputs: list[str], graph: bool = False,
                 fixed: dict[str, int] | None = None) -> ort.InferenceSession:
        return open_session(path, inputs, outputs, device=self.device, device_id=self.device_id,
                            precision=self.precision, threads=self.threads, provider_options=self.provider_options,
                            graph=graph, fixed=fixed, signed_int8=self._signed_int8)

    def _align_on(self, cross: Any, cross_type: type, audio_rows: np.ndarray, tokens: np.ndarray,
                  lengths: np.ndarray, frames: np.ndarray | None = None,
                  scores_on: tuple[str, int] = ("cpu", 0)) -> tuple[np.ndarray, np.ndarray]:
        """Backend.align (frames None) or Backend.align_matrices over this backend's cross K/V handle (values in
        graph_io.cross_inputs order, slots): the request checked, then align.onnx's session, opened on first use by
        this backend's session factory (same device, threads and, on CUDA, stream); scores_on: where align.onnx's
        scores are bound for alignment_matrix.onnx (an onnxruntime device name and id)."""
        if not isinstance(cross, cross_type):
            raise TypeError(f"align: received cross {type(cross).__name__}, expected the handle new_cross() and "
                            "encode() return")
        check_align_request(self.dims, cross.slots, audio_rows, tokens, lengths)
        if self._align is None:
            self._align = AlignRunner(self.bundle, self._session)
        if frames is None:
            return self._align.run(cross.values, cross.slots, audio_rows, tokens, lengths)
        return self._align.run_matrices(cross.values, cross.slots, audio_rows, tokens, lengths, frames, scores_on)

    def _check_prompt(self, tokens: np.ndarray, offsets: np.ndarray) -> None:
        if self.selects and tokens.shape[1] > 1 and offsets.any():
            raise ValueError(
                f"offsets: received {offsets.tolist()} for a {tokens.shape[1]}-token step, expected all 0: a bundle "
                "exported with attention='onnxruntime' takes several tokens only as a prompt (GroupQueryAttention)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.bundle.directory)!r}, device={self.device!r}, threads={self.threads})"
