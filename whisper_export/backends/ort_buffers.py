"""Handles and device-buffer pools of the onnxruntime backend (see backends/onnxruntime.py for the design)."""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from whisper_export import graph_io
from whisper_export.backends.host_mapped import HostMapped, HostMemory
from whisper_export.backends.ort_greedy import GreedyStream
from whisper_export.dims import ModelDims


class Pool:
    """Device buffer sets handed out by key and taken back when the last handle that holds one is gone.

    A set keeps its addresses for the backend's lifetime, which is what a captured CUDA graph needs; a key's
    sets are reused in turn, so the number of sets (and graphs) stays that of the decodes alive at once.
    """

    def __init__(self, make):
        self._make = make  # key -> list of OrtValues
        self._free: dict[tuple, list["BufferSet"]] = {}
        self._ids = itertools.count()

    def take(self, key: tuple) -> "Lease":
        free = self._free.setdefault(key, [])
        buffers = free.pop() if free else BufferSet(next(self._ids), self._make(key))
        lease = Lease(buffers)
        weakref.finalize(lease, free.append, buffers)
        return lease

    def clear(self) -> None:
        self._free.clear()


@dataclass(eq=False)
class BufferSet:
    id: int
    values: list[Any]


class Lease:
    """Holds a BufferSet out of its pool; the set goes back when the lease is garbage."""

    __slots__ = ("buffers", "__weakref__")

    def __init__(self, buffers: BufferSet):
        self.buffers = buffers


@dataclass
class CrossHandle:
    values: list[Any]  # OrtValues on the device (slots, H, n_audio_ctx, hd), graph_io.cross_inputs order
    slots: int
    lease: Lease | None = field(default=None, repr=False)  # the pooled buffers the values live in


class CacheHandle:
    """A pair of cache sets [A, B] of (rows, capacity), one of them current: steps update the current set in
    place; a beam reorder writes the current set's rows, reordered, into the other one, which becomes current."""

    def __init__(self, sets: tuple[Lease, Lease], rows: int, capacity: int):
        self.sets, self.rows, self.capacity, self.side = sets, rows, capacity, 0

    @property
    def values(self) -> list[Any]:
        return self.sets[self.side].buffers.values

    @property
    def spare(self) -> list[Any]:
        return self.sets[1 - self.side].buffers.values

    def flip(self) -> None:
        """The other set is current (after a reorder wrote into it)."""
        self.side = 1 - self.side

    def sets_key(self) -> tuple[int, int, int, int]:
        """(rows, capacity, current set id, spare set id): what a binding over this pair is bound to."""
        return self.rows, self.capacity, self.sets[self.side].buffers.id, self.sets[1 - self.side].buffers.id


@dataclass
class Steering:
    """Fixed device inputs of a step shape (rows, n_new, n_logits), updated in place at every step."""

    values: dict[str, Any]  # graph_io name -> OrtValue
    logits: Any  # OrtValue (rows, n_logits, n_vocab) float32 on the device
    choice: tuple[Any, Any] | None = None  # a decoder that selects: its (best token, log-probability) outputs


class DeviceBias:
    """The logit bias (n_vocab,) on the device, copied from the host only when it changes (once per decode)."""

    def __init__(self, value: Any):
        self.value = value  # OrtValue, zeroed
        self._host: Any = None

    def set(self, bias: Any) -> Any:
        import numpy as np

        if self._host is None or not np.array_equal(self._host, bias):
            self.value.update_inplace(np.ascontiguousarray(bias, dtype=np.float32))
            self._host = np.array(bias, dtype=np.float32)
        return self.value


class DeviceBuffers:
    """The CUDA path's device memory, every address fixed for the backend's lifetime (IO bindings and CUDA graphs
    hold them): cross K/V sets pooled per batch size, self-attention cache sets pooled per (rows, capacity), the
    steering set of each step shape, the greedy rings of each (rows, queue) (host-mapped, not device, memory)."""

    def __init__(self, dims: ModelDims, dtype: Any, device: str, device_id: int,
                 choice: Callable[[int], tuple[Any, Any]] | None):
        self.dims, self.dtype, self.device, self.device_id = dims, dtype, device, device_id
        self._choice = choice  # rows -> a selecting decoder's (best token, log-probability) outputs
        self.cross = Pool(self._make_cross)
        self.cache = Pool(self._make_cache)
        self._steering: dict[tuple[int, int, int], Steering] = {}
        self._streams: dict[tuple[int, int], GreedyStream] = {}

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, self.device, self.device_id)

    def zeros(self, shape: tuple[int, ...], dtype: Any) -> Any:
        value = self.empty(shape, dtype)
        value.update_inplace(np.zeros(shape, dtype))  # fresh device memory may hold NaN bit patterns
        return value

    def _make_cross(self, key: tuple) -> list[Any]:
        (slots,) = key
        d = self.dims
        shape = (slots, d.n_text_head, d.n_audio_ctx, d.text_head_dim)
        # zeroed once: a slot no window was encoded into is still stepped (whole-pool steps), and memory that
        # onnxruntime's process-wide arena recycles (an fp32 backend's, read as fp16) holds NaN bit patterns
        return [self.zeros(shape, self.dtype) for _ in range(2 * d.n_text_layer)]

    def _make_cache(self, key: tuple) -> list[Any]:
        rows, capacity = key
        d = self.dims
        shape = (rows, d.n_text_head, capacity, d.text_head_dim)
        # zeroed once: afterwards a reused set holds finite keys/values of an earlier decode, which the mask
        # hides (their softmax weight is exactly 0), so they never need clearing again
        return [self.zeros(shape, self.dtype) for _ in range(2 * d.n_text_layer)]

    def steering(self, rows: int, n_new: int = 1, n_logits: int = 1) -> Steering:
        """The steering set of a step shape: (rows, 1, 1) a one-token step's, others a prompt's."""
        key = (rows, n_new, n_logits)
        steering = self._steering.get(key)
        if steering is None:
            shapes = {graph_io.TOKENS: (rows, n_new), graph_io.OFFSETS: (rows,), graph_io.LOGIT_POSITIONS: (n_logits,)}
            values = {name: self.zeros(shape, np.int64) for name, shape in shapes.items()}
            logits = self.empty((rows, n_logits, self.dims.n_vocab), np.float32)
            choice = None
            if self._choice is not None:  # a prompt's choice is never read, but its outputs need fixed buffers too
                choice = self._choice(rows) if key[1:] == (1, 1) else (
                    self.zeros((rows, n_logits), np.int64), self.zeros((rows, n_logits), np.float32))
            steering = self._steering[key] = Steering(values, logits, choice)
        return steering

    def stream(self, rows: int, queue: int) -> GreedyStream:
        """The greedy ring of (rows, queue), in host-mapped memory (ordinary host memory for the CPU provider);
        HostMappedError where the CUDA runtime cannot allocate it."""
        stream = self._streams.get((rows, queue))
        if stream is None:
            memory = HostMemory if self.device == "cpu" else HostMapped
            stream = self._streams[rows, queue] = GreedyStream(memory, self.device, self.device_id, rows, queue)
        return stream

    def streams(self) -> list[tuple[int, int]]:
        """(rows, queue) of every greedy ring made."""
        return sorted(self._streams)

    def clear(self) -> None:
        self.cross.clear()
        self.cache.clear()
        self._steering.clear()
        self._streams.clear()
