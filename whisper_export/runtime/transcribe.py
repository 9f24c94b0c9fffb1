"""Long-form transcription of many audios at once, each with its own options, through one scheduler.

Each audio is a LongFormJob (longform.py: openai-whisper's seek-based transcribe()): its windows go to the
continuous batcher (scheduler.py) one after the other, window k + 1 prompted with the text of window k, while
the windows of other audios fill the other slots. A window whose result fails the quality checks goes back
alone at the next temperature. TranscriptionLoop takes audios at any time (add) and hands back each one's
result as soon as it is done (step); Transcriber.run drives it over a list of files, a service over requests.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from collections.abc import Hashable, Iterator, Mapping, Sequence
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from whisper_export.backends.base import Backend
from whisper_export.bundle import Bundle, BundleError
from whisper_export.runtime.audio import N_SAMPLES, AudioInput, log_mel_spectrogram
from whisper_export.runtime.decoding import DecodingResult, WindowDecode, detect_language, initial_tokens
from whisper_export.runtime.longform import (
    LongFormJob,
    ProgressCallback,
    Segment,
    SegmentCallback,
    TranscriptionResult,
    needs_fallback,
)
from whisper_export.runtime.mel_source import MelSource
from whisper_export.runtime.options import DecodingOptions, TranscribeOptions, decoding_at
from whisper_export.runtime.scheduler import Scheduler, Window
from whisper_export.runtime.word_windows import WindowWords, time_words
from whisper_export.tokenizer import WhisperTokenizer

# threads that read audio and compute the log-mel's first pass while the decoder runs (numpy's FFT and the
# decoders release the GIL)
READER_THREADS = 4
# most threads that share the word step's per-head numpy (softmax, normalisation, median filter: numpy releases the
# GIL in their loops) while the decode loop waits for it; as many as the backend's `threads` otherwise
MAX_WORD_THREADS = 8
# longest an idle loop waits, once one audio is open, for the others being read to make one first admission wave:
# on a GPU a wave costs an encoder call and a prompt call whatever its size, so admitting the first audio alone
# and the others one by one as they open makes many small calls
GATHER_SECONDS = 0.25

__all__ = ["Transcriber", "TranscriptionLoop", "TranscriptionResult", "Segment", "long_form_mel",
           "ProgressCallback", "SegmentCallback"]

def long_form_mel(audio: AudioInput, n_mels: int) -> np.ndarray:
    """log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES): openai-whisper appends 30 s of zeros before the
    STFT (audio._log_mel computes only the frames that reach into the audio)."""
    return log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES)


@dataclass(eq=False)
class _Request:
    """An audio added to the loop, not yet opened."""

    key: Hashable
    audio: AudioInput
    options: TranscribeOptions
    decoding: Mapping[str, Any]
    language: str | None
    initial: list[int]
    progress: ProgressCallback | None
    on_segment: SegmentCallback | None


class _Active:
    """An opened audio: its job and how it is decoded."""

    def __init__(self, request: _Request, job: LongFormJob):
        self.request, self.job = request, job


@dataclass(eq=False)
class _Untimed:
    """A decoded window of an audio with word timestamps, waiting for its words: its cross K/V (`cross`, row
    `words.cross_row`) stay in the scheduler's pool until the next tick admits a window into that slot."""

    active: _Active
    result: DecodingResult
    words: WindowWords
    cross: Any

    def group_key(self) -> tuple:
        """Windows timed by one Backend.align call: one cross K/V handle and the same word options."""
        o = self.active.request.options
        return (id(self.cross), self.active.request.decoding.get("task", "transcribe"), o.prepend_punctuations,
                o.append_punctuations, o.hallucination_silence_threshold)


