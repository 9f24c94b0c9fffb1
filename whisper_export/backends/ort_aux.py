"""The bundle's small graphs on CUDA, next to the decoder: cache_reorder.onnx (a beam search's cache reorder,
device to device), greedy_select.onnx (the greedy token and its log-probability from the logits the decoder left
on the device, so 12 bytes per row reach the host instead of 4 x n_vocab), top_select.onnx (a beam search's
candidates from those logits: 12 x TOP_K bytes per row) and timestamp_rules.onnx (the greedy token under the
timestamp rules, from those logits and each row's timestamp state, and the state after it).

All run on fixed device buffers: one IO binding per buffer combination, made once, whose small inputs (the
reorder index, the logit bias, the timestamp state) are updated in place; with CUDA graphs wanted, each binding is captured once
and replayed. Uncaptured, their few small kernels cost more in onnxruntime's per-node overhead than on the GPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from whisper_export import graph_io
from whisper_export.backends.ort_buffers import DeviceBias
from whisper_export.backends.ort_runs import CapturedRuns


def _captured(open_session: Callable[[bool], Any], graph_ids: itertools.count, graphs: bool) -> CapturedRuns:
    """Runs of a small graph's session: a capturing one where onnxruntime opens it so, else a plain one."""
    if graphs:
        try:
            return CapturedRuns(open_session(True), graph_ids, True, lambda _error: open_session(False))
        except Exception:  # noqa: BLE001 - a session that cannot capture: plain runs
            pass
    return CapturedRuns(open_session(False), graph_ids, False, lambda _error: open_session(False))


