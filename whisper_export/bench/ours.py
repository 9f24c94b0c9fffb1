"""Measurements of this runtime over any Backend (onnxruntime CPU/CUDA, torch)."""

from __future__ import annotations

import statistics
from typing import Any

from whisper_export.bench.common import _now, timed

# -- our runtime (any Backend: onnxruntime CPU/CUDA, torch) -----------------------------------------------


class CountingBackend:
    """Wraps a Backend and counts decoder steps (for ms/step of the real decoding loop)."""

    _ONE_STEP = ("decode", "decode_best", "decode_top", "decode_best_limited", "decode_top_limited")  # one step each

    def __init__(self, backend):
        self.inner = backend
        self.steps = 0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in self._ONE_STEP:
            return attr

        def counted(*args):
            self.steps += 1
            return attr(*args)

        return counted

    def decode_greedy(self, *args):
        chosen, logprobs, cache = self.inner.decode_greedy(*args)
        self.steps += chosen.shape[1]  # the steps run (those queued after an eot too), not the steps asked for
        return chosen, logprobs, cache

    def decode_greedy_limited(self, *args):
        chosen, logprobs, cache = self.inner.decode_greedy_limited(*args)
        self.steps += chosen.shape[1]
        return chosen, logprobs, cache


def ours_encoder_ms(backend, mel1, repeats: int) -> dict[str, float]:
    """ms per 30 s window at batch 1 (the cross K/V of every decoder layer included)."""
    stats, _ = timed(lambda: backend.encode(mel1), repeats, warmup=2)
    return {k: (v * 1e3 if k != "n" else v) for k, v in stats.items()}


def ours_decode(backend, tokenizer, mel, options, repeats: int, one_by_one: bool) -> dict[str, Any]:
    """Decode windows from their encoder output (computed once, outside the timing).

    one_by_one: each window alone (batch 1), times summed; else all windows in one batch.
    Returns ms/token (tokens = sampled tokens + eot per audio), tokens/s, ms/step, and the tokens.
    """
    import numpy as np

    from whisper_export.runtime.decoding import DecodingTask

    counting = CountingBackend(backend)
    groups = [mel[i : i + 1] for i in range(len(mel))] if one_by_one else [mel]
    crosses = [(backend.encode(np.ascontiguousarray(m)), m.shape[0]) for m in groups]

    def run():
        counting.steps = 0
        return [DecodingTask(counting, tokenizer, options).run(cross, n) for cross, n in crosses]

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
    the backend's raw step cost through one Backend.decode_greedy call, the path greedy decoding without
    timestamps takes (a GPU backend picks the token on the device and, with a decoder that chooses in its own
    graph, feeds it to the next step there; the CPU one picks in numpy)."""
    import numpy as np

    mel = np.ascontiguousarray(np.repeat(mel_row, rows, axis=0))
    cross = backend.encode(mel)
    capacity = min(backend.dims.n_text_ctx, len(prompt) + n_steps + 1)
    index = np.arange(rows, dtype=np.int64)
    no_bias = np.zeros(backend.dims.n_vocab, np.float32)
    start = np.asarray([prompt] * rows, dtype=np.int64)

    def run():
        cache = backend.new_cache(rows, capacity)
        logits, cache = backend.decode(start, np.zeros(rows, np.int64), index, np.asarray([len(prompt) - 1]), cache, cross)
        token = logits[:, -1].argmax(-1).astype(np.int64)[:, None]
        t = _now()
        chosen, _, cache = backend.decode_greedy(token, np.full(rows, len(prompt), dtype=np.int64), no_bias, cache,
                                                 cross, n_steps)
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
