"""Long-form transcription: openai-whisper's seek-based transcribe(), for several audios at once.

Each audio's log-mel (padded with 30 s of zeros, as openai-whisper does) is cut into 30 s windows; the
timestamp tokens of a window's result become segments and move `seek` to the last complete segment, so a
sentence cut at the window's end is decoded again in the next window. Windows of different audios are
decoded together when their prompts have the same length (the decoder rows share one token array): always
for the first window, and for every window when condition_on_previous_text is off. Other windows fall back
to smaller batches, down to one audio.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from whisper_export.runtime.audio import (
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    N_SAMPLES,
    SAMPLE_RATE,
    AudioInput,
    as_audio,
    log_mel_spectrogram,
)
from whisper_export.backends.base import Backend
from whisper_export.runtime.decoding import DecodingResult, WindowDecode, detect_language
from whisper_export.runtime.mel_source import MelSource
from whisper_export.runtime.options import TranscribeOptions, decoding_at
from whisper_export.runtime.scheduler import Scheduler, Window
from whisper_export.tokenizer import WhisperTokenizer

# (audio index, frames done, frames in total) after each window
ProgressCallback = Callable[[int, int, int], None]
# (audio index, the segment) as each segment is appended, in order (openai-whisper's verbose output)
SegmentCallback = Callable[[int, "Segment"], None]

# skip_silence: a frame is sound when its loudest mel bin is within 60 dB of the file's loudest and above
# an absolute floor, about 70 dB under full-scale speech (log-mel units: 1.0 = 40 dB; digital silence sits
# at -1.5 alone, or at peak - 2); windows start this many frames before the sound, so its onset is kept
SILENCE_BELOW_PEAK = 1.5
SILENCE_FLOOR = -0.5
SILENCE_LEAD_FRAMES = 20

# long_form_mel: zero samples after the audio that the STFT really runs over (10 frames; >= N_FFT / 2 + 2 hops
# so that the last of them is pure silence)
MEL_TAIL_SAMPLES = 10 * HOP_LENGTH


def long_form_mel(audio: AudioInput, n_mels: int) -> np.ndarray:
    """log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES), bit for bit, without the STFT of 30 s of zeros.

    openai-whisper appends 30 s of zeros before the STFT. Past the few frames whose window reaches back into
    the audio, every padding frame is the log-mel of pure silence: the same value, floored at the file's
    loudest bin - 8 like the rest. So the STFT runs over the audio and MEL_TAIL_SAMPLES of zeros (its last
    frame already pure silence) and that frame is repeated to the full length. For a 4 s clip that is a
    tenth of the FFT work (~15 ms a file); tests/whisper_export/runtime/test_perf_paths.py holds it to the original.
    """
    waveform = as_audio(audio)
    mel = log_mel_spectrogram(waveform, n_mels, padding=MEL_TAIL_SAMPLES)
    total = (len(waveform) + N_SAMPLES) // HOP_LENGTH
    done = mel.shape[-1]
    out = np.empty((n_mels, total), np.float32)
    out[:, :done] = mel
    out[:, done:] = mel[:, -1:]
    return out


@dataclass(frozen=True)
class Segment:
    id: int
    seek: int  # mel frame where the window that produced it starts
    start: float  # seconds
    end: float
    text: str
    tokens: list[int]  # with timestamp tokens
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


@dataclass(frozen=True)
class TranscriptionResult:
    text: str
    language: str
    segments: list[Segment]
    language_probs: dict[str, float] | None = field(default=None, repr=False)


class _Job:
    """One audio's progress through its windows: openai-whisper's transcribe() locals."""

    def __init__(self, index: int, source: MelSource, language: str | None, initial_prompt: list[int], n_ctx: int,
                 clips: Sequence[tuple[float, float | None]] = ((0.0, None),),
                 on_segment: SegmentCallback | None = None, carry_initial_prompt: bool = False):
        self.index = index
        self.source = source  # the audio's log-mel, window by window
        self.content_frames = source.content_frames
        self.language = language
        self.language_probs: dict[str, float] | None = None
        # clip_timestamps as frame spans [start, end) still ahead, cut to the audio: seek stays inside them
        last = self.content_frames
        self.clips = [
            (round(start * FRAMES_PER_SECOND), last if end is None else min(round(end * FRAMES_PER_SECOND), last))
            for start, end in clips
        ]
        self.on_segment = on_segment
        self.carry_initial_prompt = carry_initial_prompt
        self.seek = self.clips[0][0] if self.clips else 0
        self.all_tokens = list(initial_prompt)
        self.n_initial = len(initial_prompt)
        self.prompt_reset_since = 0
        self.segments: list[Segment] = []
        self._sound: np.ndarray | None = None  # skip_silence: which frames are sound, computed once
        self.max_prompt = n_ctx // 2 - 1

    @property
    def done(self) -> bool:
        self._enter_clip()
        return not self.clips

    def _enter_clip(self) -> None:
        """openai-whisper's clip rule: a seek past its clip's end moves on to the next clip's start."""
        while self.clips and self.seek >= self.clips[0][1]:
            self.clips.pop(0)
        if self.clips:
            self.seek = max(self.seek, self.clips[0][0])

    def prompt(self) -> list[int]:
        if self.carry_initial_prompt:  # openai-whisper's: the initial prompt, then the latest text that fits
            rest = self.all_tokens[max(self.n_initial, self.prompt_reset_since) :]
            return self.all_tokens[: self.n_initial] + rest[-(self.max_prompt - self.n_initial) :]
        return self.all_tokens[self.prompt_reset_since :]

    def skip_silence(self) -> None:
        """Move seek to shortly before the next sound, or to the end when only silence is left."""
        if self._sound is None:
            levels = self.source.frame_levels()
            self._sound = (levels > levels.max(initial=-np.inf) - SILENCE_BELOW_PEAK) & (levels > SILENCE_FLOOR)
        ahead = np.flatnonzero(self._sound[self.seek :])
        if ahead.size == 0:
            self.seek = self.content_frames
        else:
            self.seek += max(int(ahead[0]) - SILENCE_LEAD_FRAMES, 0)

    def window(self) -> tuple[np.ndarray, int]:
        self._enter_clip()
        mel, size = self.source.window(self.seek)
        return mel, min(size, self.clips[0][1] - self.seek)

    def consume(self, result: DecodingResult, size: int, tokenizer: WhisperTokenizer, options: TranscribeOptions) -> None:
        """Turn one window's result into segments and advance seek (openai-whisper's rules)."""
        if options.no_speech_threshold is not None:
            # silence: the model says no speech and is unsure of the text it produced anyway
            skip = result.no_speech_prob > options.no_speech_threshold
            if options.logprob_threshold is not None and result.avg_logprob > options.logprob_threshold:
                skip = False
            if skip:
                self.seek += size
                return
        window_seek = self.seek
        ts_begin = tokenizer.special.timestamp_begin
        time_offset = window_seek * HOP_LENGTH / SAMPLE_RATE
        precision = 2 * HOP_LENGTH / SAMPLE_RATE  # 0.02 s per timestamp token, 2 mel frames
        tokens = np.asarray(result.tokens, dtype=np.int64)
        is_ts = tokens >= ts_begin
        single_timestamp_ending = is_ts[-2:].tolist() == [False, True]
        consecutive = (np.nonzero(is_ts[:-1] & is_ts[1:])[0] + 1).tolist()
        pieces: list[tuple[float, float, list[int]]] = []
        if consecutive:  # <|t0|> text <|t1|><|t1|> text <|t2|> ...: complete segments
            slices = consecutive + ([len(tokens)] if single_timestamp_ending else [])
            last = 0
            for current in slices:
                piece = tokens[last:current]
                pieces.append((
                    time_offset + (int(piece[0]) - ts_begin) * precision,
                    time_offset + (int(piece[-1]) - ts_begin) * precision,
                    [int(t) for t in piece],
                ))
                last = current
            if single_timestamp_ending:  # nothing was said after the last timestamp
                self.seek += size
            else:  # the text after the last pair was cut by the window: decode it again from there
                # max(.., 1): never decode the same window twice (the timestamp rules make 0 unlikely anyway)
                self.seek += max((int(tokens[last - 1]) - ts_begin) * 2, 1)
        else:
            duration = size * HOP_LENGTH / SAMPLE_RATE
            stamps = tokens[is_ts]
            if len(stamps) and stamps[-1] != ts_begin:  # one timestamp: the end of the speech
                duration = (int(stamps[-1]) - ts_begin) * precision
            pieces.append((time_offset, time_offset + duration, tokens.tolist()))
            self.seek += size
        audio_end = self.content_frames * HOP_LENGTH / SAMPLE_RATE
        for start, end, piece_tokens in pieces:
            # timestamps past the end of the audio (in the window's zero padding) cannot be right; openai-whisper
            # keeps them, here they are clamped, and a segment wholly past the end loses its text below
            start, end = min(start, audio_end), min(end, audio_end)
            text = tokenizer.decode([t for t in piece_tokens if t < tokenizer.special.eot])
            if start == end or not text.strip():  # instantaneous or empty: keep the time, drop the text
                text, piece_tokens = "", []
            self.segments.append(Segment(
                len(self.segments), window_seek, start, end, text, piece_tokens,
                result.temperature, result.avg_logprob, result.compression_ratio, result.no_speech_prob,
            ))
            if self.on_segment is not None:
                self.on_segment(self.index, self.segments[-1])
            self.all_tokens.extend(piece_tokens)
        if not options.condition_on_previous_text or result.temperature > 0.5:
            # text sampled hot is a poor prompt: start the next window afresh
            self.prompt_reset_since = len(self.all_tokens)

    def result(self, tokenizer: WhisperTokenizer) -> TranscriptionResult:
        return TranscriptionResult(
            tokenizer.decode(self.all_tokens[self.n_initial :]).strip(),
            self.language or "en",
            list(self.segments),
            self.language_probs,
        )


