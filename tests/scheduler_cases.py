"""Cases shared by the scheduler tests on the CPU provider (tests/whisper_export/runtime/test_scheduler.py) and on the
simulated CUDA path (tests/whisper_export/backends/test_cuda_paths.py)."""

from __future__ import annotations

import pytest

from whisper_export.runtime.audio import log_mel_batch
from whisper_export.runtime.decoding import WindowDecode
from whisper_export.runtime.options import DecodingOptions
from whisper_export.runtime.scheduler import Scheduler, Window

MIXED = [  # (options, previous text): four pick kinds, prompts of 1, 3 and ~12 tokens before the sot sequence;
    # neighbours share a pool (the same pick), so windows at different offsets step together
    (DecodingOptions(without_timestamps=True), None),
    (DecodingOptions(without_timestamps=True), "A quick brown fox."),
    (DecodingOptions(), "Hello there."),
    (DecodingOptions(), None),
    (DecodingOptions(beam_size=5, without_timestamps=True), None),
    (DecodingOptions(beam_size=5), "The weather today is cold and the library is closed."),
    (DecodingOptions(beam_size=3), None),
    (DecodingOptions(temperature=0.6, best_of=3, seed=7), None),
]


def decode_windows(backend, tokenizer, mels, cases, max_windows: int, steps_log: list | None = None):
    """Every (mel, (options, prompt)) as one Window of one scheduler; results in order."""
    results = [None] * len(cases)

    def done(window):
        results[window.tag] = window.decode.result()

    def failed(window, error):
        raise error

    scheduler = Scheduler(backend, max_windows)
    for i, (mel, (options, prompt)) in enumerate(zip(mels, cases)):
        decode = WindowDecode(tokenizer, backend.dims, options, "en", prompt)
        scheduler.submit(Window(mel, decode, done, failed, tag=i))
    if steps_log is None:
        scheduler.run()
    else:
        while scheduler.busy:
            scheduler.tick()
            steps_log.append({key: len(pool.live()) for key, pool in scheduler.pools.items()})
    return results


def check_mixed_batch(backend, tokenizer, english_clips, logprob_rel: float = 1e-6):
    """Every window's tokens in one continuous batch equal its tokens alone; sum_logprob within logprob_rel (fp32
    on the CPU: 1e-6; fp16 on a GPU, where a different row count picks other GEMM kernels, the sums of the
    same tokens' log-probabilities move at the 1e-3 level)."""
    mels = list(log_mel_batch(english_clips + english_clips[:3]))  # 8 windows
    alone = [decode_windows(backend, tokenizer, [mel], [case], 1)[0] for mel, case in zip(mels, MIXED)]
    log: list = []
    together = decode_windows(backend, tokenizer, mels, MIXED, 3, log)
    for a, b, (options, _) in zip(alone, together, MIXED):
        assert a.tokens == b.tokens, options
        assert a.sum_logprob == pytest.approx(b.sum_logprob, rel=logprob_rel, abs=logprob_rel)
        assert len(a.tokens) > 3
    # the windows really overlapped, several per pool at once, and more windows than fit at once went through
    assert max(sum(step.values()) for step in log) == 3
    assert any(n >= 2 for step in log for n in step.values())
