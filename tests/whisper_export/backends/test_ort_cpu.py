"""The CPU onnxruntime backend binds numpy inputs by address: each bound array must outlive the run."""

from __future__ import annotations

import threading

import numpy as np
import pytest

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


@pytest.mark.parametrize("bundle", ["tiny_bundle", "tiny_bundle_ort"])
def test_a_prompt_shared_by_each_audios_rows_runs_once_and_fills_every_row(bundle, english_clips, request):
    """Two audios of three rows each (a beam group), every row of an audio with its audio's prompt: the backend runs
    the prompt once per audio and copies its cache. The logits and every later step's logits equal those of the
    same six rows run each on its own cross K/V slot (group 1, where nothing is shared), which is also what
    a cache slot holding an earlier window's keys must not change. Within 1e-4 (the fp32 parity bound): the
    matmuls see 2 rows against 6, which moves the last bits."""
    backend = OnnxRuntimeBackend(request.getfixturevalue(bundle), threads=1)
    mel = log_mel_batch(english_clips[:2])
    g, n_ctx = 3, backend.dims.n_text_ctx
    grouped_cross, single_cross = backend.encode(mel), backend.encode(np.repeat(mel, g, axis=0))
    prompts = np.array([[50257, 50362, 440, 2068], [50257, 50362, 314, 1101]], np.int64)
    tokens = np.repeat(prompts, g, axis=0)  # (6, 4): audio-major
    positions = np.array([0, 3], np.int64)
    grouped, single = backend.new_cache(2 * g, n_ctx), backend.new_cache(2 * g, n_ctx)
    for value in grouped.values:  # an earlier window's keys in the slot: hidden by the mask, as in a reused pool
        value[...] = np.random.default_rng(0).standard_normal(value.shape).astype(value.dtype)
    offsets = np.zeros(2 * g, np.int64)
    shared = backend.step(StepRequest(tokens, offsets, 0, g, positions=positions), grouped, grouped_cross).logits
    alone = backend.step(StepRequest(tokens, offsets, 0, 1, positions=positions), single, single_cross).logits
    np.testing.assert_allclose(shared, alone, rtol=0, atol=1e-4)
    rng = np.random.default_rng(1)
    for i in range(4):  # beam-like steps: each row its own token, rows reordered within their audio
        step_tokens = rng.integers(300, 5000, (2 * g, 1))
        sources = np.array([0, 0, 2, 3, 5, 5], np.int64) if i == 0 else None
        a = backend.step(StepRequest(step_tokens, np.full(2 * g, 4 + i, np.int64), 0, g, sources), grouped,
                         grouped_cross).logits
        if sources is not None:  # group 1: the same reorder by hand
            for value in single.values:
                value[...] = value[sources]
        b = backend.step(StepRequest(step_tokens, np.full(2 * g, 4 + i, np.int64), 0, 1), single, single_cross).logits
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
