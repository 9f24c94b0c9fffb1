"""The onnxruntime backend on CUDA: steps that pick where the logits are (ort_cuda_steps.py has the rest).

A one-token step over a whole cache leaves its logits on the device, and what the request picks is picked
there: the greedy choice by the decoder's own graph (attention="onnxruntime") or greedy_select.onnx, a beam's
candidates by top_select.onnx, and either under the timestamp rules by timestamp_rules.onnx / timestamp_top.onnx
(12 bytes, or TOP_K x 12, per row reach the host instead of 4 x n_vocab). Streamed greedy steps (pick.steps > 1)
go through a ring in host-mapped memory (ort_greedy.py): each step reads its token from, and writes its choice
into, the ring, greedy_queue of them queued on the device, the host reading each choice as it lands without
synchronising. Where the bundle lacks a small graph, for part of a cache, and for the logits, Backend.step's
numpy picking serves.
"""

from __future__ import annotations

import numpy as np

from whisper_export import graph_io
from whisper_export.backends.host_mapped import HostMappedError
from whisper_export.backends.ort_buffers import CacheHandle, CrossHandle
from whisper_export.backends.ort_cuda_steps import CudaSteps
from whisper_export.backends.ort_greedy import GreedyStream
from whisper_export.backends.step import StepRequest, StepResult


