"""The onnxruntime backend: the bundle's encoder.onnx and decoder.onnx on CPU or CUDA.

CPU: numpy in, numpy out; each step's cache outputs are fed back as the next step's inputs as they are
(onnxruntime reads contiguous numpy arrays in place, so nothing is copied on the host).
CUDA: IO binding. Cross K/V stay on the GPU from encode() on, the self-attention caches ping-pong between
two device buffer sets (the graph gathers rows by in_cache_index, so its output cannot alias its input),
and only the logits are bound to host memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from whisper_export import graph_io
from whisper_export.backends.base import Backend, BackendError
from whisper_export.bundle import Bundle, BundleError

DEVICES = ("cpu", "cuda")


def physical_cores() -> int:
    """Physical cores available to this process: hyper-threads share one core's FPUs, so GEMM-bound
    inference gains little from them while doubling contention."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        allowed = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = phys = core = None
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not key and cpu is not None:
                    if cpu in allowed:
                        cores.add((phys or "0", core if core is not None else str(cpu)))
                    cpu = phys = core = None
            if cpu is not None and cpu in allowed:
                cores.add((phys or "0", core if core is not None else str(cpu)))
    except OSError:
        pass
    return max(1, len(cores) if cores else len(allowed))


@dataclass
class _Cross:
    values: list[Any]  # numpy arrays (CPU) or OrtValues on the device (CUDA), in graph_io.cross_inputs order
    n_audio: int


@dataclass
class _Cache:
    values: list[Any]  # in graph_io.self_inputs order
    rows: int
    capacity: int
    spare: list[Any] | None = field(default=None)  # CUDA: the output buffers of the next step


