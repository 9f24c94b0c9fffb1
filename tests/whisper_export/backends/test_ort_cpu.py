"""The CPU onnxruntime backend binds numpy inputs by address: each bound array must outlive the run."""

from __future__ import annotations

import threading

import numpy as np

from whisper_export.backends.onnxruntime import OnnxRuntimeBackend
from whisper_export.backends.step import StepRequest
from whisper_export.runtime.audio import log_mel_batch


def test_steps_are_unchanged_while_another_thread_allocates(tiny_bundle, english_clips):
    """Single-token steps whose logit position is a temporary (the request's default), run while a second thread
    allocates and fills small arrays with an out-of-range value as fast as it can: every step's logits equal the
    same step's with nothing else running. A binding that outlived its array read the other thread's values
    (onnxruntime's Gather 'indices element out of data bounds', seen with files read on reader threads)."""
    backend = OnnxRuntimeBackend(tiny_bundle, threads=1)
    cross = backend.encode(log_mel_batch(english_clips[:1]))
    prompt = np.array([[50257, 50362]], np.int64)

    def run_steps(n: int) -> list[np.ndarray]:
        cache = backend.new_cache(1, backend.dims.n_text_ctx)
        backend.step(StepRequest(prompt, np.zeros(1, np.int64)), cache, cross)
        out = []
        for i in range(n):
            token = np.array([[440 + i]], np.int64)
            out.append(backend.step(StepRequest(token, np.full(1, 2 + i, np.int64)), cache, cross).logits.copy())
        return out

    quiet = run_steps(40)
    stop = threading.Event()

    def churn() -> None:
        keep = []
        while not stop.is_set():
            keep.append(np.full(1, 7, np.int64))
            keep.append(np.full((1, 1), 99999, np.int64))
            if len(keep) > 64:
                keep.clear()

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        busy = run_steps(40)
    finally:
        stop.set()
        thread.join()
    for step, (a, b) in enumerate(zip(quiet, busy)):
        np.testing.assert_array_equal(a, b, err_msg=f"step {step}")
