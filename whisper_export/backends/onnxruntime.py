"""The onnxruntime backends: OnnxRuntimeBackend(bundle, device=...) opens the CPU one (ort_cpu.py: numpy arrays,
numpy picking) or the CUDA one (ort_cuda.py, ort_cuda_steps.py: device buffers, CUDA graphs, picking on the
device, streamed greedy steps). Both implement backends/base.py's contract."""

from __future__ import annotations

import os

from whisper_export.backends.ort_common import OrtBackend
from whisper_export.backends.ort_cuda_steps import CUDA_GRAPH_ENV, check_cuda_provider
from whisper_export.bundle import Bundle

DEVICES = ("cpu", "cuda")

__all__ = ["OnnxRuntimeBackend", "DEVICES", "CUDA_GRAPH_ENV", "check_cuda_provider"]


def OnnxRuntimeBackend(bundle: Bundle | str | os.PathLike, device: str = "cpu", threads: int | None = None,
                       **cuda_options) -> OrtBackend:
    """device "cpu" (threads: None = physical cores) or "cuda" (cuda_options: OrtCudaBackend's keywords:
    cuda_graph, device_id, greedy_queue, shared_stream, provider_options)."""
    if device not in DEVICES:
        raise ValueError(f"device: received {device!r}, expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        if cuda_options:
            raise ValueError(f"device 'cpu': received CUDA options {sorted(cuda_options)}, expected none")
        from whisper_export.backends.ort_cpu import OrtCpuBackend

        return OrtCpuBackend(bundle, threads)
    from whisper_export.backends.ort_cuda import OrtCudaBackend

    return OrtCudaBackend(bundle, threads, **cuda_options)
