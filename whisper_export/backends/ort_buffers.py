"""Handles and device-buffer pools of the onnxruntime backend (see backends/onnxruntime.py for the design)."""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field
from typing import Any


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
    values: list[Any]  # numpy arrays (CPU) or OrtValues on the device (CUDA), in graph_io.cross_inputs order
    n_audio: int
    lease: Lease | None = field(default=None, repr=False)  # CUDA: the pooled buffers the values live in


@dataclass
class CacheHandle:
    values: list[Any]  # in graph_io.self_inputs order
    rows: int
    capacity: int
    spare: list[Any] | None = field(default=None)  # CUDA: the output buffers of the next step
    # CUDA: the pooled pair of sets [A, B] and which one `values` is (0: A, 1: B)
    lease: tuple[Lease, Lease] | None = field(default=None, repr=False)
    side: int = 0

    def swapped(self) -> "CacheHandle":
        """CUDA: the same pair with the other set current (after a step or a reorder wrote into it)."""
        assert self.spare is not None and self.lease is not None, "CUDA caches come in pairs (new_cache)"
        return CacheHandle(self.spare, self.rows, self.capacity, self.values, self.lease, 1 - self.side)

    def sets_key(self) -> tuple[int, int, int, int]:
        """CUDA: (rows, capacity, current set id, spare set id): what a binding over this pair is bound to."""
        assert self.lease is not None, "CUDA caches come from the pool (new_cache)"
        return self.rows, self.capacity, self.lease[self.side].buffers.id, self.lease[1 - self.side].buffers.id


@dataclass
class Steering:
    """Fixed device inputs of the one-token step for one row count, updated in place every step."""

    values: dict[str, Any]  # graph_io name -> OrtValue
    logits: Any  # OrtValue (rows, 1, n_vocab) float32 on the device
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

