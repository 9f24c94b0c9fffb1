"""Greedy steps streamed through host-mapped memory (onnxruntime backend, a decoder that chooses greedily in its
own graph).

A greedy step needs from the host only its token and offsets, and the token is the previous step's choice. So
the steps read their tokens from, and write their choices into, a ring of slots in host-mapped memory
(host_mapped.py): step i reads token slot i and writes its choice into slot i + 1, where step i + 1 reads it on
the GPU. The host keeps `queue` steps queued on onnxruntime's stream (runs that return without synchronising,
ort_runs.NO_SYNC) and learns that the oldest has finished when its choice replaces the sentinel the host wrote
there; it reads the choice, checks for the stop token and queues one more step. So the GPU runs steps back to
back and the host never waits on the stream; after the stop token, at most `queue` steps run in vain.

Under the timestamp rules a step is two runs on the backend's one CUDA stream: the decoder step (its token and
offsets from the ring, its logits to a device buffer) and timestamp_rules.onnx on those logits, which reads the
row's timestamp state from the ring and writes the choice, its log-probability and the next state into it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from whisper_export import graph_io

_SPIN_LIMIT_S = 60.0  # a step that has not finished after this long is not coming (a GPU fault)


class GreedyStream:
    """The host-mapped ring of one row count's streamed steps, `queue` of them in flight at most.

    slots = queue + 2, step i uses s = i % slots: it reads tokens[s], offsets[s] (and states[s]) and writes
    tokens[(s + 1) % slots], logprobs[s] (and states[(s + 1) % slots]). Two slots more than steps in flight:
    when the host arms step i, the step that last read or wrote any of its slots has finished. Addresses never change, so each slot's binding can be captured.
    """

    def __init__(self, memory: Callable[[int], Any], device: str, device_id: int, rows: int, queue: int):
        self.rows, self.queue, self.slots = rows, queue, queue + 2
        self._device, self._device_id = device, device_id
        n = self.slots * rows
        # int64 sections first (8-byte aligned addresses for the kernels), the float32 one last
        self._memory = memory(5 * 8 * n + 4 * n)  # kept: the views below live in it
        self.tokens = self._memory.view(np.int64, (self.slots, rows), 0)
        self.offsets = self._memory.view(np.int64, (self.slots, rows), 8 * n)
        self.states = self._memory.view(np.int64, (self.slots, rows, 3), 16 * n)
        self.logprobs = self._memory.view(np.float32, (self.slots, rows), 40 * n)
        self._unfinished = range(0)  # steps a run that raised left queued
        self._live: np.ndarray | None = None  # the rows those steps were waited for in

    def _bind(self, binding: Any, s: int, which: tuple[str, ...]) -> None:
        rows, n = self.rows, self.slots * self.rows
        base, after = self._memory.address, (s + 1) % self.slots
        slots = {  # name: (input?, dtype, shape, address)
            graph_io.TOKENS: (True, np.int64, [rows, 1], base + s * rows * 8),
            graph_io.OFFSETS: (True, np.int64, [rows], base + 8 * n + s * rows * 8),
            graph_io.BEST_TOKEN: (False, np.int64, [rows, 1], base + after * rows * 8),
            graph_io.TIMESTAMP_STATE: (True, np.int64, [rows, 3], base + 16 * n + s * rows * 24),
            graph_io.NEXT_TIMESTAMP_STATE: (False, np.int64, [rows, 3], base + 16 * n + after * rows * 24),
            graph_io.BEST_LOGPROB: (False, np.float32, [rows, 1], base + 40 * n + s * rows * 4),
        }
        for name in which:
            is_input, dtype, shape, address = slots[name]
            bind = binding.bind_input if is_input else binding.bind_output
            bind(name, self._device, self._device_id, dtype, shape, address)

    def bind_step(self, binding: Any, s: int) -> None:
        """Slot s's step: its token and offsets in, its choice out, all in the ring."""
        self._bind(binding, s, (graph_io.TOKENS, graph_io.OFFSETS, graph_io.BEST_TOKEN, graph_io.BEST_LOGPROB))

    def bind_inputs(self, binding: Any, s: int) -> None:
        """Slot s's decoder step that another graph picks from: its token and offsets in."""
        self._bind(binding, s, (graph_io.TOKENS, graph_io.OFFSETS))

    def bind_limited(self, binding: Any, s: int) -> None:
        """Slot s's timestamp_rules.onnx: the timestamp state in, the choice and the next state out."""
        self._bind(binding, s, (graph_io.TIMESTAMP_STATE, graph_io.BEST_TOKEN, graph_io.BEST_LOGPROB,
                                graph_io.NEXT_TIMESTAMP_STATE))

    def start(self, tokens: np.ndarray, state: np.ndarray | None = None) -> None:
        """tokens (rows, 1): step 0's; state (rows, 3): its timestamp state (streamed timestamp rules)."""
        self.tokens[0] = tokens[:, 0]
        if state is not None:
            self.states[0] = state

    def arm(self, i: int, offsets: np.ndarray) -> int:
        """Before queueing step i (its offsets are offsets + i): its offsets, and sentinels where its choice goes.
        Returns its slot."""
        s = i % self.slots
        self.offsets[s] = offsets + i
        self.tokens[(s + 1) % self.slots] = -1
        self.logprobs[s] = np.nan
        return s

    def wait(self, i: int, live: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Step i's (chosen (rows,) int64, log-probabilities (rows,) float32), once both have replaced their
        sentinels in every live row (live (rows,) bool; None: all) (a spin: the step takes a fraction of a
        millisecond). A free row is not waited for: nothing reads its choice, and a NaN log-probability (a slot
        holding no audio) would never replace the sentinel; the same kernels write it as the live rows."""
        s = i % self.slots
        chosen, logprobs = self.tokens[(s + 1) % self.slots], self.logprobs[s]
        rows = slice(None) if live is None else np.flatnonzero(live)
        deadline = None
        # an int64 is written whole in practice; a half-written one (sentinel -1 = all ones) would show >= 2**31
        while not (((chosen[rows] >= 0) & (chosen[rows] < 1 << 31)).all() and not np.isnan(logprobs[rows]).any()):
            if deadline is None:
                deadline = time.monotonic() + _SPIN_LIMIT_S
            elif time.monotonic() > deadline:
                raise RuntimeError(f"greedy step {i}: no choice after {_SPIN_LIMIT_S:.0f} s (the GPU stopped)")
        return chosen.copy(), logprobs.copy()

    def run(self, queue_step: Callable[[int], None], tokens: np.ndarray, offsets: np.ndarray, steps: int,
            stop_token: int | None, state: np.ndarray | None = None,
            live: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Up to `steps` steps from tokens (rows, 1) at offsets (and timestamp state (rows, 3)), queue_step(slot)
        queueing one on the device without waiting; stops queueing once every live row (live (rows,) bool; None:
        all) has chosen stop_token and returns when every queued step has finished (so the ring is free again):
        (chosen (rows, k) int64, log-probabilities (rows, k) float32)."""
        self._drain()
        chosen = np.empty((self.rows, steps), np.int64)
        logprobs = np.empty((self.rows, steps), np.float32)
        stopped = np.zeros(self.rows, dtype=bool) if live is None else ~live
        self.start(tokens, state)
        self._live = live
        queued = done = 0
        try:
            while done < queued or queued < steps and not stopped.all():
                while queued < steps and queued - done < self.queue and not stopped.all():
                    queue_step(self.arm(queued, offsets))
                    queued += 1
                chosen[:, done], logprobs[:, done] = self.wait(done, live)
                if stop_token is not None:
                    stopped |= chosen[:, done] == stop_token
                done += 1
        except BaseException:
            self._unfinished = range(done, queued)  # still running on the device: the next run waits for them
            raise
        return chosen[:, :done], logprobs[:, :done]

    def _drain(self) -> None:
        """After a run that raised (an interrupt, a failed step), wait for the steps it left queued: they still
        write into the ring."""
        unfinished, self._unfinished = self._unfinished, range(0)
        for i in unfinished:
            self.wait(i, self._live)
