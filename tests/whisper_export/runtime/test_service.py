"""TranscriptionService: requests from many threads, each with its own options, decoded together by one worker,
give each request the result it gets alone; cancelled and refused requests leave the others alone."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest

from whisper_export.runtime import WhisperRuntime
from whisper_export.runtime.service import QueueFull, TranscriptionService

REQUESTS = [  # per clip: each request has its own options
    dict(without_timestamps=True),
    dict(),
    dict(beam_size=3, without_timestamps=True),
    dict(initial_prompt="Breakfast and weather.", condition_on_previous_text=False),
    dict(temperature=0.0, without_timestamps=True, language="en"),
]


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    with WhisperRuntime.load(tiny_bundle) as rt:
        yield rt


def test_concurrent_requests_equal_each_alone(runtime, english_clips):
    alone = [runtime.transcribe(clip, **options) for clip, options in zip(english_clips, REQUESTS)]
    futures: list = [None] * len(REQUESTS)
    with TranscriptionService(runtime, batch_size=3) as service:
        def submit(i: int) -> None:
            futures[i] = service.submit(english_clips[i], **REQUESTS[i])

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(REQUESTS))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results = [f.result(timeout=600) for f in futures]
        assert service.pending == 0
    for got, want in zip(results, alone):
        assert [s.tokens for s in got.segments] == [s.tokens for s in want.segments]
        assert got.text == want.text and got.text


def test_bad_options_refused_in_the_callers_thread_and_a_full_queue(runtime, english_clips):
    with TranscriptionService(runtime, batch_size=1, max_pending=1) as service:
        with pytest.raises(ValueError, match="beam_size: received 0"):
            service.submit(english_clips[0], beam_size=0)
        first = service.submit(english_clips[0], without_timestamps=True)
        with pytest.raises(QueueFull, match="max_pending=1"):
            service.submit(english_clips[1])
        assert first.result(timeout=600).text
        assert service.submit(english_clips[1], without_timestamps=True).result(timeout=600).text


def test_a_cancelled_request_leaves_the_others(runtime, english_clips, tmp_path):
    with TranscriptionService(runtime, batch_size=2) as service:
        futures = [service.submit(clip, without_timestamps=True) for clip in english_clips]
        assert futures[1].cancel()
        with pytest.raises(CancelledError):
            futures[1].result()
        broken = tmp_path / "broken.wav"
        broken.write_bytes(b"RIFF0000WAVEfmt garbage")
        bad = service.submit(broken)
        results = [f.result(timeout=600) for i, f in enumerate(futures) if i != 1]
        with pytest.raises(ValueError):
            bad.result(timeout=600)
    assert all(r.text for r in results) and service.pending == 0
    with pytest.raises(RuntimeError, match="after close"):
        service.submit(english_clips[0])
