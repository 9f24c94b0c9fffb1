"""Host memory that both the host and CUDA kernels read and write (page-locked, mapped into the GPU's address
space): the streamed greedy steps (ort_greedy.py) take their tokens from it and leave their choices in it, so the
host sees each choice as soon as it is written, without synchronising onnxruntime's stream.

With unified addressing (every 64-bit CUDA platform) memory from cudaHostAlloc has the same address on the host
and on the device, so an IO binding can hand that address to onnxruntime as a "cuda" buffer. onnxruntime's
Python API allocates no pinned memory, so it comes from the CUDA runtime library that onnxruntime-gpu loads.

The same library gives a backend its one CUDA stream (CudaStream), which every session of the backend gets as
onnxruntime's user_compute_stream: runs of different sessions then queue in order on it, so a decoder step and
the small graph that picks from its logits are waited for once, not twice.
"""

from __future__ import annotations

import ctypes
import functools
import weakref
from typing import Any

import numpy as np

# the CUDA runtime's names, newest first (onnxruntime-gpu 1.31 links CUDA 13; CUDA 12 builds exist)
_CUDART_NAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so", "cudart64_13.dll", "cudart64_12.dll")


class HostMappedError(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def _cudart() -> Any:
    errors = []
    for name in _CUDART_NAMES:
        try:
            return ctypes.CDLL(name)
        except OSError as e:
            errors.append(f"{name}: {e}")
    raise HostMappedError(f"no CUDA runtime library found ({'; '.join(errors)})")


class HostMapped:
    """nbytes of page-locked host memory at `address`, which CUDA kernels use as it is; freed with the object."""

    def __init__(self, nbytes: int):
        runtime = _cudart()
        pointer = ctypes.c_void_p()
        status = runtime.cudaHostAlloc(ctypes.byref(pointer), ctypes.c_size_t(nbytes), ctypes.c_uint(0))
        if status != 0 or not pointer.value:
            raise HostMappedError(f"cudaHostAlloc({nbytes}): received CUDA error {status}, expected 0")
        self.address: int = pointer.value
        self.nbytes = nbytes
        weakref.finalize(self, runtime.cudaFreeHost, ctypes.c_void_p(pointer.value))

    def view(self, dtype: Any, shape: tuple[int, ...], offset: int) -> np.ndarray:
        """A numpy array over bytes [offset, offset + its size) of this memory; valid while this object lives."""
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        assert 0 <= offset and offset + size <= self.nbytes, "view outside the allocation"
        return np.frombuffer((ctypes.c_char * size).from_address(self.address + offset), dtype).reshape(shape)


class HostMemory:
    """The same interface over ordinary host memory: for onnxruntime's CPU provider (the CUDA path's tests)."""

    def __init__(self, nbytes: int):
        self._bytes = np.zeros(nbytes, np.uint8)
        self.address: int = self._bytes.ctypes.data
        self.nbytes = nbytes

    def view(self, dtype: Any, shape: tuple[int, ...], offset: int) -> np.ndarray:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self._bytes[offset : offset + size].view(dtype).reshape(shape)


class CudaStream:
    """A CUDA stream on device_id (non-blocking towards the legacy default stream, as onnxruntime's own streams
    are), destroyed with the object but never at interpreter exit, where sessions that use it may still live."""

    def __init__(self, device_id: int):
        runtime = _cudart()
        previous = ctypes.c_int(0)
        runtime.cudaGetDevice(ctypes.byref(previous))
        handle = ctypes.c_void_p()
        status = runtime.cudaSetDevice(ctypes.c_int(device_id))
        if status == 0:
            status = runtime.cudaStreamCreateWithFlags(ctypes.byref(handle), ctypes.c_uint(1))  # cudaStreamNonBlocking
            runtime.cudaSetDevice(previous)
        if status != 0 or not handle.value:
            raise HostMappedError(f"cudaStreamCreateWithFlags on device {device_id}: received CUDA error {status}, "
                                  "expected 0")
        self.handle: int = handle.value
        weakref.finalize(self, runtime.cudaStreamDestroy, ctypes.c_void_p(handle.value)).atexit = False
