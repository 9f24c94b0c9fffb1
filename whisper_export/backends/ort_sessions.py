"""Opening an onnxruntime session for a bundle graph: providers and options, and the checks that turn
onnxruntime's silent fallbacks and loader errors into errors that name what was received and expected."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from whisper_export import graph_io
from whisper_export.backends.base import BackendError
from whisper_export.backends.signed_int8 import signed_model_bytes
from whisper_export.bundle import BundleError


def providers(device: str, device_id: int, precision: str, provider_options: dict[str, str], graph: bool) -> list:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    # cuDNN's exhaustive search (the provider's default) benchmarks the encoder's convolutions again at every
    # change of batch size (~0.1-0.2 s each on an H200, against ~10 ms to encode 16 windows), and a continuous
    # batcher changes it at every admission; its default heuristic picks kernels as fast at these shapes
    options = {"device_id": str(device_id), "cudnn_conv_algo_search": "DEFAULT", **provider_options}
    if precision == "fp32":
        options["use_tf32"] = "0"  # fp32 bundles give the CPU's tokens; TF32 GEMMs would round to 10 bits
    if graph:
        options["enable_cuda_graph"] = "1"
    return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]


def open_session(path: Path, inputs: list[str], outputs: list[str], *, device: str, device_id: int, precision: str,
                 threads: int, provider_options: dict[str, str], graph: bool = False,
                 fixed: dict[str, int] | None = None, signed_int8: bool = False) -> ort.InferenceSession:
    """graph: with CUDA graph capture (BackendError where onnxruntime refuses it); fixed: free dimensions
    overridden (a session specialised to one step shape); signed_int8: the graph's uint8 MatMulInteger weights
    given to onnxruntime as int8 (signed_int8.py: for CPUs where that kernel is exact)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1  # sequential execution: one op at a time, all threads inside it
    if device == "cpu":
        # each session has its own pool, whose threads spin after every parallel section: the encoder's spun on
        # the cores the decoder's steps and the host's picks were using (tiny.en, 2 threads on 2 cores: 121
        # clips 39.3 s spinning against 36.3-37.1 s without, the decoder's runs 11.0 s against 9.4)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for name, value in (fixed or {}).items():
        opts.add_free_dimension_override_by_name(name, value)
    try:
        model = (signed_model_bytes(path) if signed_int8 else None) or str(path)
        session = ort.InferenceSession(model, sess_options=opts,
                                       providers=providers(device, device_id, precision, provider_options, graph))
    except Exception as e:  # onnxruntime raises its own exception types for corrupt files
        if graph:
            raise BackendError(f"{path.name}: onnxruntime cannot capture it in a CUDA graph ({e})") from e
        raise BundleError(f"{path}: onnxruntime cannot load it ({e})") from e
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        # onnxruntime falls back to CPU silently when CUDA libraries fail to load
        raise BackendError(
            f"{path.name}: received providers {session.get_providers()}, expected CUDAExecutionProvider "
            "(check the CUDA/cuDNN libraries onnxruntime-gpu needs)"
        )
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    if sorted(got_in) != sorted(inputs) or sorted(got_out) != sorted(outputs):
        raise BundleError(
            f"{path.name}: received inputs {got_in} and outputs {got_out}, expected inputs {inputs} and "
            f"outputs {outputs} (graph I/O version {graph_io.GRAPH_IO_VERSION}; re-export the bundle)"
        )
    return session