class AuxGraphs:
    """The small graphs of one backend, each opened on first use: "reorder" (cache_reorder.onnx) and the
    four that pick from the logits a decoder step left on the device, "select" (greedy_select.onnx), "top"
    (top_select.onnx), "limited" (timestamp_rules.onnx) and "top_limited" (timestamp_top.onnx)."""

    # each picking graph's inputs after the logits and the bias, and its outputs: (tokens, log-probabilities)
    # read back per row, then any other
    _PICKS = {
        "select": ((), (graph_io.BEST_TOKEN, graph_io.BEST_LOGPROB)),
        "top": ((), (graph_io.TOP_TOKENS, graph_io.TOP_LOGPROBS)),
        "limited": ((graph_io.TIMESTAMP_STATE,),
                    (graph_io.BEST_TOKEN, graph_io.BEST_LOGPROB, graph_io.NEXT_TIMESTAMP_STATE)),
        "top_limited": ((graph_io.TIMESTAMP_STATE,), (graph_io.TOP_TOKENS, graph_io.TOP_LOGPROBS)),
    }

    def __init__(self, open_session: Callable[..., Any], device_zeros: Callable[[tuple, Any], Any],
                 graph_ids: itertools.count, graphs: bool, n_layer: int, n_vocab: int):
        self._open, self._zeros, self._graph_ids, self._graphs = open_session, device_zeros, graph_ids, graphs
        self._names = list(zip(graph_io.self_inputs(n_layer), graph_io.self_outputs(n_layer)))
        self._n_layer, self._n_vocab = n_layer, n_vocab
        self._runs: dict[str, CapturedRuns] = {}  # graph -> its runs, once opened
        self._buffers: dict[tuple, Any] = {}  # (what, rows) -> device buffers of that row count
        self._bias: DeviceBias | None = None

    def opened(self, which: str) -> CapturedRuns | None:
        """The runs of a small graph ("reorder", "select", "top", "limited"), None until it is first used."""
        return self._runs.get(which)

    def _session_runs(self, which: str, inputs: list[str], outputs: list[str]) -> CapturedRuns:
        if which not in self._runs:
            self._runs[which] = _captured(lambda graph: self._open(which, inputs, outputs, graph), self._graph_ids,
                                          self._graphs)
        return self._runs[which]

    def _buffer(self, what: str, rows: int, make: Callable[[], Any]) -> Any:
        key = (what, rows)
        if key not in self._buffers:
            self._buffers[key] = make()
        return self._buffers[key]

    def reorder(self, key: tuple, source: list[Any], destination: list[Any], index: np.ndarray,
                wait: bool = True) -> None:
        """destination := source with row r taken from row index[r], every cache; key names the two sets.
        wait=False: queued only (the next run on the same stream reads destination after it)."""
        runs = self._session_runs("reorder", graph_io.reorder_inputs(self._n_layer), graph_io.self_outputs(self._n_layer))
        value = self._buffer("index", len(index), lambda: self._zeros((len(index),), np.int64))
        value.update_inplace(np.ascontiguousarray(index, dtype=np.int64))

        def bind(binding: Any) -> None:
            binding.bind_ortvalue_input(graph_io.CACHE_INDEX, value)
            for (name_in, name_out), src, dst in zip(self._names, source, destination):
                binding.bind_ortvalue_input(name_in, src)
                binding.bind_ortvalue_output(name_out, dst)

        runs.run(key, bind, wait)

    def device_bias(self, bias: np.ndarray | None) -> Any:
        """The device copy of a logit bias (n_vocab,): one buffer, rewritten only when the bias changes;
        None leaves its value as it is (a step whose choice is not used)."""
        if self._bias is None:
            self._bias = DeviceBias(self._zeros((self._n_vocab,), np.float32))
        return self._bias.value if bias is None else self._bias.set(bias)

    def choice_buffers(self, rows: int) -> tuple[Any, Any]:
        """Device outputs (rows, 1) of a greedy choice: the token (int64) and its log-probability (float32)."""
        return self._buffer("choice", rows, lambda: (self._zeros((rows, 1), np.int64), self._zeros((rows, 1), np.float32)))

    def _pick(self, which: str, logits: Any, rows: int, bias: np.ndarray, outputs: tuple[Any, Any],
              extra: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Run a picking graph on device logits (rows, 1, n_vocab) + bias (and extra inputs) into outputs (rows,
        1, ...) and return both for the one logit position (views copied: the buffers may be host memory)."""
        names = self._PICKS[which][1]
        runs = self._picking_runs(which)
        device_bias = self.device_bias(bias)

        def bind(binding: Any) -> None:
            binding.bind_ortvalue_input(graph_io.SELECT_LOGITS, logits)
            binding.bind_ortvalue_input(graph_io.LOGIT_BIAS, device_bias)
            for name, value in extra.items():
                binding.bind_ortvalue_input(name, value)
            for name, value in zip(names, outputs):
                binding.bind_ortvalue_output(name, value)

        runs.run((which, rows, id(logits)), bind)
        tokens, logprobs = (value.numpy()[:, 0].copy() for value in outputs[:2])
        return tokens, logprobs

    def _picking_runs(self, which: str) -> CapturedRuns:
        extra, names = self._PICKS[which]
        return self._session_runs(which, [graph_io.SELECT_LOGITS, graph_io.LOGIT_BIAS, *extra], list(names))

    def select(self, logits: Any, rows: int, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(best token (R,) int64, its log-probability (R,) float32) from device logits (rows, 1, n_vocab)."""
        return self._pick("select", logits, rows, bias, self.choice_buffers(rows), {})

    def top(self, logits: Any, rows: int, bias: np.ndarray, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(candidates (R, TOP_K) int64, their log-probabilities (R, TOP_K) float32), best first, from device
        logits (rows, 1, n_vocab) + bias; with each row's timestamp state (R, 3), under the timestamp rules
        (timestamp_top.onnx)."""
        shape = (rows, 1, graph_io.TOP_K)
        outputs = self._buffer("top", rows, lambda: (self._zeros(shape, np.int64), self._zeros(shape, np.float32)))
        if state is None:
            return self._pick("top", logits, rows, bias, outputs, {})
        return self._pick("top_limited", logits, rows, bias, outputs, {graph_io.TIMESTAMP_STATE: self._state(rows, state)})

    def _state(self, rows: int, state: np.ndarray) -> Any:
        """The device copy of the timestamp state (rows, 3), updated in place."""
        value = self._buffer("state", rows, lambda: self._zeros((rows, 3), np.int64))
        value.update_inplace(np.ascontiguousarray(state, dtype=np.int64))
        return value

    def limited(self, logits: Any, rows: int, bias: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(best token (R,) int64, its log-probability (R,) float32) under the timestamp rules of each row's
        timestamp state (R, 3), from device logits (rows, 1, n_vocab) + bias."""
        next_state = self._buffer("next_state", rows, lambda: self._zeros((rows, 3), np.int64))
        return self._pick("limited", logits, rows, bias, (*self.choice_buffers(rows), next_state),
                          {graph_io.TIMESTAMP_STATE: self._state(rows, state)})

    def queue_limited(self, logits: Any, key: tuple, bind_ring: Callable[[Any], None]) -> None:
        """Queue timestamp_rules.onnx on device logits (rows, 1, n_vocab) + the device bias as it is, its state
        in and its token, log-probability and next state out bound by bind_ring (a streamed step's slots in the
        host-mapped ring, ort_greedy.py); key names those slots. Nothing is waited for."""
        runs = self._picking_runs("limited")
        device_bias = self.device_bias(None)

        def bind(binding: Any) -> None:
            binding.bind_ortvalue_input(graph_io.SELECT_LOGITS, logits)
            binding.bind_ortvalue_input(graph_io.LOGIT_BIAS, device_bias)
            bind_ring(binding)

        runs.run(("limited-ring", *key, id(logits)), bind, wait=False)
