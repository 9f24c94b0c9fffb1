"""The steps of the onnxruntime backend whose choice is made where the logits are (backends/onnxruntime.py holds
the sessions, buffers and plain steps): a greedy choice, a beam's candidates and the greedy choice under the
timestamp rules each pick from logits left on the device by a one-token step, and greedy steps stream through the
host-mapped ring (ort_greedy.py). On the CPU, and where a bundle lacks the small graph, Backend's numpy defaults
do it on host logits.

DevicePicking is OnnxRuntimeBackend's base: its methods use the backend's steps (_reorder, _step, _run_step,
_run_cpu, _after_step), buffers and small graphs (_aux_graphs), and nothing else of it.
"""

from __future__ import annotations

import numpy as np

from whisper_export import graph_io
from whisper_export.backends.base import Backend
from whisper_export.backends.host_mapped import HostMappedError
from whisper_export.backends.ort_buffers import CacheHandle as _Cache
from whisper_export.backends.ort_buffers import CrossHandle as _Cross


class DevicePicking(Backend):
    @staticmethod
    def _one_token(tokens: np.ndarray) -> bool:
        return tokens.ndim == 2 and tokens.shape[1] == 1

    def _check_picking_step(self, tokens, offsets, cache_index, logit_bias, cache: _Cache, cross: _Cross) -> None:
        """The checks of a one-token step whose logits something picks from (decode_best, decode_top,
        decode_best_limited)."""
        self.check_handles(cache, cross, _Cache, _Cross)
        self.check_step(tokens, offsets, cache_index, np.zeros(1, np.int64), cache.rows, cache.capacity, cross.n_audio)
        self.check_logit_bias(logit_bias)

    def _step_keeping_logits(self, tokens, offsets, cache_index, cache: _Cache, cross: _Cross,
                             logit_bias: np.ndarray | None = None, picked_by_aux: bool = False) -> _Cache:
        """CUDA: a beam's cache reorder, then a one-token step whose logits stay in the steering buffer of the
        row count (logit_bias: a selecting decoder's, for its own choice; None leaves it as it is). picked_by_aux:
        a small graph picks from the logits next, so on a shared stream the step is only queued (the small
        graph's run waits for both). Returns the cache the step read (_after_step gives the one it wrote)."""
        cache = self._reorder(cache, cache_index)
        self._step(tokens, offsets, cache, cross, fetch=False, logit_bias=logit_bias,
                   wait=not (picked_by_aux and self.shared_stream))
        return cache

    def decode_best(self, tokens, offsets, cache_index, logit_bias, cache: _Cache, cross: _Cross):
        """CUDA: the step leaves its logits on the device and greedy_select.onnx picks from them there; a decoder
        that selects itself (attention="onnxruntime") returns its own choice from the same run, on CPU too."""
        host_picks = not self.selects and (self.device == "cpu" or tokens.shape[0] < self.select_min_rows)
        if not self._one_token(tokens) or host_picks:
            return super().decode_best(tokens, offsets, cache_index, logit_bias, cache, cross)
        self._check_picking_step(tokens, offsets, cache_index, logit_bias, cache, cross)
        if self.device == "cpu":
            outputs, cache = self._run_cpu(tokens, offsets, cache_index, np.zeros(1, np.int64), cache, cross, logit_bias)
            return outputs[-2][:, 0], outputs[-1][:, 0], cache
        steering = self.buffers.steering(cache.rows)
        cache = self._step_keeping_logits(tokens, offsets, cache_index, cache, cross, logit_bias,
                                          picked_by_aux=steering.choice is None)
        if steering.choice is not None:
            best, logprobs = (value.numpy()[:, 0].copy() for value in steering.choice)  # a view in host memory
        else:
            best, logprobs = self._aux_graphs().select(steering.logits, cache.rows, logit_bias)
        return best, logprobs, self._after_step(cache)

    def decode_top(self, tokens, offsets, cache_index, logit_bias, k: int, cache: _Cache, cross: _Cross):
        """CUDA, a bundle with top_select.onnx and k <= TOP_K: the step leaves its logits on the device and
        top_select.onnx picks each row's candidates there (R x TOP_K x 12 bytes reach the host instead of
        R x n_vocab x 4); else the host picks them from the logits."""
        if self._host_tops(self.bundle.top_path, tokens, k):
            return super().decode_top(tokens, offsets, cache_index, logit_bias, k, cache, cross)
        return self._device_top(tokens, offsets, cache_index, logit_bias, None, k, cache, cross)

    def decode_top_limited(self, tokens, offsets, cache_index, logit_bias, state, rules, k: int, cache: _Cache,
                           cross: _Cross):
        """decode_top under the timestamp rules of each row's state: on CUDA with timestamp_top.onnx in the
        bundle, on the device; else on host logits."""
        if self._host_tops(self.bundle.top_limited_path, tokens, k):
            return super().decode_top_limited(tokens, offsets, cache_index, logit_bias, state, rules, k, cache, cross)
        return self._device_top(tokens, offsets, cache_index, logit_bias, state, k, cache, cross)

    def _host_tops(self, graph, tokens, k: int) -> bool:
        return self.device == "cpu" or graph is None or not self._one_token(tokens) or not 1 <= k <= graph_io.TOP_K

    def _device_top(self, tokens, offsets, cache_index, logit_bias, state, k: int, cache: _Cache, cross: _Cross):
        def pick(logits, rows):
            top, logprobs = self._aux_graphs().top(logits, rows, logit_bias, state)
            return top[:, :k], logprobs[:, :k]

        return self._picked_on_device(tokens, offsets, cache_index, logit_bias, state, cache, cross, pick)

    def _picked_on_device(self, tokens, offsets, cache_index, logit_bias, state, cache: _Cache, cross: _Cross,
                          pick):
        """CUDA: the checks (and of the timestamp state, when there is one), then a one-token step whose logits
        pick(logits, rows) -> (tokens, log-probabilities) picks from on the device; and the cache it wrote."""
        self._check_picking_step(tokens, offsets, cache_index, logit_bias, cache, cross)
        if state is not None:
            self.check_timestamp_state(state, cache.rows)
        cache = self._step_keeping_logits(tokens, offsets, cache_index, cache, cross, picked_by_aux=True)
        chosen, logprobs = pick(self.buffers.steering(cache.rows).logits, cache.rows)
        return chosen, logprobs, self._after_step(cache)

    def decode_best_limited(self, tokens, offsets, cache_index, logit_bias, state, rules, cache: _Cache,
                            cross: _Cross):
        """CUDA, a bundle with timestamp_rules.onnx: the step leaves its logits on the device and the graph
        applies the timestamp rules of each row's state and picks there; else the host does it on the logits."""
        if self.device == "cpu" or self.bundle.limited_path is None or not self._one_token(tokens):
            return super().decode_best_limited(tokens, offsets, cache_index, logit_bias, state, rules, cache, cross)
        return self._picked_on_device(tokens, offsets, cache_index, logit_bias, state, cache, cross,
                                      lambda logits, rows: self._aux_graphs().limited(logits, rows, logit_bias, state))

    def _greedy_stream(self, tokens, offsets, logit_bias, cache: _Cache, cross: _Cross, steps: int):
        """The checks of streamed greedy steps, then the ring of the row count; None (and greedy_queue 0 from
        now on) where the CUDA runtime gives no host-mapped memory."""
        self.check_greedy(tokens, steps)
        self.check_handles(cache, cross, _Cache, _Cross)
        rows = cache.rows
        # the last step's offsets bound every step's
        self.check_step(tokens, offsets + (steps - 1), np.arange(rows, dtype=np.int64), np.zeros(1, np.int64),
                        rows, cache.capacity, cross.n_audio)
        self.check_logit_bias(logit_bias)
        try:
            return self.buffers.stream(rows, self.greedy_queue)
        except HostMappedError as e:  # no pinned memory: one step per call from now on
            self.greedy_queue, self.greedy_error = 0, str(e)
            return None

    def decode_greedy(self, tokens, offsets, logit_bias, cache: _Cache, cross: _Cross, steps: int,
                      stop_token: int | None = None):
        """CUDA, a decoder that chooses greedily: the steps streamed through a host-mapped ring, greedy_queue of
        them queued on the device at a time, each reading the previous one's choice there (ort_greedy.py); the
        host reads each choice as it lands and stops queueing once every row has chosen stop_token."""
        stream = None
        if self.device == "cuda" and self.selects and self.greedy_queue >= 1:
            stream = self._greedy_stream(tokens, offsets, logit_bias, cache, cross, steps)
        if stream is None:
            return super().decode_greedy(tokens, offsets, logit_bias, cache, cross, steps, stop_token)
        steering = self.buffers.steering(cache.rows)
        bias = self._aux_graphs().device_bias(logit_bias)

        def bind(binding, s: int) -> None:
            stream.bind_step(binding, s)
            binding.bind_ortvalue_input(graph_io.LOGIT_POSITIONS, steering.values[graph_io.LOGIT_POSITIONS])
            binding.bind_ortvalue_input(graph_io.LOGIT_BIAS, bias)
            binding.bind_ortvalue_output(graph_io.LOGITS, steering.logits)

        def queue_step(s: int) -> None:
            self._run_step(lambda binding: bind(binding, s), cache, cross, "greedy", stream.queue, s, wait=False)

        chosen, logprobs = stream.run(queue_step, tokens, offsets, steps, stop_token)
        return chosen, logprobs, cache

    def decode_greedy_limited(self, tokens, offsets, logit_bias, state, rules, cache: _Cache, cross: _Cross,
                              steps: int, stop_token: int | None = None):
        """CUDA, a decoder that appends to its cache in place, a bundle with timestamp_rules.onnx and one stream
        for the sessions: streamed as decode_greedy, each step a decoder step and timestamp_rules.onnx on its
        logits queued one after the other on the stream, the timestamp state moving on in the ring."""
        stream = None
        if (self.device == "cuda" and self.in_place and self.shared_stream and self.greedy_queue >= 1
                and self.bundle.limited_path is not None):
            self.check_timestamp_state(state, cache.rows)
            stream = self._greedy_stream(tokens, offsets, logit_bias, cache, cross, steps)
        if stream is None:
            return super().decode_greedy_limited(tokens, offsets, logit_bias, state, rules, cache, cross, steps,
                                                 stop_token)
        steering = self.buffers.steering(cache.rows)
        aux = self._aux_graphs()
        bias = aux.device_bias(logit_bias)

        def bind(binding, s: int) -> None:
            stream.bind_inputs(binding, s)
            binding.bind_ortvalue_input(graph_io.LOGIT_POSITIONS, steering.values[graph_io.LOGIT_POSITIONS])
            binding.bind_ortvalue_output(graph_io.LOGITS, steering.logits)
            if steering.choice is not None:  # a selecting decoder's own choice, not the one under the rules
                binding.bind_ortvalue_input(graph_io.LOGIT_BIAS, bias)
                binding.bind_ortvalue_output(graph_io.BEST_TOKEN, steering.choice[0])
                binding.bind_ortvalue_output(graph_io.BEST_LOGPROB, steering.choice[1])

        def queue_step(s: int) -> None:
            self._run_step(lambda binding: bind(binding, s), cache, cross, "greedy-limited", stream.queue, s,
                           wait=False)
            aux.queue_limited(steering.logits, (cache.rows, stream.queue, s),
                              lambda binding: stream.bind_limited(binding, s))

        chosen, logprobs = stream.run(queue_step, tokens, offsets, steps, stop_token, state)
        return chosen, logprobs, cache
