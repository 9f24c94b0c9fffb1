"""Greedy steps queued on the device (onnxruntime backend, a decoder that chooses greedily in its own graph).

A greedy step needs from the host only its token and offsets, and the token is the previous step's choice. So a
block of steps runs without the host in between: step j reads its token from slot j of a device ring and writes
its choice into slot j + 1, where step j + 1 reads it; the offsets of every step are written before the block.
The host copies one small array to the device before a block and two back after it, and queues the block's runs
without waiting for each (ort_runs.NO_SYNC; the last run of a block waits), so the GPU runs the steps back to
back while the host queues the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from whisper_export import graph_io


class GreedyRing:
    """The device buffers of one row count's blocks of up to `block` steps.

    steer (2 * block + 1, rows) int64: rows 0..block are token slots (step j reads slot j, writes slot j + 1),
    rows block + 1.. the offsets of steps 0..block - 1. logprobs (block, rows) float32: step j writes row j.
    Their addresses never change, so each step's binding can be captured in a CUDA graph.
    """

    def __init__(self, zeros: Callable[[tuple, Any], Any], device: str, device_id: int, rows: int, block: int):
        self.rows, self.block = rows, block
        self._device, self._device_id = device, device_id
        self.steer = zeros((2 * block + 1, rows), np.int64)
        self.logprobs = zeros((block, rows), np.float32)
        self._host = np.zeros((2 * block + 1, rows), np.int64)

    def load(self, tokens: np.ndarray, offsets: np.ndarray) -> None:
        """tokens (rows, 1): step 0's; offsets (rows,): step 0's (step j's are offsets + j). One copy."""
        self._host[0] = tokens[:, 0]
        self._host[self.block + 1 :] = offsets[None, :] + np.arange(self.block, dtype=np.int64)[:, None]
        self.steer.update_inplace(self._host)

    def bind_step(self, binding: Any, j: int) -> None:
        """Step j's token, offsets and choice as views into the ring."""
        rows, row64 = self.rows, self.rows * 8
        steer, logprobs = self.steer.data_ptr(), self.logprobs.data_ptr()
        for bind, name, dtype, shape, address in (
            (binding.bind_input, graph_io.TOKENS, np.int64, [rows, 1], steer + j * row64),
            (binding.bind_input, graph_io.OFFSETS, np.int64, [rows], steer + (self.block + 1 + j) * row64),
            (binding.bind_output, graph_io.BEST_TOKEN, np.int64, [rows, 1], steer + (j + 1) * row64),
            (binding.bind_output, graph_io.BEST_LOGPROB, np.float32, [rows, 1], logprobs + j * rows * 4),
        ):
            bind(name, self._device, self._device_id, dtype, shape, address)

    def read(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(chosen (rows, steps) int64, log-probabilities (rows, steps) float32) of a finished block."""
        steer, logprobs = self.steer.numpy(), self.logprobs.numpy()  # views, when the ring is in host memory
        return steer[1 : steps + 1].T.copy(), logprobs[:steps].T.copy()