class OrtCudaBackend(CudaSteps):
    def __init__(self, bundle, threads: int | None = None, *, cuda_graph: bool | None = None, device_id: int = 0,
                 greedy_queue: int = 2, shared_stream: bool = True, provider_options: dict[str, str] | None = None):
        """cuda_graph: None = on unless WHISPER_EXPORT_CUDA_GRAPH=0 (ort_cuda_steps.py).
        greedy_queue: streamed greedy steps kept queued on the device while the host waits for the oldest; at most
        this many run after the last row's eot (NOTES.md has the measurements behind the default); 0 waits for
        every step.
        shared_stream: every session on one CUDA stream of the backend's, so that a step and the small graph that
        picks from it are waited for once; False leaves each session on onnxruntime's own stream.
        provider_options: more CUDA execution provider options, e.g. {"sdpa_kernel": "1"}."""
        if not isinstance(greedy_queue, int) or greedy_queue < 0:
            raise ValueError(f"greedy_queue: received {greedy_queue!r}, expected an int >= 0")
        super().__init__(bundle, threads, cuda_graph=cuda_graph, device_id=device_id, shared_stream=shared_stream,
                         provider_options=provider_options)
        self.greedy_queue = greedy_queue
        self.greedy_error: str | None = None  # why streaming was given up (no host-mapped memory)

    @property
    def streams_greedy(self) -> bool:
        """Whether greedy steps stream (the scheduler then asks for several per call)."""
        return self.greedy_queue >= 1

    def step(self, request: StepRequest, cache: CacheHandle, cross: CrossHandle) -> StepResult:
        self.check_handles(cache, cross, CacheHandle, CrossHandle)
        self.check_request(request, cache, cross)
        pick = request.pick
        if pick.kind != "logits" and self._whole_step(request, cache):
            if pick.kind == "top" and self._has_top(pick):
                return self._top(request, cache, cross)
            if pick.kind == "best" and pick.steps > 1 and self._can_stream(pick):
                result = self._streamed(request, cache, cross)
                if result is not None:
                    return result
            if pick.kind == "best" and (pick.rules is None or self.bundle.limited_path is not None):
                first = self._best(request, cache, cross)
                if pick.steps == 1:
                    return first
                return self._continue_greedy(request, first, cache, cross)
        return super().step(request, cache, cross)

    # -- one step, picked on the device ------------------------------------------------------------------

    def _keep_logits(self, request: StepRequest, cache: CacheHandle, cross: CrossHandle, bias=None,
                     picked_by_aux: bool = True) -> None:
        """The request's reorder, then its one-token step with the logits left in the steering buffer; a small
        graph picks from them next, so on a shared stream both are only queued (its run waits for all)."""
        queue = picked_by_aux and self.shared_stream
        self._reorder(request, cache, wait=not queue)
        self._step(request.tokens, request.offsets, cache, cross, logit_bias=bias, wait=not queue)

    def _best(self, request: StepRequest, cache: CacheHandle, cross: CrossHandle) -> StepResult:
        """The greedy choice: a selecting decoder's own, or greedy_select.onnx's / timestamp_rules.onnx's."""
        pick, rows = request.pick, cache.rows
        steering = self.buffers.steering(rows)
        aux = self._aux_graphs()
        if pick.rules is not None:
            self._keep_logits(request, cache, cross)
            best, logprobs = aux.limited(steering.logits, rows, pick.bias, request.state)
        elif steering.choice is not None:
            self._keep_logits(request, cache, cross, bias=pick.bias, picked_by_aux=False)
            best, logprobs = (value.numpy()[:, 0].copy() for value in steering.choice)  # a view in host memory
        else:
            self._keep_logits(request, cache, cross)
            best, logprobs = aux.select(steering.logits, rows, pick.bias)
        return StepResult(None, best[:, None].astype(np.int64), logprobs[:, None].astype(np.float32))

    def _has_top(self, pick) -> bool:
        graph = self.bundle.top_limited_path if pick.rules is not None else self.bundle.top_path
        return graph is not None and pick.k <= graph_io.TOP_K

    def _top(self, request: StepRequest, cache: CacheHandle, cross: CrossHandle) -> StepResult:
        """A beam's candidates: top_select.onnx (timestamp_top.onnx under the rules) on the step's logits."""
        pick = request.pick
        self._keep_logits(request, cache, cross)
        state = request.state if pick.rules is not None else None
        top, logprobs = self._aux_graphs().top(self.buffers.steering(cache.rows).logits, cache.rows, pick.bias, state)
        return StepResult(None, top[:, : pick.k], logprobs[:, : pick.k])

    def _continue_greedy(self, request: StepRequest, first: StepResult, cache: CacheHandle,
                         cross: CrossHandle) -> StepResult:
        """Greedy steps one at a time after the first (no ring): each fed the previous choice."""
        pick, state = request.pick, request.state
        stopped = ~request.live_rows()
        chosen, logprobs = [first.tokens[:, 0]], [first.logprobs[:, 0]]
        for j in range(1, pick.steps):
            if pick.stop_token is not None:
                stopped |= chosen[-1] == pick.stop_token
                if stopped.all():
                    break
            if pick.rules is not None:
                state = pick.rules.next_state(state, chosen[-1])
            one = StepRequest(chosen[-1][:, None], request.offsets + j, 0, request.group,
                              pick=type(pick)("best", bias=pick.bias, rules=pick.rules), state=state)
            result = self._best(one, cache, cross)
            chosen.append(result.tokens[:, 0])
            logprobs.append(result.logprobs[:, 0])
        return StepResult(None, np.stack(chosen, axis=1), np.stack(logprobs, axis=1))

    # -- streamed greedy steps ---------------------------------------------------------------------------

    def _can_stream(self, pick) -> bool:
        if self.greedy_queue < 1:
            return False
        if pick.rules is None:
            return self.selects  # the decoder's own choice feeds the next step
        return self.shared_stream and self.bundle.limited_path is not None

    def _ring(self, rows: int) -> GreedyStream | None:
        try:
            return self.buffers.stream(rows, self.greedy_queue)
        except HostMappedError as e:  # no pinned memory: one step per call from now on
            self.greedy_queue, self.greedy_error = 0, str(e)
            return None

    def _streamed(self, request: StepRequest, cache: CacheHandle, cross: CrossHandle) -> StepResult | None:
        """pick.steps greedy steps through the host-mapped ring; None where no ring can be had."""
        pick, rows = request.pick, cache.rows
        ring = self._ring(rows)
        if ring is None:
            return None
        steering = self.buffers.steering(rows)
        aux = self._aux_graphs()
        bias = aux.device_bias(pick.bias)
        limited = pick.rules is not None

        def bind(binding, s: int) -> None:
            (ring.bind_inputs if limited else ring.bind_step)(binding, s)
            binding.bind_ortvalue_input(graph_io.LOGIT_POSITIONS, steering.values[graph_io.LOGIT_POSITIONS])
            binding.bind_ortvalue_output(graph_io.LOGITS, steering.logits)
            if steering.choice is not None and (limited or not self.selects):
                binding.bind_ortvalue_output(graph_io.BEST_TOKEN, steering.choice[0])
                binding.bind_ortvalue_output(graph_io.BEST_LOGPROB, steering.choice[1])
            if self.selects:
                binding.bind_ortvalue_input(graph_io.LOGIT_BIAS, bias)

        def queue_step(s: int) -> None:
            what = "greedy-limited" if limited else "greedy"
            self._run_step(lambda binding: bind(binding, s), cache, cross, what, ring.queue, s, wait=False)
            if limited:
                aux.queue_limited(steering.logits, (rows, ring.queue, s), lambda binding: ring.bind_limited(binding, s))

        chosen, logprobs = ring.run(queue_step, request.tokens, request.offsets, pick.steps, pick.stop_token,
                                    request.state if limited else None, request.live)
        return StepResult(None, chosen, logprobs)
