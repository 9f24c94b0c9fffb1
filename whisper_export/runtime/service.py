"""Transcriptions submitted from any thread, decoded together by one worker thread: the continuous batcher as a
service, for a server's requests or a cluster worker's inputs.

    with WhisperRuntime.load("bundle") as rt, TranscriptionService(rt, batch_size=16) as service:
        futures = [service.submit(path, language="en") for path in paths]   # any thread
        texts = [f.result().text for f in futures]

submit() checks the options in the caller's thread (ValueError/TypeError at once), then the worker adds the
audio to its TranscriptionLoop, where its windows share the scheduler's slots with every other request's. A
future cancelled before it is done has its audio dropped (its windows leave their slots at the next tick).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from whisper_export.runtime.audio import AudioInput
from whisper_export.runtime.options import split_options
from whisper_export.runtime.transcribe import SegmentCallback, TranscriptionLoop, TranscriptionResult


class QueueFull(RuntimeError):
    """More transcriptions are pending than the service takes (max_pending)."""


class TranscriptionService:
    """runtime: a WhisperRuntime (its backend and tokenizer; the service does not close it).
    batch_size: windows decoded together; max_pending: transcriptions accepted and not yet done at most (None:
    no limit), QueueFull beyond."""

    def __init__(self, runtime: Any, *, batch_size: int = 8, max_pending: int | None = None):
        if max_pending is not None and (not isinstance(max_pending, int) or max_pending < 1):
            raise ValueError(f"max_pending: received {max_pending!r}, expected None or an int >= 1")
        self.loop = TranscriptionLoop(runtime.backend, runtime.tokenizer, batch_size)
        self.max_pending = max_pending
        self._futures: dict[int, Future] = {}
        self._inbox: list[Callable[[], None]] = []
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="whisper-export-service", daemon=True)
        self._thread.start()

    # -- any thread ----------------------------------------------------------------------------------------

    def submit(self, audio: AudioInput, *, on_segment: SegmentCallback | None = None, **options) -> Future:
        """A future of the audio's TranscriptionResult. Options: DecodingOptions and TranscribeOptions fields, as
        WhisperRuntime.transcribe takes them (batch_size is the service's)."""
        transcribe_options, decoding = split_options(options)
        self.loop.check(transcribe_options, decoding)
        future: Future = Future()
        with self._cond:
            if self._closing:
                raise RuntimeError("submit: received a transcription after close(), expected none")
            if self.max_pending is not None and len(self._futures) >= self.max_pending:
                raise QueueFull(f"received a transcription with {len(self._futures)} pending, expected fewer than "
                                f"max_pending={self.max_pending}")
            key = next(self._ids)
            self._futures[key] = future

            def add() -> None:
                self.loop.add(key, audio, transcribe_options, decoding, on_segment=on_segment)

            self._inbox.append(add)
            self._cond.notify()
        future.add_done_callback(lambda f: self._cancelled(key) if f.cancelled() else None)
        return future

    def _cancelled(self, key: int) -> None:
        with self._cond:
            self._futures.pop(key, None)
        self._post(lambda: self.loop.cancel(key))

    @property
    def pending(self) -> int:
        """Transcriptions accepted and not yet done."""
        with self._cond:
            return len(self._futures)

    def occupancy(self) -> tuple[int, int]:
        """(windows being decoded, windows the scheduler decodes at most): how full the batch is."""
        live = sum(len(pool.live()) for pool in list(self.loop.scheduler.pools.values()))
        return live, self.loop.scheduler.max_windows

    def close(self, drain: bool = True) -> None:
        """Stop taking transcriptions; drain=True finishes the pending ones, False cancels them."""
        with self._cond:
            self._closing = True
            futures = list(self._futures.values())
            self._cond.notify()
        if not drain:
            for future in futures:
                future.cancel()
        self._thread.join()
        self.loop.close()

    def __enter__(self) -> "TranscriptionService":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _post(self, action: Callable[[], None]) -> None:
        with self._cond:
            self._inbox.append(action)
            self._cond.notify()

    # -- the worker thread ---------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._inbox and not self.loop.busy and not self._closing:
                    self._cond.wait()
                actions, self._inbox = self._inbox, []
                if not actions and not self.loop.busy and self._closing:
                    return
            for action in actions:
                action()
            try:
                outcomes = self.loop.step()
            except Exception as error:  # noqa: BLE001 - the loop itself broke: fail what is pending, go on
                outcomes = [(key, error) for key in list(self._futures)]
                self.loop.close()
                self.loop = TranscriptionLoop(self.loop.backend, self.loop.tokenizer, self.loop.scheduler.max_windows)
            for key, outcome in outcomes:
                self._settle(key, outcome)

    def _settle(self, key: int, outcome: TranscriptionResult | Exception) -> None:
        with self._cond:
            future = self._futures.pop(key, None)
        if future is None or future.done():
            return
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
