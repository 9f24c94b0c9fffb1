"""Handles, device-buffer pools and the cache reorder of the onnxruntime backend (design: backends/onnxruntime.py)."""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


@dataclass
class Steering:
    """Fixed device inputs of the one-token step for one row count, updated in place every step."""

    values: dict[str, Any]  # graph_io name -> OrtValue
    logits: Any  # OrtValue (rows, 1, n_vocab) float32 on the device


class CacheReorder:
    """cache_reorder.onnx on CUDA: destination set := source set with rows gathered by an index.

    Each (source set, destination set) key gets one IO binding whose index tensor is updated in place and,
    when graphs are wanted, one captured CUDA graph: uncaptured, the 2 x n_layer small Gathers cost more in
    onnxruntime's per-node overhead than on the GPU. A capture that fails drops to plain runs.
    """

    def __init__(self, open_session, device_zeros, graph_ids, graphs: bool, self_in: list[str], self_out: list[str]):
        self._open, self._zeros, self._graph_ids = open_session, device_zeros, graph_ids
        self._names = list(zip(self_in, self_out))
        self._bindings: dict[tuple, tuple[Any, Any, Any]] = {}  # key -> (IOBinding, index OrtValue, RunOptions)
        self.graphs = graphs
        self.session = self._start()

    def _start(self):
        if self.graphs:
            try:
                return self._open(True)
            except Exception:  # noqa: BLE001 - a session that cannot capture: plain runs
                self.graphs = False
        return self._open(False)

    def run(self, key: tuple, source: list[Any], destination: list[Any], index: np.ndarray) -> None:
        import onnxruntime as ort

        entry = self._bindings.get(key)
        first = entry is None
        if entry is None:
            value = self._zeros((len(index),), np.int64)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input("in_cache_index", value)
            for (name_in, name_out), src, dst in zip(self._names, source, destination):
                binding.bind_ortvalue_input(name_in, src)
                binding.bind_ortvalue_output(name_out, dst)
            options = ort.RunOptions()
            if self.graphs:
                options.add_run_config_entry("gpu_graph_id", str(next(self._graph_ids)))
            entry = self._bindings[key] = (binding, value, options)
        binding, value, options = entry
        value.update_inplace(np.ascontiguousarray(index, dtype=np.int64))
        try:
            if first and self.graphs:  # plain runs first, so that nothing is allocated under capture
                skip = ort.RunOptions()
                skip.add_run_config_entry("gpu_graph_id", "-1")
                for _ in range(2):
                    self.session.run_with_iobinding(binding, skip)
            self.session.run_with_iobinding(binding, options)
        except Exception:
            if not self.graphs:
                raise
            self.graphs = False
            self._bindings.clear()
            self.session = self._start()
            self.run(key, source, destination, index)
