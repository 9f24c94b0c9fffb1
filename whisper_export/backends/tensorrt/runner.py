"""Run one TensorRT engine: a context manager holding the engine, its execution context, device buffers and
a CUDA stream.

    with EngineRunner(bundle / "decoder.engine") as runner:
        outputs = runner.infer({"in_tokens": tokens, ...})      # host in, host out (compare.py, tests)
        runner.execute(inputs, outputs, profile)                 # device tensors in and out (backend.py)

Before TensorRT deserializes anything, the runner reads the engine's JSON sidecar and checks, with pure
functions from whisper_export.backends.tensorrt.sidecar: that this process has the TensorRT module and version that built it, and
a GPU of a compute capability it was built for (EngineMismatch, naming the rebuild command); that the file
is the one the sidecar describes (sha256). Each call's inputs are validated against the sidecar's I/O
description (EngineInputError naming the tensor, received and expected shape/dtype), which also selects the
optimization profile; output shapes come from the ONNX dimension names and are cross-checked against the
execution context.

Device memory and the stream go through a small :class:`DeviceApi` (whisper_export.backends.tensorrt.cuda by default), so the
orchestration can be exercised on a CPU with a fake device and a fake execution context (tests/engines).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from whisper_export.backends.tensorrt import cuda, trt_api
from whisper_export.backends.tensorrt.sidecar import (
    EngineMismatch,
    EngineSidecar,
    RuntimeEnv,
    check_compatible,
    resolve_output_shapes,
    sidecar_path,
    validate_feeds,
)
from whisper_export.backends.tensorrt.trt_api import trt


class Buffer(Protocol):
    ptr: int
    capacity: int

    def ensure(self, nbytes: int) -> Any: ...
    def upload(self, array: np.ndarray, stream: Any) -> None: ...
    def download(self, out: np.ndarray, stream: Any) -> np.ndarray: ...
    def copy_from(self, src: Any, nbytes: int, src_offset: int, dst_offset: int, stream: Any) -> None: ...
    def zero(self, nbytes: int, stream: Any) -> None: ...
    def free(self) -> None: ...


class StreamLike(Protocol):
    ptr: int

    def synchronize(self) -> None: ...
    def close(self) -> None: ...


class DeviceApi(Protocol):
    def buffer(self, nbytes: int = 0) -> Buffer: ...
    def stream(self) -> StreamLike: ...
    def compute_capability(self) -> tuple[str | None, str]: ...


class CudaDevice:
    """The real device: whisper_export.backends.tensorrt.cuda (libcudart through ctypes)."""

    def buffer(self, nbytes: int = 0) -> Buffer:
        return cuda.DeviceBuffer(nbytes)

    def stream(self) -> StreamLike:
        return cuda.Stream()

    def compute_capability(self) -> tuple[str | None, str]:
        info, why = cuda.probe_device()
        return (info.compute_capability if info else None), why


class ExecutionContext(Protocol):
    """The subset of IExecutionContext the runner uses (the real one, or a test fake)."""

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool: ...
    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool: ...
    def get_tensor_shape(self, name: str) -> Any: ...
    def set_tensor_address(self, name: str, memory: int) -> bool: ...
    def execute_async_v3(self, stream_handle: int) -> bool: ...


@dataclass
class DeviceTensor:
    buffer: Buffer
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class EngineRunner:
    def __init__(self, engine_path: str | Path, device: DeviceApi | None = None, verify_hash: bool = True) -> None:
        self.engine_path = Path(engine_path)
        self.sidecar = EngineSidecar.read(sidecar_path(self.engine_path))
        self.device: DeviceApi = device if device is not None else CudaDevice()
        self.verify_hash = verify_hash
        self.context: ExecutionContext | None = None
        self.stream: StreamLike | None = None
        self._profile = 0
        self._scratch: dict[str, Buffer] = {}  # infer(): one grow-only buffer per tensor
        self._keep: list[Any] = []  # runtime and engine: must outlive the context
        self._errors: list[str] = []

    # -- lifecycle -----------------------------------------------------------------------------------

    def runtime_env(self) -> RuntimeEnv:
        info = trt_api.select(self.sidecar.trt_module)  # TensorRTUnavailable names what is installed
        cc, why = self.device.compute_capability()
        return RuntimeEnv(info.name, info.version, cc, why)

    def open(self) -> "EngineRunner":
        if self.context is not None:
            return self
        check_compatible(self.sidecar, self.runtime_env())
        data = self.engine_path.read_bytes()
        if self.verify_hash and hashlib.sha256(data).hexdigest() != self.sidecar.engine_sha256:
            raise EngineMismatch(
                f"{self.engine_path}: its sha256 differs from the one in {sidecar_path(self.engine_path).name}; "
                "the engine was replaced or damaged after the build. Rebuild: whisper-export build"
            )
        self.context = self._create_context(data)
        self.stream = self.device.stream()
        self._profile = 0
        return self

    def _create_context(self, data: bytes) -> ExecutionContext:
        from whisper_export.backends.tensorrt.trt_log import BuildLog

        log = BuildLog(None)
        runtime = trt.Runtime(log.trt_logger())
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise EngineMismatch(
                f"{self.engine_path}: TensorRT could not deserialize it ({'; '.join(log.errors[-3:]) or 'no reason given'}); "
                f"rebuild it with this TensorRT and GPU: whisper-export build --trt-module {self.sidecar.trt_module}"
            )
        context = engine.create_execution_context()
        if context is None:
            raise RuntimeError(f"{self.engine_path}: could not create an execution context ({log.errors[-3:]})")
        self._keep = [log, runtime, engine]
        return context

    def close(self) -> None:
        for buf in self._scratch.values():
            buf.free()
        self._scratch.clear()
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        self.context = None
        self._keep = []

    def __enter__(self) -> "EngineRunner":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- execution -----------------------------------------------------------------------------------

    def execute(self, inputs: Mapping[str, DeviceTensor], outputs: Mapping[str, DeviceTensor], profile: int) -> None:
        """Enqueue one run on the stream. Inputs must already be validated (validate_feeds gives `profile`);
        output tensors must have the shapes the context reports. Does not synchronize."""
        if self.context is None or self.stream is None:
            raise RuntimeError(f"{self.engine_path.name}: the runner is not open (use it as a context manager)")
        ctx = self.context
        if profile != self._profile:
            if not ctx.set_optimization_profile_async(profile, self.stream.ptr):
                raise RuntimeError(f"{self.engine_path.name}: could not switch to optimization profile {profile}")
            self._profile = profile
        for name, t in inputs.items():
            if t.buffer.capacity < t.nbytes:
                raise ValueError(f"{name}: device buffer holds {t.buffer.capacity} bytes, shape {t.shape} needs {t.nbytes}")
            if not ctx.set_input_shape(name, t.shape):
                raise RuntimeError(f"{name}: TensorRT refused shape {t.shape} in profile {profile}")
            ctx.set_tensor_address(name, t.buffer.ptr)
        for name, t in outputs.items():
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if shape != t.shape:
                raise RuntimeError(f"{name}: the execution context reports shape {shape}, the runner prepared {t.shape}")
            if t.buffer.capacity < t.nbytes:
                raise ValueError(f"{name}: device buffer holds {t.buffer.capacity} bytes, shape {t.shape} needs {t.nbytes}")
            ctx.set_tensor_address(name, t.buffer.ptr)
        if not ctx.execute_async_v3(self.stream.ptr):
            raise RuntimeError(f"{self.engine_path.name}: execute_async_v3 failed (see TensorRT's error log)")

    def plan(self, feeds: Mapping[str, tuple[tuple[int, ...], Any]]) -> tuple[int, dict[str, tuple[int, ...]]]:
        """Validate {name: (shape, dtype)}; return (profile index, output shapes). Pure: no device."""
        profile, named = validate_feeds(self.sidecar, feeds)
        return profile, resolve_output_shapes(self.sidecar, named)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Host arrays in, host arrays out (every output), synchronously."""
        arrays = {name: np.ascontiguousarray(value) for name, value in feeds.items()}
        profile, out_shapes = self.plan({n: (a.shape, a.dtype) for n, a in arrays.items()})
        if self.stream is None:
            raise RuntimeError(f"{self.engine_path.name}: the runner is not open (use it as a context manager)")
        inputs = {}
        for name, a in arrays.items():
            buf = self._scratch_buffer(name, a.nbytes)
            buf.upload(a, self.stream)
            inputs[name] = DeviceTensor(buf, a.shape, a.dtype)
        dtypes = {t.name: np.dtype(t.dtype) for t in self.sidecar.outputs}
        outputs = {}
        for name, shape in out_shapes.items():
            t = DeviceTensor(self._scratch_buffer(name, 0), shape, dtypes[name])
            t.buffer.ensure(t.nbytes)
            outputs[name] = t
        self.execute(inputs, outputs, profile)
        results = {name: t.buffer.download(np.empty(t.shape, t.dtype), self.stream) for name, t in outputs.items()}
        self.stream.synchronize()
        return results

    def _scratch_buffer(self, name: str, nbytes: int) -> Buffer:
        buf = self._scratch.get(name)
        if buf is None:
            buf = self._scratch[name] = self.device.buffer(nbytes)
        buf.ensure(nbytes)
        return buf
