"""The bundle's small graphs on CUDA, next to the decoder: cache_reorder.onnx (a beam search's cache reorder,
device to device), greedy_select.onnx (the greedy token and its log-probability from the logits the decoder left
on the device, so 12 bytes per row reach the host instead of 4 x n_vocab), top_select.onnx (a beam search's
candidates from those logits: 12 x TOP_K bytes per row) and timestamp_select.onnx (the greedy token under the
timestamp rules, from those logits and each row's limits).

Both run on fixed device buffers: one IO binding per buffer combination, made once, whose small inputs (the
reorder index, the logit bias) are updated in place; with CUDA graphs wanted, each binding is captured once
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
    """The small graphs of one backend (reorder, select, top, limited), each opened on first use."""

    def __init__(self, open_session: Callable[..., Any], device_zeros: Callable[[tuple, Any], Any],
                 graph_ids: itertools.count, graphs: bool, n_layer: int, n_vocab: int):
        self._open, self._zeros, self._graph_ids, self._graphs = open_session, device_zeros, graph_ids, graphs
        self._names = list(zip(graph_io.self_inputs(n_layer), graph_io.self_outputs(n_layer)))
        self._n_layer, self._n_vocab = n_layer, n_vocab
        self._reorder: CapturedRuns | None = None
        self._select: CapturedRuns | None = None
        self._top: CapturedRuns | None = None
        self._limited: CapturedRuns | None = None
        self._limits: dict[int, Any] = {}  # rows -> the timestamp limits (rows, 2) on the device
        self._tops: dict[int, tuple[Any, Any]] = {}  # rows -> (candidates, their log-probabilities) on the device
        self._index: dict[int, Any] = {}  # rows -> the reorder index on the device
        self._best: dict[int, tuple[Any, Any]] = {}  # rows -> (best token, its log-probability) on the device
        self._bias: DeviceBias | None = None

    def reorder(self, key: tuple, source: list[Any], destination: list[Any], index: np.ndarray) -> None:
        """destination := source with row r taken from row index[r], every cache; key names the two sets."""
        if self._reorder is None:
            inputs = graph_io.reorder_inputs(self._n_layer)
            outputs = graph_io.self_outputs(self._n_layer)
            self._reorder = _captured(lambda graph: self._open("reorder", inputs, outputs, graph),
                                      self._graph_ids, self._graphs)
        rows = len(index)
        if rows not in self._index:
            self._index[rows] = self._zeros((rows,), np.int64)
        value = self._index[rows]
        value.update_inplace(np.ascontiguousarray(index, dtype=np.int64))

        def bind(binding: Any) -> None:
            binding.bind_ortvalue_input(graph_io.CACHE_INDEX, value)
            for (name_in, name_out), src, dst in zip(self._names, source, destination):
                binding.bind_ortvalue_input(name_in, src)
                binding.bind_ortvalue_output(name_out, dst)

        self._reorder.run(key, bind)

    def device_bias(self, bias: np.ndarray | None) -> Any:
        """The device copy of a logit bias (n_vocab,): one buffer, rewritten only when the bias changes;
        None leaves its value as it is (a step whose choice is not used)."""
        if self._bias is None:
            self._bias = DeviceBias(self._zeros((self._n_vocab,), np.float32))
        return self._bias.value if bias is None else self._bias.set(bias)

    def choice_buffers(self, rows: int) -> tuple[Any, Any]:
        """Device outputs (rows, 1) of a greedy choice: the token (int64) and its log-probability (float32)."""
        if rows not in self._best:
            self._best[rows] = (self._zeros((rows, 1), np.int64), self._zeros((rows, 1), np.float32))
        return self._best[rows]

    def select(self, logits: Any, rows: int, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(best token (R,) int64, its log-probability (R,) float32) from device logits (rows, 1, n_vocab)."""
        if self._select is None:
            inputs, outputs = [graph_io.SELECT_LOGITS, graph_io.LOGIT_BIAS], [graph_io.BEST_TOKEN, graph_io.BEST_LOGPROB]
            self._select = _captured(lambda graph: self._open("select", inputs, outputs, graph),
                                     self._graph_ids, self._graphs)
        device_bias = self.device_bias(bias)
        best, logprob = self.choice_buffers(rows)

        def bind(binding: Any) -> None:
            binding.bind_ortvalue_input(graph_io.SELECT_LOGITS, logits)
            binding.bind_ortvalue_input(graph_io.LOGIT_BIAS, device_bias)
            binding.bind_ortvalue_output(graph_io.BEST_TOKEN, best)
            binding.bind_ortvalue_output(graph_io.BEST_LOGPROB, logprob)

        self._select.run(("select", rows, id(logits)), bind)
        return best.numpy()[:, 0].copy(), logprob.numpy()[:, 0].copy()  # views when the buffers are in host memory

    def top(self, logits: Any, rows: int, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(candidates (R, TOP_K) int64, their log-probabilities (R, TOP_K) float32), best first, from device
        logits (rows, 1, n_vocab) + bias."""
        if self._top is None:
            inputs, outputs = [graph_io.SELECT_LOGITS, graph_io.LOGIT_BIAS], [graph_io.TOP_TOKENS, graph_io.TOP_LOGPROBS]
            self._top = _captured(lambda graph: self._open("top", inputs, outputs, graph), self._graph_ids, self._graphs)
        device_bias = self.device_bias(bias)
        if rows not in self._tops:
            shape = (rows, 1, graph_io.TOP_K)
            self._tops[rows] = (self._zeros(shape, np.int64), self._zeros(shape, np.float32))
        tokens, logprobs = self._tops[rows]

        def bind(binding: Any) -> None:
            binding.bind_ortvalue_input(graph_io.SELECT_LOGITS, logits)
            binding.bind_ortvalue_input(graph_io.LOGIT_BIAS, device_bias)
            binding.bind_ortvalue_output(graph_io.TOP_TOKENS, tokens)
            binding.bind_ortvalue_output(graph_io.TOP_LOGPROBS, logprobs)

        self._top.run(("top", rows, id(logits)), bind)
        return tokens.numpy()[:, 0].copy(), logprobs.numpy()[:, 0].copy()  # views when the buffers are in host memory

    def limited(self, logits: Any, rows: int, bias: np.ndarray, limits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(best token (R,) int64, its log-probability (R,) float32) under the timestamp rules' limits (R, 2),
        from device logits (rows, 1, n_vocab) + bias."""
        if self._limited is None:
            inputs = [graph_io.SELECT_LOGITS, graph_io.LOGIT_BIAS, graph_io.TIMESTAMP_LIMITS]
            outputs = [graph_io.BEST_TOKEN, graph_io.BEST_LOGPROB]
            self._limited = _captured(lambda graph: self._open("limited", inputs, outputs, graph), self._graph_ids,
                                      self._graphs)
        device_bias = self.device_bias(bias)
        if rows not in self._limits:
            self._limits[rows] = self._zeros((rows, 2), np.int64)
        device_limits = self._limits[rows]
        device_limits.update_inplace(np.ascontiguousarray(limits, dtype=np.int64))
        best, logprob = self.choice_buffers(rows)

        def bind(binding: Any) -> None:
            binding.bind_ortvalue_input(graph_io.SELECT_LOGITS, logits)
            binding.bind_ortvalue_input(graph_io.LOGIT_BIAS, device_bias)
            binding.bind_ortvalue_input(graph_io.TIMESTAMP_LIMITS, device_limits)
            binding.bind_ortvalue_output(graph_io.BEST_TOKEN, best)
            binding.bind_ortvalue_output(graph_io.BEST_LOGPROB, logprob)

        self._limited.run(("limited", rows, id(logits)), bind)
        return best.numpy()[:, 0].copy(), logprob.numpy()[:, 0].copy()  # views when the buffers are in host memory