def needs_fallback(result: DecodingResult, options: TranscribeOptions) -> bool:
    o = options
    if o.compression_ratio_threshold is not None and result.compression_ratio > o.compression_ratio_threshold:
        return True  # too repetitive
    unsure = o.logprob_threshold is not None and result.avg_logprob < o.logprob_threshold
    if unsure and o.no_speech_threshold is not None and result.no_speech_prob > o.no_speech_threshold:
        return False  # silence: a hotter retry would only invent text
    return unsure


class Transcriber:
    """Many audios at once through one scheduler: each audio's windows in order (window k + 1 is prompted with
    the text of window k, as openai-whisper does), the windows of different audios decoded together."""

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
        the order they finish (the others go on). Option errors that concern every audio raise before the first.
        on_segment is called with (input index, segment) as each segment is made."""
        tok = self.tokenizer
        if decoding.get("prompt") is not None:
            # each window's prompt is the text so far; a fixed one would be silently replaced
            raise ValueError(
                f"prompt: received {decoding['prompt']!r} for a transcription, expected initial_prompt "
                "(the text before the first window; later windows are prompted with the text so far)"
            )
        language = decoding.get("language")
        # a language or task this model lacks fails here, before any audio is read
        tok.sot_sequence(language or ("en" if tok.is_multilingual else None), decoding.get("task", "transcribe"))
        if language is None and not tok.is_multilingual:
            language = "en"
        initial = tok.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else []
        return _Run(self, list(audios), options, decoding, progress, language, initial, on_segment).outcomes()


class _Run:
    """One Transcriber.run: audios opened a few at a time, their windows fed to a scheduler as they come."""

    def __init__(self, transcriber: Transcriber, audios: list[AudioInput], options: TranscribeOptions,
                 decoding: Mapping[str, Any], progress: ProgressCallback | None, language: str | None,
                 initial: list[int], on_segment: SegmentCallback | None = None):
        self.backend, self.tokenizer = transcriber.backend, transcriber.tokenizer
        self.on_segment = on_segment
        self.options, self.decoding, self.progress = options, decoding, progress
        self.language, self.initial = language, initial
        self.pending = deque(enumerate(audios))
        self.jobs: dict[int, _Job] = {}
        self.finished: deque[tuple[int, TranscriptionResult | Exception]] = deque()
        self.scheduler = Scheduler(self.backend, options.batch_size)

    def outcomes(self) -> Iterator[tuple[int, TranscriptionResult | Exception]]:
        while True:
            self._open()
            while self.finished:
                yield self.finished.popleft()
            if self.scheduler.busy:
                self.scheduler.tick()
            elif not self.pending:
                assert not self.jobs, "every open audio has a window in the scheduler"
                return

    def _open(self) -> None:
        """Keep twice the scheduler's windows of audios open (their log-mel computed), so a freed slot always
        has a taker; a file that cannot be read is that file's outcome."""
        dims, opened = self.backend.dims, []
        while self.pending and len(self.jobs) < 2 * self.options.batch_size:
            index, audio = self.pending.popleft()
            try:
                source = MelSource(audio, dims.n_mels, max_duration=self.options.max_duration)
            except Exception as e:  # noqa: BLE001 - one unreadable file must not stop the others
                self.finished.append((index, e))
                continue
            job = self.jobs[index] = _Job(index, source, self.language, self.initial, dims.n_text_ctx,
                                          self.options.clips(), self.on_segment, self.options.carry_initial_prompt)
            opened.append(job)
            if self.progress:
                self.progress(index, 0, job.content_frames)
        unknown = [job for job in opened if job.language is None]
        for start in range(0, len(unknown), self.options.batch_size):
            self._detect(unknown[start : start + self.options.batch_size])
        for job in opened:
            if job.index in self.jobs:
                self._next_window(job)

    def _detect(self, jobs: list[_Job]) -> None:
        """The first 30 s decide the language of the whole audio, seen as openai-whisper sees them: the log-mel
        of the zero-padded audio (the decoded window is padded with 0.0 instead, which detects worse)."""
        first = np.stack([job.source.language_window() for job in jobs])
        try:
            codes, probs = detect_language(self.backend, self.tokenizer, self.backend.encode(first), len(jobs))
        except Exception as e:  # noqa: BLE001 - these audios fail, the others go on
            for job in jobs:
                self._fail(job, e)
            return
        for job, code, p in zip(jobs, codes, probs):
            job.language, job.language_probs = code, p

    def _next_window(self, job: _Job) -> None:
        if self.options.skip_silence and not job.done:
            job.skip_silence()
        if job.done:
            del self.jobs[job.index]
            job.source.close()
            self.finished.append((job.index, job.result(self.tokenizer)))
            return
        mel, size = job.window()
        self._submit(job, mel, size, 0)

    def _submit(self, job: _Job, mel: np.ndarray, size: int, attempt: int) -> None:
        temperature = self.options.temperatures[attempt]
        decode = WindowDecode(self.tokenizer, self.backend.dims, decoding_at(self.decoding, temperature),
                              job.language or "en", job.prompt())
        self.scheduler.submit(Window(mel, decode, self._done, lambda _w, e: self._fail(job, e),
                                     tag=(job, size, attempt)))

    def _done(self, window: Window) -> None:
        job, size, attempt = window.tag
        try:
            result = window.decode.result()
            if needs_fallback(result, self.options) and attempt + 1 < len(self.options.temperatures):
                self._submit(job, window.mel, size, attempt + 1)  # only this window, hotter
                return
            job.consume(result, size, self.tokenizer, self.options)
            if self.progress:
                self.progress(job.index, min(job.seek, job.content_frames), job.content_frames)
            self._next_window(job)
        except Exception as e:  # noqa: BLE001 - this audio fails, the others go on
            self._fail(job, e)

    def _fail(self, job: _Job, error: Exception) -> None:
        if self.jobs.pop(job.index, None) is not None:
            job.source.close()
            self.finished.append((job.index, error))
