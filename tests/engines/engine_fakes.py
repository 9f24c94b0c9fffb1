"""A CPU stand-in for the GPU side of whisper_export.backends.tensorrt.runner: host memory addressed by fake pointers, and an
"execution context" that runs the engine's source ONNX graph with onnxruntime.

It behaves like TensorRT where the runner depends on it: input shapes outside the active optimization
profile are refused (set_input_shape returns False), output shapes are what the graph produces (asked
before execution), tensors are read from and written to the addresses bound with set_tensor_address, and
an output buffer too small for its tensor is an error. So the runner's and the backend's plumbing --
profile switching, buffer sizing, ping-pong caches, device-resident cross K/V -- runs unchanged on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from whisper_export.backends.tensorrt.runner import EngineRunner
from whisper_export.backends.tensorrt.sidecar import EngineSidecar


class FakeMemory:
    def __init__(self) -> None:
        self.blocks: dict[int, np.ndarray] = {}
        self._next = 1 << 20
        self.allocations = 0
        self.frees = 0

    def alloc(self, nbytes: int) -> int:
        ptr = self._next
        self._next += ((max(nbytes, 1) + 255) // 256 + 1) * 256
        self.blocks[ptr] = np.full(max(nbytes, 1), 0xFF, np.uint8)  # garbage, like fresh device memory
        self.allocations += 1
        return ptr

    def free(self, ptr: int) -> None:
        del self.blocks[ptr]
        self.frees += 1

    def read(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        block = self.blocks[ptr]
        assert nbytes <= block.nbytes, f"read of {nbytes} bytes from a {block.nbytes}-byte block"
        return block[:nbytes].view(dtype).reshape(shape).copy()

    def write(self, ptr: int, array: np.ndarray) -> None:
        block = self.blocks[ptr]
        raw = np.ascontiguousarray(array).view(np.uint8).ravel()
        assert raw.nbytes <= block.nbytes, f"write of {raw.nbytes} bytes into a {block.nbytes}-byte block"
        block[: raw.nbytes] = raw


class FakeStream:
    ptr = 0xABC

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeBuffer:
    def __init__(self, memory: FakeMemory, nbytes: int = 0) -> None:
        self.memory = memory
        self.ptr = 0
        self.capacity = 0
        self.ensure(nbytes)

    def ensure(self, nbytes: int) -> "FakeBuffer":
        if nbytes > self.capacity:
            self.free()
            self.ptr, self.capacity = self.memory.alloc(nbytes), nbytes
        return self

    def upload(self, array: np.ndarray, stream: Any) -> None:
        self.ensure(array.nbytes)
        self.memory.write(self.ptr, array)

    def download(self, out: np.ndarray, stream: Any) -> np.ndarray:
        out[...] = self.memory.read(self.ptr, out.shape, out.dtype)
        return out

    def copy_from(self, src: "FakeBuffer", nbytes: int, src_offset: int, dst_offset: int, stream: Any) -> None:
        assert src_offset + nbytes <= src.capacity and dst_offset + nbytes <= self.capacity
        self.memory.blocks[self.ptr][dst_offset : dst_offset + nbytes] = \
            self.memory.blocks[src.ptr][src_offset : src_offset + nbytes]

    def zero(self, nbytes: int, stream: Any) -> None:
        self.ensure(nbytes)
        self.memory.blocks[self.ptr][:nbytes] = 0

    def free(self) -> None:
        if self.ptr:
            self.memory.free(self.ptr)
        self.ptr, self.capacity = 0, 0


class FakeDevice:
    def __init__(self, compute_capability: str | None = "8.9") -> None:
        self.memory = FakeMemory()
        self.cc = compute_capability

    def buffer(self, nbytes: int = 0) -> FakeBuffer:
        return FakeBuffer(self.memory, nbytes)

    def stream(self) -> FakeStream:
        return FakeStream()

    def compute_capability(self) -> tuple[str | None, str]:
        return self.cc, "" if self.cc else "no GPU (fake)"


class OrtContext:
    """IExecutionContext over onnxruntime and FakeMemory (see the module docstring)."""

    def __init__(self, onnx_path: Path, sidecar: EngineSidecar, memory: FakeMemory) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.sidecar = sidecar
        self.memory = memory
        self.profile = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.results: dict[str, np.ndarray] | None = None
        self.profile_switches = 0
        self.executions = 0
        self.specs = {t.name: t for t in sidecar.io}

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        if not 0 <= profile_index < len(self.sidecar.profiles):
            return False
        self.profile = profile_index
        self.profile_switches += 1
        self.shapes.clear()
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        rng = self.sidecar.profiles[self.profile].shapes[name]
        if not rng.contains(shape):
            return False
        self.shapes[name] = tuple(shape)
        self.results = None
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = memory
        return True

    def _run(self) -> dict[str, np.ndarray]:
        if self.results is None:
            feeds = {}
            for spec in self.sidecar.inputs:
                feeds[spec.name] = self.memory.read(self.addresses[spec.name], self.shapes[spec.name],
                                                    np.dtype(spec.dtype))
            names = [t.name for t in self.sidecar.outputs]
            self.results = dict(zip(names, self.session.run(names, feeds)))
        return self.results

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        # TensorRT derives output shapes from input shapes alone; reading the inputs here is harmless
        # because the runner binds input addresses before asking
        return tuple(self._run()[name].shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        results = self._run()
        for name, value in results.items():
            assert value.dtype == np.dtype(self.specs[name].dtype), (name, value.dtype)
            self.memory.write(self.addresses[name], value)
        self.results = None
        self.executions += 1
        return True


class FakeRunner(EngineRunner):
    """EngineRunner whose execution context is an OrtContext (no TensorRT deserialization, no GPU)."""

    def __init__(self, engine_path: str | Path, device: Any = None, verify_hash: bool = True) -> None:
        super().__init__(engine_path, device if device is not None else FakeDevice(), verify_hash)

    def _create_context(self, data: bytes) -> OrtContext:
        assert isinstance(self.device, FakeDevice)
        self.ort_context = OrtContext(self.engine_path.with_name(self.sidecar.onnx_file), self.sidecar,
                                      self.device.memory)
        return self.ort_context
