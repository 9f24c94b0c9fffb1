"""One audio through its windows: openai-whisper's seek-based transcribe(), as the state of one job.

Each audio's log-mel (padded with 30 s of zeros, as openai-whisper does; runtime/mel_source.py computes it
window by window) is cut into 30 s windows; the timestamp tokens of a window's result become segments and move
`seek` to the last complete segment, so a sentence cut at the window's end is decoded again in the next window.
The transcription loop (transcribe.py) asks a job for its next window and hands it back the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from whisper_export.runtime.audio import FRAMES_PER_SECOND, HOP_LENGTH, SAMPLE_RATE
from whisper_export.runtime.decoding import DecodingResult
from whisper_export.runtime.mel_source import MelSource
from whisper_export.runtime.options import TranscribeOptions
from whisper_export.runtime.word_windows import WindowWords
from whisper_export.runtime.words import SegmentWords, Word
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


class LongFormJob:
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
        self.last_speech_timestamp = 0.0  # word timestamps: where the speech so far ended (seconds)
        self._sound: np.ndarray | None = None  # skip_silence: which frames are sound, computed once
        self.max_prompt = n_ctx // 2 - 1

    @property
    def done(self) -> bool:
        self._enter_clip()
        return not self.clips

    def _enter_clip(self) -> None:
        """openai-whisper's clip rule: a seek past its clip's end moves on to the next clip's start. A clip whose
        start lies at or past its end (ends are cut to the audio) is passed over too."""
        while self.clips:
            start, end = self.clips[0]
            self.seek = max(self.seek, start)
            if self.seek < end:
                return
            self.clips.pop(0)

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
        return self.source.window(self.seek, self.clips[0][1])  # openai: the clip's end pads the window

    def consume(self, result: DecodingResult, size: int, tokenizer: WhisperTokenizer,
                options: TranscribeOptions) -> WindowWords | None:
        """Turn one window's result into segments and advance seek (openai-whisper's rules). With word_timestamps
        the segments are returned uncommitted (None for a window skipped as silence): the caller times their words
        (word_windows.time_words, on the window's cross K/V) and then commit()s them."""
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
        window = WindowWords(language=self.language or "en", previous_seek=window_seek,
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
