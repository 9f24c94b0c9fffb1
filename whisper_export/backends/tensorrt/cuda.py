"""The few CUDA runtime calls the TensorRT runner needs: device query, memory, copies, a stream.

Why not cuda-python (``cuda.bindings.runtime`` / ``cuda.cudart``): it would be one more dependency that the
project's ``tensorrt-rtx`` extra does not carry, and its module layout changed between 12.x and 13.x. Why
not polygraphy.cuda's DeviceArray as is: it raises PolygraphyException through its logger, warns on every
``.dtype`` access, and has no memset. So this module keeps polygraphy only for what it does well --
*finding* libcudart (CUDA toolkit dirs, LD_LIBRARY_PATH, the nvidia-cuda-runtime wheel) -- and calls the
ten stable C entry points below through ctypes with explicit argument types. polygraphy is already a
dependency of the TensorRT extra (the comparator in compare.py uses it).

Importing this module touches no library; :func:`cudart` loads it on first use.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

# cudaMemcpyKind
HOST_TO_DEVICE, DEVICE_TO_HOST, DEVICE_TO_DEVICE = 1, 2, 3
# cudaDeviceAttr
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76

_LIB: Any = None


class CudaError(RuntimeError):
    """A CUDA runtime call failed, or no CUDA runtime/device is usable here."""


def cudart() -> Any:
    """The CUDA runtime library (ctypes.CDLL) with argument types set; CudaError if it cannot be loaded."""
    global _LIB
    if _LIB is None:
        try:
            from polygraphy import cuda as pg_cuda

            lib = pg_cuda.wrapper().handle
        except Exception as e:  # polygraphy raises its own exception type when nothing is found
            raise CudaError(
                f"the CUDA runtime library (libcudart) could not be loaded ({e}); install the CUDA toolkit or "
                "pip install nvidia-cuda-runtime"
            ) from e
        vp, sz, ci = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        signatures: dict[str, list[Any]] = {
            "cudaGetDeviceCount": [ctypes.POINTER(ci)],
            "cudaDeviceGetAttribute": [ctypes.POINTER(ci), ci, ci],
            "cudaGetErrorString": [ci],
            "cudaMalloc": [ctypes.POINTER(vp), sz],
            "cudaFree": [vp],
            "cudaMemcpyAsync": [vp, vp, sz, ci, vp],
            "cudaMemsetAsync": [vp, ci, sz, vp],
            "cudaStreamCreate": [ctypes.POINTER(vp)],
            "cudaStreamSynchronize": [vp],
            "cudaStreamDestroy": [vp],
        }
        for name, argtypes in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = ctypes.c_char_p if name == "cudaGetErrorString" else ci
        _LIB = lib
    return _LIB


def check(status: int, what: str) -> None:
    if status != 0:
        message = cudart().cudaGetErrorString(status)
        raise CudaError(f"{what}: CUDA error {status} ({message.decode() if message else 'unknown'})")


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    compute_capability: str  # "8.9"


def device_info(index: int = 0) -> DeviceInfo:
    """The compute capability of CUDA device `index`; CudaError naming why when there is none."""
    lib = cudart()
    count = ctypes.c_int(0)
    status = lib.cudaGetDeviceCount(ctypes.byref(count))
    if status != 0:
        check(status, "cudaGetDeviceCount (is an NVIDIA driver installed and a GPU visible?)")
    if count.value <= index:
        raise CudaError(f"CUDA device {index}: received {count.value} visible device(s)")
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    check(lib.cudaDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, index), "cudaDeviceGetAttribute")
    check(lib.cudaDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, index), "cudaDeviceGetAttribute")
    return DeviceInfo(index, f"{major.value}.{minor.value}")


def probe_device() -> tuple[DeviceInfo | None, str]:
    """(device 0 or None, why not): never raises."""
    try:
        return device_info(0), ""
    except CudaError as e:
        return None, str(e)


class Stream:
    def __init__(self) -> None:
        ptr = ctypes.c_void_p()
        check(cudart().cudaStreamCreate(ctypes.byref(ptr)), "cudaStreamCreate")
        self.ptr: int = ptr.value or 0

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.ptr), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.ptr:
            check(cudart().cudaStreamDestroy(self.ptr), "cudaStreamDestroy")
            self.ptr = 0


class DeviceBuffer:
    """Device memory that grows on demand (never shrinks); ``ptr`` is what TensorRT binds."""

    def __init__(self, nbytes: int = 0) -> None:
        self.ptr = 0
        self.capacity = 0
        self.ensure(nbytes)

    def ensure(self, nbytes: int) -> "DeviceBuffer":
        """At least nbytes allocated (contents are lost when it grows)."""
        if nbytes > self.capacity:
            self.free()
            ptr = ctypes.c_void_p()
            # TensorRT wants 256-byte alignment; cudaMalloc gives at least that. Never allocate 0 bytes.
            check(cudart().cudaMalloc(ctypes.byref(ptr), max(nbytes, 1)), f"cudaMalloc({nbytes} bytes)")
            self.ptr, self.capacity = ptr.value or 0, nbytes
        return self

    def upload(self, array: np.ndarray, stream: Stream) -> None:
        array = np.ascontiguousarray(array)
        self.ensure(array.nbytes)
        if array.nbytes:
            check(cudart().cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes, HOST_TO_DEVICE, stream.ptr),
                  "cudaMemcpyAsync host to device")

    def download(self, out: np.ndarray, stream: Stream) -> np.ndarray:
        """Copy out.nbytes from the device into the C-contiguous host array `out` (sync the stream before use)."""
        if not out.flags.c_contiguous:
            raise ValueError("download: received a non-contiguous host array, expected a C-contiguous one")
        if out.nbytes > self.capacity:
            raise ValueError(f"download: received a {out.nbytes}-byte host array, device buffer holds {self.capacity}")
        if out.nbytes:
            check(cudart().cudaMemcpyAsync(out.ctypes.data, self.ptr, out.nbytes, DEVICE_TO_HOST, stream.ptr),
                  "cudaMemcpyAsync device to host")
        return out

    def copy_from(self, src: "DeviceBuffer", nbytes: int, src_offset: int, dst_offset: int, stream: Stream) -> None:
        """nbytes from src[src_offset:] to self[dst_offset:], device to device, in stream order."""
        if src_offset + nbytes > src.capacity or dst_offset + nbytes > self.capacity:
            raise ValueError(f"copy_from: received {nbytes} bytes at {src_offset} -> {dst_offset}, expected both "
                             f"ranges inside the buffers ({src.capacity} and {self.capacity} bytes)")
        if nbytes:
            check(cudart().cudaMemcpyAsync(self.ptr + dst_offset, src.ptr + src_offset, nbytes, DEVICE_TO_DEVICE,
                                           stream.ptr), "cudaMemcpyAsync device to device")

    def zero(self, nbytes: int, stream: Stream) -> None:
        self.ensure(nbytes)
        if nbytes:
            check(cudart().cudaMemsetAsync(self.ptr, 0, nbytes, stream.ptr), "cudaMemsetAsync")

    def free(self) -> None:
        if self.ptr:
            check(cudart().cudaFree(self.ptr), "cudaFree")
        self.ptr, self.capacity = 0, 0
