"""Measurements of this runtime over any Backend (onnxruntime CPU/CUDA, torch)."""

from __future__ import annotations

import statistics
from typing import Any

from whisper_export.bench.common import _now, timed

# -- our runtime (any Backend: onnxruntime CPU/CUDA, torch) -----------------------------------------------


class CountingBackend:
    """Wraps a Backend and counts decoder steps (for ms/step of the real decoding loop): one per step() call,
    or as many as a streamed greedy call ran (those queued after an eot too, not the steps asked for)."""

    def __init__(self, backend):
        self.inner = backend
        self.steps = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, request, cache, cross):
        result = self.inner.step(request, cache, cross)
        self.steps += result.tokens.shape[1] if request.pick.kind == "best" else 1
        return result


def ours_encoder_ms(backend, mel1, repeats: int) -> dict[str, float]:
    """ms per 30 s window at batch 1 (the cross K/V of every decoder layer included)."""
    stats, _ = timed(lambda: backend.encode(mel1), repeats, warmup=2)
    return {k: (v * 1e3 if k != "n" else v) for k, v in stats.items()}


def ours_decode(backend, tokenizer, mel, options, repeats: int, one_by_one: bool) -> dict[str, Any]:
    """Decode windows (the encoder runs inside the timing: each window's cross K/V go into its pool slot).

    one_by_one: each window alone (batch 1), times summed; else all windows in one batch.
    Returns ms/token (tokens = sampled tokens + eot per audio), tokens/s, ms/step, and the tokens.
    """
    import numpy as np

    from whisper_export.runtime.scheduler import decode

    counting = CountingBackend(backend)
    groups = [np.ascontiguousarray(mel[i : i + 1]) for i in range(len(mel))] if one_by_one else [mel]

    def run():
        counting.steps = 0
        return [decode(counting, tokenizer, m, options) for m in groups]

    stats, results = timed(run, repeats)
    steps = counting.steps
    flat = [r for group in results for r in group]
    n_tokens = sum(len(r.tokens) + 1 for r in flat)
    seconds = stats["median"]
    return {
        "ms_per_token": seconds / n_tokens * 1e3,
        "ms_per_token_min": stats["min"] / n_tokens * 1e3,
        "tokens_per_s": n_tokens / seconds,
        "ms_per_step": seconds / steps * 1e3,
        "steps": steps,
        "tokens": n_tokens,
        "seconds": stats,
        "token_ids": [r.tokens for r in flat],
    }


def ours_step_loop(backend, mel_row, rows: int, prompt: list[int], n_steps: int, repeats: int) -> dict[str, float]:
    """ms per decoder step for `rows` audios decoding n_steps tokens each (argmax feedback, no eot stop):
    the backend's raw step cost through one streamed greedy request, the path greedy decoding without
    timestamps takes (a GPU backend picks the token on the device and, with a decoder that chooses in its own
    graph, feeds it to the next step there; the CPU one picks in numpy)."""
    import numpy as np

    from whisper_export.backends.picking import Pick
    from whisper_export.backends.step import StepRequest

    mel = np.ascontiguousarray(np.repeat(mel_row, rows, axis=0))
    cross = backend.encode(mel)
    capacity = min(backend.dims.n_text_ctx, len(prompt) + n_steps + 1)
    pick = Pick("best", bias=np.zeros(backend.dims.n_vocab, np.float32), steps=n_steps)
    start = np.asarray([prompt] * rows, dtype=np.int64)

    def run():
        cache = backend.new_cache(rows, capacity)
        prompt_step = StepRequest(start, np.zeros(rows, np.int64), positions=np.asarray([len(prompt) - 1]))
        logits = backend.step(prompt_step, cache, cross).logits
        token = logits[:, -1].argmax(-1).astype(np.int64)[:, None]
        t = _now()
        request = StepRequest(token, np.full(rows, len(prompt), dtype=np.int64), pick=pick)
        chosen = backend.step(request, cache, cross).tokens
        assert chosen.shape == (rows, n_steps)
        return _now() - t

    run()  # warm-up: allocations, CUDA graph capture
    samples = [run() for _ in range(repeats)]
    ms = [s / n_steps * 1e3 for s in samples]
    median = statistics.median(ms)
    return {"rows": rows, "greedy_queue": getattr(backend, "greedy_queue", 0), "ms_per_step": median, "ms_per_step_min": min(ms),
            "ms_per_token": median / rows, "tokens_per_s": rows / median * 1e3}


def prompt_for(tokenizer) -> list[int]:
    s = tokenizer.special
    seq = tokenizer.sot_sequence("en" if tokenizer.is_multilingual else None, "transcribe")
    return list(seq) + [s.no_timestamps]