class OnnxRuntimeBackend(Backend):
    def __init__(self, bundle: Bundle | str | os.PathLike, device: str = "cpu", threads: int | None = None):
        if device not in DEVICES:
            raise ValueError(f"device: received {device!r}, expected one of {', '.join(DEVICES)}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads: received {threads!r}, expected a positive int or None (physical cores)")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(os.fspath(bundle))
        self.dims = self.bundle.dims
        self.precision = self.bundle.precision
        if self.precision not in graph_io.PRECISIONS:
            raise BundleError(f"bundle precision: received {self.precision!r}, expected one of {sorted(graph_io.PRECISIONS)}")
        self.dtype = graph_io.PRECISIONS[self.precision]
        self.device = device
        self.threads = threads or physical_cores()
        n_layer = self.dims.n_text_layer
        self._cross_out = graph_io.cross_outputs(n_layer)
        self._cross_in = graph_io.cross_inputs(n_layer)
        self._self_in = graph_io.self_inputs(n_layer)
        self._self_out = graph_io.self_outputs(n_layer)
        self._dec_out = graph_io.decoder_outputs(n_layer)

        if device == "cuda" and hasattr(ort, "preload_dlls"):
            # CUDA/cuDNN from pip's nvidia-* packages are not on the loader path: onnxruntime finds them itself
            try:
                ort.preload_dlls()
            except Exception:  # noqa: BLE001 - system-wide CUDA libraries may still do; the check below decides
                pass
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendError(
                f"device 'cuda': received onnxruntime {ort.__version__} with providers "
                f"{ort.get_available_providers()}, expected CUDAExecutionProvider (pip install onnxruntime-gpu)"
            )
        self._providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        self.encoder = self._session(self.bundle.encoder_path, [graph_io.MEL], self._cross_out)
        self.decoder = self._session(
            self.bundle.decoder_path, graph_io.decoder_inputs(n_layer), graph_io.decoder_outputs(n_layer)
        )

    def _session(self, path, inputs: list[str], outputs: list[str]) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1  # sequential execution: one op at a time, all threads inside it
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=self._providers)
        except Exception as e:  # onnxruntime raises its own exception types for corrupt files
            raise BundleError(f"{path}: onnxruntime cannot load it ({e})") from e
        if self.device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
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

    # -- Backend ---------------------------------------------------------------------------------------

    def encode(self, mel: np.ndarray) -> _Cross:
        self.check_mel(mel)
        if self.device == "cpu":
            return _Cross(self.encoder.run(self._cross_out, {graph_io.MEL: mel}), mel.shape[0])
        binding = self.encoder.io_binding()
        binding.bind_cpu_input(graph_io.MEL, mel)
        for name in self._cross_out:
            binding.bind_output(name, "cuda", 0)
        self.encoder.run_with_iobinding(binding)
        by_name = dict(zip(self._cross_out, binding.get_outputs()))
        return _Cross([by_name[n.replace("in_", "out_", 1)] for n in self._cross_in], mel.shape[0])

    def new_cache(self, rows: int, capacity: int) -> _Cache:
        if rows < 1 or not 1 <= capacity <= self.dims.n_text_ctx:
            raise ValueError(
                f"new_cache: received rows={rows}, capacity={capacity}, expected rows >= 1 and "
                f"1 <= capacity <= n_text_ctx={self.dims.n_text_ctx}"
            )
        d = self.dims
        shape = (rows, d.n_text_head, capacity, d.text_head_dim)
        if self.device == "cpu":
            return _Cache([np.zeros(shape, self.dtype) for _ in self._self_in], rows, capacity)
        zeros = np.zeros(shape, self.dtype)
        values = [ort.OrtValue.ortvalue_from_numpy(zeros, "cuda", 0) for _ in self._self_in]
        spare = [ort.OrtValue.ortvalue_from_shape_and_type(shape, self.dtype, "cuda", 0) for _ in self._self_in]
        return _Cache(values, rows, capacity, spare)

    def decode(self, tokens, offsets, cache_index, logit_positions, cache: _Cache, cross: _Cross):
        if not isinstance(cache, _Cache) or not isinstance(cross, _Cross):
            raise TypeError(
                f"decode: received cache {type(cache).__name__} and cross {type(cross).__name__}, expected the "
                "handles this backend's new_cache() and encode() return"
            )
        self.check_step(tokens, offsets, cache_index, logit_positions, cache.rows, cache.capacity, cross.n_audio)
        steering = {
            graph_io.TOKENS: tokens,
            graph_io.OFFSETS: offsets,
            graph_io.CACHE_INDEX: cache_index,
            graph_io.LOGIT_POSITIONS: logit_positions,
        }
        if self.device == "cpu":
            feeds = {**steering, **dict(zip(self._self_in, cache.values)), **dict(zip(self._cross_in, cross.values))}
            outputs = self.decoder.run(self._dec_out, feeds)
            return outputs[0], _Cache(outputs[1:], cache.rows, cache.capacity)
        assert cache.spare is not None, "CUDA caches come in pairs (new_cache)"
        binding = self.decoder.io_binding()
        for name, value in steering.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in zip(self._self_in, cache.values):
            binding.bind_ortvalue_input(name, value)
        for name, value in zip(self._cross_in, cross.values):
            binding.bind_ortvalue_input(name, value)
        for name, value in zip(self._self_out, cache.spare):
            binding.bind_ortvalue_output(name, value)
        binding.bind_output(graph_io.LOGITS, "cpu")
        self.decoder.run_with_iobinding(binding)
        # get_outputs() follows the binding order: the caches first, the logits last
        logits = binding.get_outputs()[-1].numpy()
        # the outputs become the next inputs and the consumed inputs the next outputs: no allocation per step
        return logits, _Cache(cache.spare, cache.rows, cache.capacity, cache.values)

    def close(self) -> None:
        # dropping the sessions frees their memory (and the device arena) once handles are gone
        self.encoder = self.decoder = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"OnnxRuntimeBackend({str(self.bundle.directory)!r}, device={self.device!r}, threads={self.threads})"