class TranscriptionLoop:
    """add() audios at any time, each with its own options; step() runs one scheduler tick and returns the
    (key, TranscriptionResult or the exception that stopped it) of the audios done since."""

    def __init__(self, backend: Backend, tokenizer: WhisperTokenizer, max_windows: int = 8):
        self.backend, self.tokenizer = backend, tokenizer
        self.scheduler = Scheduler(backend, max_windows, expecting=lambda: bool(self.opening))
        self.waiting: deque[_Request] = deque()
        self.opening: list[tuple[_Request, Future]] = []  # audios being read by the reader threads
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="whisper-export-audio")
        self.active: dict[Hashable, _Active] = {}
        self.finished: deque[tuple[Hashable, TranscriptionResult | Exception]] = deque()
        self.untimed: list[_Untimed] = []  # windows of this tick waiting for their words
        self._word_threads: ThreadPoolExecutor | None = None  # made by the first word step

    def check(self, options: TranscribeOptions, decoding: Mapping[str, Any]) -> tuple[str | None, list[int]]:
        """ValueError for options this model cannot transcribe with, before any audio is read; else (the language,
        None to detect, and the initial prompt's tokens)."""
        tok = self.tokenizer
        if decoding.get("prompt") is not None:
            # each window's prompt is the text so far; a fixed one would be silently replaced
            raise ValueError(
                f"prompt: received {decoding['prompt']!r} for a transcription, expected initial_prompt "
                "(the text before the first window; later windows are prompted with the text so far)"
            )
        language = decoding.get("language")
        # a language or task this model lacks fails here
        tok.sot_sequence(language or ("en" if tok.is_multilingual else None), decoding.get("task", "transcribe"))
        if language is None and not tok.is_multilingual:
            language = "en"
        initial = tok.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else []
        self._check_token_options(decoding_at(decoding, options.temperatures[0]), language)
        if options.word_timestamps:
            self._check_words()
        return language, initial

    def _check_token_options(self, decoding: DecodingOptions, language: str | None) -> None:
        """Token ids past the vocabulary, and a prefix that leaves no room in the text context, refused up front
        (they would fail inside the first decoder step of every window)."""
        tok, n_ctx = self.tokenizer, self.backend.dims.n_text_ctx
        beyond = [t for t in decoding.suppress_token_ids() if t >= tok.n_vocab]
        if beyond:
            raise ValueError(f"suppress_tokens: received {beyond[0]}, expected token ids below the model's "
                             f"vocabulary size {tok.n_vocab} (or -1)")
        if decoding.prefix:
            language = language or "en"  # a detected language adds one token, as any would
            start = initial_tokens(tok, dataclasses.replace(decoding, prefix=None), language, None, n_ctx, n_ctx // 2)
            prefix = initial_tokens(tok, decoding, language, None, n_ctx, n_ctx // 2)[len(start) :]
            # the earlier text takes up to half the context; the prefix and the start tokens share the rest
            room = n_ctx // 2 - len(start) - 1
            if len(prefix) > room:
                raise ValueError(f"prefix: received {len(prefix)} tokens, expected at most {room} (half the "
                                 f"model's text context {n_ctx}, less {len(start)} start token(s) and one to sample)")

    def _check_words(self) -> None:
        reason = self.words_unavailable()
        if reason is not None:
            raise ValueError(reason)

    def words_unavailable(self) -> str | None:
        """Why this backend cannot give word timestamps (None: it can)."""
        if type(self.backend).align is Backend.align:
            return (f"word_timestamps: received True for a {type(self.backend).__name__}, expected a backend with "
                    "align() (onnxruntime or torch)")
        bundle = getattr(self.backend, "bundle", None)
        if isinstance(bundle, Bundle) and bundle.align_path is None:
            try:
                bundle.require_align()
            except BundleError as e:  # a bundle exported before align.onnx: re-export
                return str(e)
        return None

    def add(self, key: Hashable, audio: AudioInput, options: TranscribeOptions, decoding: Mapping[str, Any], *,
            progress: ProgressCallback | None = None, on_segment: SegmentCallback | None = None) -> None:
        language, initial = self.check(options, decoding)
        self.waiting.append(_Request(key, audio, options, dict(decoding), language, initial, progress, on_segment))

    def cancel(self, key: Hashable) -> bool:
        """Forget an audio: not yet opened, or its windows dropped from the scheduler (slots freed at once)."""
        for request in self.waiting:
            if request.key == key:
                self.waiting.remove(request)
                return True
        for request, future in self.opening:
            if request.key == key:
                self.opening.remove((request, future))
                future.add_done_callback(lambda f: f.exception() is None and f.result().close())
                return True
        active = self.active.pop(key, None)
        if active is None:
            return False
        active.job.source.close()
        self.scheduler.cancel(lambda tag: tag[0] is active)
        return True

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.opening or self.active or self.finished)

    def close(self) -> None:
        """Stop the reader threads (after the audios they are reading) and the word step's; give the buffers back."""
        self._readers.shutdown(wait=True, cancel_futures=True)
        self.scheduler.close()
        if self._word_threads is not None:
            self._word_threads.shutdown(wait=True)

    def step(self) -> list[tuple[Hashable, TranscriptionResult | Exception]]:
        self._open()
        if self.scheduler.busy:
            self.scheduler.tick()
            # before the next tick, whose admissions may reuse the finished windows' cross K/V slots
            self._time_words()
        done = list(self.finished)
        self.finished.clear()
        return done

    # -- audios in -----------------------------------------------------------------------------------------

    def _open(self) -> None:
        """Keep twice the scheduler's windows of audios open, so a freed slot always has a taker. Audios are
        opened (read, and their log-mel's first pass done) by a few threads while the decoder runs; a file that
        cannot be read is that file's outcome."""
        while self.waiting and len(self.active) + len(self.opening) < 2 * self.scheduler.max_windows:
            request = self.waiting.popleft()
            n_mels = self.backend.dims.n_mels
            self.opening.append((request, self._readers.submit(MelSource, request.audio, n_mels,
                                                                max_duration=request.options.max_duration)))
        # wait only when there is nothing to decode meanwhile, and then for a first wave's worth of audios
        if self.opening and not self.scheduler.busy:
            reading = [f for _, f in self.opening]
            wait(reading, return_when=FIRST_COMPLETED)
            wait(reading[: self.scheduler.max_windows], timeout=GATHER_SECONDS)
        opened = []
        for request, future in [(r, f) for r, f in self.opening if f.done()]:
            self.opening.remove((request, future))
            try:
                source = future.result()
            except Exception as e:  # noqa: BLE001 - one unreadable file must not stop the others
                self.finished.append((request.key, e))
                continue
            o = request.options
            job = LongFormJob(request.key, source, request.language, request.initial, self.backend.dims.n_text_ctx,
                              o.clips(), request.on_segment, o.carry_initial_prompt)
            self.active[request.key] = active = _Active(request, job)
            opened.append(active)
            if request.progress:
                request.progress(request.key, 0, job.content_frames)
        unknown = [a for a in opened if a.job.language is None]
        for start in range(0, len(unknown), self.scheduler.max_windows):
            self._detect(unknown[start : start + self.scheduler.max_windows])
        for active in opened:
            if self.active.get(active.request.key) is active:
                self._next_window(active)

    def _detect(self, audios: list[_Active]) -> None:
        """The first 30 s decide the language of the whole audio, seen as openai-whisper sees them: the log-mel
        of the zero-padded audio (the decoded window is padded with 0.0 instead, which detects worse)."""
        first = np.stack([a.job.source.language_window() for a in audios])
        try:
            codes, probs = detect_language(self.backend, self.tokenizer, self.backend.encode(first), len(audios))
        except Exception as e:  # noqa: BLE001 - these audios fail, the others go on
            for active in audios:
                self._fail(active, e)
            return
        for active, code, p in zip(audios, codes, probs):
            active.job.language, active.job.language_probs = code, p

    # -- windows through the scheduler ---------------------------------------------------------------------

    def _next_window(self, active: _Active) -> None:
        job = active.job
        if active.request.options.skip_silence and not job.done:
            job.skip_silence()
        if job.done:
            self._finish(active, job.result(self.tokenizer))
            return
        mel, size = job.window()
        self._submit(active, mel, size, 0)

    def _submit(self, active: _Active, mel: np.ndarray, size: int, attempt: int) -> None:
        request = active.request
        decoding = decoding_at(request.decoding, request.options.temperatures[attempt])
        decode = WindowDecode(self.tokenizer, self.backend.dims, decoding, active.job.language or "en",
                              active.job.prompt())
        self.scheduler.submit(Window(mel, decode, self._done, lambda _w, e: self._fail(active, e),
                                     tag=(active, size, attempt)))

    def _done(self, window: Window) -> None:
        active, size, attempt = window.tag
        options, job = active.request.options, active.job
        try:
            result = window.decode.result()
            if needs_fallback(result, options) and attempt + 1 < len(options.temperatures):
                self._submit(active, window.mel, size, attempt + 1)  # only this window, hotter
                return
            words = job.consume(result, size, self.tokenizer, options)
            if words is not None:  # word timestamps: aligned after this tick, with the other windows done in it
                assert window.pool is not None
                words.cross_row = window.slot
                self.untimed.append(_Untimed(active, result, words, window.pool.cross))
                return
            self._advance(active)
        except Exception as e:  # noqa: BLE001 - this audio fails, the others go on
            self._fail(active, e)

    def _advance(self, active: _Active) -> None:
        job = active.job
        if active.request.progress:
            active.request.progress(job.index, min(job.seek, job.content_frames), job.content_frames)
        self._next_window(active)

    def _time_words(self) -> None:
        """The words of the windows decoded in the last tick (one Backend.align per cross K/V handle and word
        options), then openai's word rules on each, its segments committed and the audio's next window queued."""
        groups: dict[tuple, list[_Untimed]] = {}
        for item in self.untimed:
            if self.active.get(item.active.request.key) is item.active:  # not cancelled or failed since
                groups.setdefault(item.group_key(), []).append(item)
        self.untimed = []
        map_heads = self._word_map() if groups else map
        for (_, task, prepend, append, threshold), items in groups.items():
            try:
                time_words(self.backend, self.tokenizer, items[0].cross, [i.words for i in items], task=task,
                           prepend_punctuations=prepend, append_punctuations=append,
                           hallucination_silence_threshold=threshold, map_heads=map_heads)
            except Exception as e:  # noqa: BLE001 - these audios fail, the others go on
                for item in items:
                    self._fail(item.active, e)
                continue
            for item in items:
                try:
                    item.active.job.commit(item.words, item.result, self.tokenizer, item.active.request.options)
                    self._advance(item.active)
                except Exception as e:  # noqa: BLE001 - this audio fails, the others go on
                    self._fail(item.active, e)

    def _word_map(self):
        """map over the word threads (made on first use), or the builtin map where the backend has one thread."""
        threads = getattr(self.backend, "threads", None)
        threads = min(threads, MAX_WORD_THREADS) if isinstance(threads, int) and threads > 0 else 1
        if threads == 1:
            return map
        if self._word_threads is None:
            self._word_threads = ThreadPoolExecutor(threads, thread_name_prefix="whisper-export-words")
        return self._word_threads.map

    def _finish(self, active: _Active, outcome: TranscriptionResult | Exception) -> None:
        if self.active.get(active.request.key) is active:
            del self.active[active.request.key]
            active.job.source.close()
            self.finished.append((active.request.key, outcome))

    def _fail(self, active: _Active, error: Exception) -> None:
        self._finish(active, error)


class Transcriber:
    """Many audios with one set of options: each audio's windows in order, the windows of different audios
    decoded together (TranscriptionLoop with batch_size windows at once)."""

    def __init__(self, backend: Backend, tokenizer: WhisperTokenizer):
        self.backend, self.tokenizer = backend, tokenizer

    def run(
        self,
        audios: Sequence[AudioInput],
        options: TranscribeOptions,
        decoding: Mapping[str, Any],
        progress: ProgressCallback | None = None,
        on_segment: SegmentCallback | None = None,
    ) -> Iterator[tuple[int, TranscriptionResult | Exception]]:
        """(input index, its result or the exception that stopped it), each as soon as that audio is done, in
        the order they finish (the others go on). Option errors that concern every audio raise here, before
        any audio is read. on_segment is called with (input index, segment) as each segment is made."""
        loop = TranscriptionLoop(self.backend, self.tokenizer, options.batch_size)
        loop.check(options, decoding)
        for index, audio in enumerate(audios):
            loop.add(index, audio, options, decoding, progress=progress, on_segment=on_segment)
        return _drain(loop)


def _drain(loop: TranscriptionLoop) -> Iterator[tuple[int, TranscriptionResult | Exception]]:
    try:
        while loop.busy:
            yield from loop.step()  # type: ignore[misc]
    finally:
        loop.close()
