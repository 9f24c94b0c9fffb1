"""whisper_export.backends.tensorrt.cuda, the runner's CUDA layer (libcudart through ctypes). Needs a CUDA GPU, not TensorRT."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_export.backends.tensorrt import cuda


def test_probe_device_never_raises():
    info, why = cuda.probe_device()
    assert (info is None) == bool(why)
    if info is not None:
        major, minor = info.compute_capability.split(".")
        assert major.isdigit() and minor.isdigit()


@pytest.mark.gpu
def test_round_trip_zero_and_growth():
    stream = cuda.Stream()
    try:
        a = np.random.default_rng(0).standard_normal((3, 6, 448, 64)).astype(np.float16)
        buf = cuda.DeviceBuffer()
        buf.upload(a, stream)
        out = buf.download(np.empty_like(a), stream)
        stream.synchronize()
        np.testing.assert_array_equal(out, a)
        buf.zero(1024, stream)
        out = buf.download(np.empty_like(a), stream)
        stream.synchronize()
        flat = out.view(np.uint8).ravel()
        assert not flat[:1024].any() and (flat[1024:] == a.view(np.uint8).ravel()[1024:]).all()
        ptr = buf.ptr
        buf.ensure(16)  # smaller: kept
        assert buf.ptr == ptr
        buf.free()
        buf.free()  # idempotent
        with pytest.raises(ValueError, match="non-contiguous"):
            cuda.DeviceBuffer(64).download(np.empty((4, 4), np.float32)[:, :2], stream)
    finally:
        stream.close()


@pytest.mark.gpu
def test_allocations_beyond_2_gib_and_errors_name_the_call():
    stream = cuda.Stream()
    big = cuda.DeviceBuffer(3 << 30)  # size_t, not int: 3 GiB must not wrap
    big.zero(3 << 30, stream)
    stream.synchronize()
    big.free()
    stream.close()
    with pytest.raises(cuda.CudaError, match=r"cudaMalloc\(\d+ bytes\)"):
        cuda.DeviceBuffer(1 << 50)  # 1 PiB
