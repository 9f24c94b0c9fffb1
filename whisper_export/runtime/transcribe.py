"""Long-form transcription: openai-whisper's seek-based transcribe(), for several audios at once.

Each audio's log-mel (padded with 30 s of zeros, as openai-whisper does) is cut into 30 s windows; the
timestamp tokens of a window's result become segments and move `seek` to the last complete segment, so a
sentence cut at the window's end is decoded again in the next window. Windows of different audios are
decoded together when their prompts have the same length (the decoder rows share one token array): always
for the first window, and for every window when condition_on_previous_text is off. Other windows fall back
to smaller batches, down to one audio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from whisper_export.runtime.audio import (
    HOP_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    AudioInput,
    as_audio,
    log_mel_spectrogram,
    pad_or_trim,
)
from whisper_export.backends.base import Backend, CrossKV
from whisper_export.runtime.decoding import DecodingResult, DecodingTask, detect_language
from whisper_export.runtime.options import TranscribeOptions, decoding_at
from whisper_export.runtime.word_windows import WindowWords, time_words
from whisper_export.runtime.words import SegmentWords, Word
from whisper_export.tokenizer import WhisperTokenizer

# (audio index, frames done, frames in total) after each window
ProgressCallback = Callable[[int, int, int], None]

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
    words: list[Word] | None = None  # with word_timestamps (an empty list for a cleared segment)


@dataclass(frozen=True)
class TranscriptionResult:
    text: str
    language: str
    segments: list[Segment]
    language_probs: dict[str, float] | None = field(default=None, repr=False)


class _Job:
    """One audio's progress through its windows: openai-whisper's transcribe() locals."""

    def __init__(self, index: int, mel: np.ndarray, language: str | None, initial_prompt: list[int], n_ctx: int):
        self.index = index
        self.mel = mel  # (n_mels, content_frames + N_FRAMES)
        self.content_frames = mel.shape[-1] - N_FRAMES
        self.language = language
        self.language_probs: dict[str, float] | None = None
        self.seek = 0
        self.all_tokens = list(initial_prompt)
        self.n_initial = len(initial_prompt)
        self.prompt_reset_since = 0
        self.segments: list[Segment] = []
        self.last_speech_timestamp = 0.0  # word timestamps: where the speech so far ended (seconds)
        self._sound: np.ndarray | None = None  # skip_silence: which frames are sound, computed once
        self.max_prompt = n_ctx // 2 - 1

    @property
    def done(self) -> bool:
        return self.seek >= self.content_frames

    def prompt(self) -> list[int]:
        return self.all_tokens[self.prompt_reset_since :]

    def prompt_length(self) -> int:
        """Tokens the prompt adds before the sot sequence (what DecodingTask keeps of it)."""
        n = len(self.prompt())
        return 0 if n == 0 else 1 + min(n, self.max_prompt)

    def skip_silence(self) -> None:
        """Move seek to shortly before the next sound, or to the end when only silence is left."""
        if self._sound is None:
            levels = self.mel[:, : self.content_frames].max(axis=0)
            self._sound = (levels > levels.max(initial=-np.inf) - SILENCE_BELOW_PEAK) & (levels > SILENCE_FLOOR)
        ahead = np.flatnonzero(self._sound[self.seek :])
        if ahead.size == 0:
            self.seek = self.content_frames
        else:
            self.seek += max(int(ahead[0]) - SILENCE_LEAD_FRAMES, 0)

    def window(self) -> tuple[np.ndarray, int]:
        size = min(N_FRAMES, self.content_frames - self.seek)
        return pad_or_trim(self.mel[:, self.seek : self.seek + size], N_FRAMES), size

    def consume(self, result: DecodingResult, size: int, tokenizer: WhisperTokenizer, options: TranscribeOptions,
                cross_row: int = 0) -> WindowWords | None:
        """Turn one window's result into segments and advance seek (openai-whisper's rules). With word_timestamps
        the segments are returned uncommitted (None for a window skipped as silence): the caller times their words
        (word_windows.time_words, the window's cross K/V at cross_row) and then commit()s them."""
        if options.no_speech_threshold is not None:
            # silence: the model says no speech and is unsure of the text it produced anyway
            skip = result.no_speech_prob > options.no_speech_threshold
            if options.logprob_threshold is not None and result.avg_logprob > options.logprob_threshold:
                skip = False
            if skip:
                self.seek += size
                return None
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
        window = WindowWords(cross_row=cross_row, language=self.language or "en", previous_seek=window_seek,
                             seek=self.seek, n_frames=size, content_frames=self.content_frames,
                             single_timestamp_ending=single_timestamp_ending,
                             segments=[SegmentWords(*piece) for piece in pieces],
                             last_speech_timestamp=self.last_speech_timestamp)
        if options.word_timestamps:
            return window
        self.commit(window, result, tokenizer, options)
        return None

    def commit(self, window: WindowWords, result: DecodingResult, tokenizer: WhisperTokenizer,
               options: TranscribeOptions) -> None:
        """The window's segments (with their words, when timed) into the transcript; seek moves to window.seek."""
        window_seek = window.previous_seek
        self.seek, self.last_speech_timestamp = window.seek, window.last_speech_timestamp
        if window.dropped:  # hallucination_silence_threshold: only silence and a hallucination, decode again later
            return
        audio_end = self.content_frames * HOP_LENGTH / SAMPLE_RATE
        for piece in window.segments:
            # timestamps past the end of the audio (in the window's zero padding) cannot be right; openai-whisper
            # keeps them, here they are clamped, and a segment wholly past the end loses its text below
            start, end, piece_tokens = min(piece.start, audio_end), min(piece.end, audio_end), piece.tokens
            words = None if piece.words is None else [_clamped(w, audio_end) for w in piece.words]
            text = tokenizer.decode([t for t in piece_tokens if t < tokenizer.special.eot])
            if start == end or not text.strip():  # instantaneous or empty: keep the time, drop the text
                text, piece_tokens, words = "", [], None if words is None else []
            self.segments.append(Segment(
                len(self.segments), window_seek, start, end, text, piece_tokens,
                result.temperature, result.avg_logprob, result.compression_ratio, result.no_speech_prob, words,
            ))
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


def _clamped(word: Word, audio_end: float) -> Word:
    """A word inside the audio: times past its end (in the window's padding) moved to the end, as segments'."""
    if word.end <= audio_end:
        return word
    return Word(word.word, min(word.start, audio_end), audio_end, word.probability)


def needs_fallback(result: DecodingResult, options: TranscribeOptions) -> bool:
    o = options
    if o.compression_ratio_threshold is not None and result.compression_ratio > o.compression_ratio_threshold:
        return True  # too repetitive
    unsure = o.logprob_threshold is not None and result.avg_logprob < o.logprob_threshold
    if unsure and o.no_speech_threshold is not None and result.no_speech_prob > o.no_speech_threshold:
        return False  # silence: a hotter retry would only invent text
    return unsure


class Transcriber:
    def __init__(self, backend: Backend, tokenizer: WhisperTokenizer):
        self.backend, self.tokenizer = backend, tokenizer

    def run(
        self,
        audios: Sequence[AudioInput],
        options: TranscribeOptions,
        decoding: Mapping[str, Any],
        progress: ProgressCallback | None = None,
    ) -> Iterator[tuple[int, TranscriptionResult | Exception]]:
        """(input index, its result or the exception that stopped it), each as soon as that audio is done, in
        the order they finish (the others go on). Option errors that concern every audio raise before the first."""
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
        return self._run(audios, options, decoding, progress, language, initial)

    def _run(self, audios, options, decoding, progress, language, initial) -> Iterator[tuple[int, TranscriptionResult | Exception]]:
        tok, dims = self.tokenizer, self.backend.dims
        jobs: list[_Job] = []
        for i, audio in enumerate(audios):
            try:
                mel = long_form_mel(audio, dims.n_mels)
            except Exception as e:  # noqa: BLE001 - one unreadable file must not stop the others
                yield i, e
                continue
            jobs.append(_Job(i, mel, language, initial, dims.n_text_ctx))
            if progress:
                progress(i, 0, jobs[-1].content_frames)
        while True:
            if options.skip_silence:
                for job in jobs:
                    if not job.done:
                        job.skip_silence()
            for job in [j for j in jobs if j.done]:  # only silence was left
                jobs.remove(job)
                yield job.index, job.result(tok)
            active = list(jobs)
            if not active:
                break
            # batch the windows whose prompts are as long as the first one's
            key = active[0].prompt_length()
            group = [j for j in active if j.prompt_length() == key][: options.batch_size]
            try:
                self._step(group, options, decoding)
            except Exception as e:  # noqa: BLE001 - fail the group's audios, keep the rest
                for job in group:
                    jobs.remove(job)
                    yield job.index, e
                continue
            if progress:
                for job in group:
                    progress(job.index, min(job.seek, job.content_frames), job.content_frames)
            for job in group:
                if job.done:
                    jobs.remove(job)
                    yield job.index, job.result(tok)

    def _step(self, group: list[_Job], options: TranscribeOptions, decoding: Mapping[str, Any]) -> None:
        windows = [job.window() for job in group]
        mel = np.stack([w for w, _ in windows])
        cross = self.backend.encode(mel)
        unknown = [job for job in group if job.language is None]
        if unknown:
            # the first 30 s decide the language of the whole audio, seen as openai-whisper sees them: the log-mel
            # of the zero-padded audio (the decoded window is padded with 0.0 instead, which detects worse)
            first = np.stack([pad_or_trim(job.mel, N_FRAMES) for job in unknown])
            codes, probs = detect_language(self.backend, self.tokenizer, self.backend.encode(first), len(unknown))
            for job, code, p in zip(unknown, codes, probs):
                job.language, job.language_probs = code, p
        results = self._decode_with_fallback(group, mel, cross, options, decoding)
        pending = [(job, result, job.consume(result, size, self.tokenizer, options, row))
                   for row, (job, result, (_, size)) in enumerate(zip(group, results, windows))]
        timed = [(job, result, window) for job, result, window in pending if window is not None]
        if timed:  # word_timestamps: the windows' words, while their cross K/V (rows of `cross`) are alive
            time_words(self.backend, self.tokenizer, cross, [w for _, _, w in timed],
                       task=decoding.get("task", "transcribe"), prepend_punctuations=options.prepend_punctuations,
                       append_punctuations=options.append_punctuations,
                       hallucination_silence_threshold=options.hallucination_silence_threshold)
            for job, result, window in timed:
                job.commit(window, result, self.tokenizer, options)

    def _decode_with_fallback(
        self, group: list[_Job], mel: np.ndarray, cross: CrossKV, options: TranscribeOptions, decoding: Mapping[str, Any]
    ) -> list[DecodingResult]:
        """Decode at the first temperature; retry the windows that fail the quality checks hotter."""
        results: list[DecodingResult | None] = [None] * len(group)
        pending = list(range(len(group)))
        for temperature in options.temperatures:
            task = DecodingTask(self.backend, self.tokenizer, decoding_at(decoding, temperature))
            decoded = task.run(
                cross,
                len(pending),
                languages=[group[k].language for k in pending],
                prompts=[group[k].prompt() for k in pending],
            )
            retry = []
            for k, result in zip(pending, decoded):
                results[k] = result
                if needs_fallback(result, options):
                    retry.append(k)
            if not retry:
                break
            if len(retry) != len(pending):
                cross = self.backend.encode(np.ascontiguousarray(mel[retry]))  # cross K/V rows = the audios left
            pending = retry
        return results  # type: ignore[return-value]
