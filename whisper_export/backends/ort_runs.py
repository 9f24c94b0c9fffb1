"""Runs of an onnxruntime session over fixed IO bindings, captured in CUDA graphs where onnxruntime allows: the
decoder's one-token steps and the bundle's two small graphs (backends/onnxruntime.py, ort_aux.py)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

# the run option that makes Run return before the device has finished (CUDA EP: no stream synchronize); a later
# run on the same stream still runs after it, and a run without it waits for both
NO_SYNC = "disable_synchronize_execution_providers"


class CapturedRuns:
    """run(key, bind) makes one IO binding per key (bind(binding) binds every input and output to buffers that
    outlive it) and runs it; with graphs, a new binding runs twice outside any graph (lazy allocations and
    kernel set-up never happen under capture), is captured on its third run and replayed from then on.

    A capture refused at run time leaves the session unusable: reopen(error) returns the plain session to go on
    with, every binding is made again on it, and the run is redone.
    """

    def __init__(self, session: Any, graph_ids: itertools.count, graphs: bool, reopen: Callable[[Exception], Any]):
        import onnxruntime as ort

        self.session, self.graphs = session, graphs
        self._graph_ids, self._reopen = graph_ids, reopen
        self._bindings: dict[tuple, tuple[Any, Any, Any]] = {}  # key -> (IOBinding, RunOptions: waits, queues)
        self._skip_graph = ort.RunOptions()  # a run outside any graph in a capturing session
        self._skip_graph.add_run_config_entry("gpu_graph_id", "-1")

    def __len__(self) -> int:
        return len(self._bindings)

    def run(self, key: tuple, bind: Callable[[Any], None], wait: bool = True) -> None:
        """wait=False: return before the device has finished (the bindings' outputs are then read only after
        a later run that waits)."""
        import onnxruntime as ort

        entry = self._bindings.get(key)
        fresh = entry is None
        if entry is None:
            binding = self.session.io_binding()
            bind(binding)
            waits, queues = ort.RunOptions(), ort.RunOptions()
            queues.add_run_config_entry(NO_SYNC, "1")
            if self.graphs:
                graph_id = str(next(self._graph_ids))
                for options in (waits, queues):
                    options.add_run_config_entry("gpu_graph_id", graph_id)
            entry = self._bindings[key] = (binding, waits, queues)
        binding, waits, queues = entry
        try:
            if fresh and self.graphs:
                for _ in range(2):
                    self.session.run_with_iobinding(binding, self._skip_graph)
                wait = True  # the capturing run waits
            self.session.run_with_iobinding(binding, waits if wait else queues)
        except Exception as e:  # noqa: BLE001 - a capture refused at run time: plain runs from now on
            if not self.graphs:
                raise
            self.graphs = False
            self._bindings.clear()
            self.session = self._reopen(e)
            self.run(key, bind, wait)
