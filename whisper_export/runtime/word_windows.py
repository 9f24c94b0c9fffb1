"""Word timestamps in the transcription loop: openai-whisper's transcribe() steps between a window's segments and
their commit, for a batch of windows at once.

The windows' tokens go through Backend.align together (one run of align.onnx while the windows' cross K/V are
alive), then each window gets its words (runtime/words.py), its seek moved to the end of its last word when the
window ended in the middle of a segment, and, with hallucination_silence_threshold, openai's skipping of silence
around segments that look hallucinated (which may end the window early or drop it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from whisper_export.backends.base import Backend, CrossKV
from whisper_export.runtime.audio import HOP_LENGTH, N_FRAMES, SAMPLE_RATE
from whisper_export.runtime.words import (
    APPEND_PUNCTUATIONS,
    PREPEND_PUNCTUATIONS,
    AlignmentRow,
    HeadMap,
    SegmentWords,
    WordTiming,
    add_word_timestamps,
    alignment_matrix,
    find_alignments,
)
from whisper_export.tokenizer import WhisperTokenizer

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # mel frames: 100 a second
# openai-whisper's hallucination rules leave these marks out of a segment's words (its literal list)
_PUNCTUATION = PREPEND_PUNCTUATIONS + APPEND_PUNCTUATIONS


@dataclass
class WindowWords:
    """A window whose segments await their words: what LongFormJob.consume (longform.py) made of its result."""

    language: str
    previous_seek: int  # mel frame where the window starts
    seek: int  # mel frame where the next window starts (the segment rules'; the word rules may move it)
    n_frames: int  # mel frames of audio in the window
    content_frames: int  # mel frames of the whole audio
    single_timestamp_ending: bool  # the window's text ended with one timestamp (nothing cut off)
    segments: list[SegmentWords]
    last_speech_timestamp: float  # seconds where speech ended before the window; after it, once timed
    dropped: bool = False  # hallucination_silence_threshold skipped the whole window
    cross_row: int = -1  # its row (slot) of the cross K/V it was encoded into, set by the transcription loop

    @property
    def time_offset(self) -> float:
        return self.previous_seek * HOP_LENGTH / SAMPLE_RATE


def time_words(backend: Backend, tokenizer: WhisperTokenizer, cross: CrossKV, windows: Sequence[WindowWords], *,
               task: str = "transcribe", prepend_punctuations: str = PREPEND_PUNCTUATIONS,
               append_punctuations: str = APPEND_PUNCTUATIONS,
               hallucination_silence_threshold: float | None = None, map_heads: HeadMap = map) -> None:
    """Give every segment of the windows its words (in place), then apply openai's seek and hallucination rules
    to each window. cross: the windows' encoder output, still alive (each window's cross_row is its row);
    map_heads: how the alignment matrices' per-head work is mapped (words.alignment_matrix)."""
    eot = tokenizer.special.eot
    alignments = _align(backend, tokenizer, cross, windows, task, map_heads)
    for window, alignment in zip(windows, alignments):
        add_word_timestamps(window.segments, alignment, eot=eot, time_offset=window.time_offset,
                            last_speech_timestamp=window.last_speech_timestamp,
                            prepend_punctuations=prepend_punctuations, append_punctuations=append_punctuations)
        _after_words(window, hallucination_silence_threshold)


def _align(backend: Backend, tokenizer: WhisperTokenizer, cross: CrossKV, windows: Sequence[WindowWords],
           task: str, map_heads: HeadMap) -> list[list[WordTiming]]:
    """openai's find_alignment of every window: one Backend.align_matrices (or Backend.align and the matrices on
    the host, map_heads mapping their heads' work) and one DTW sweep over the windows with text."""
    special = tokenizer.special
    texts = [[t for s in w.segments for t in s.tokens if t < special.eot] for w in windows]
    rows = [k for k, text in enumerate(texts) if text]
    alignments: list[list[WordTiming]] = [[] for _ in windows]
    if not rows:
        return alignments
    prefixes = {k: [*tokenizer.sot_sequence(windows[k].language, task), special.no_timestamps] for k in rows}
    sequences = [prefixes[k] + texts[k] + [special.eot] for k in rows]
    lengths = np.array([len(s) for s in sequences], np.int64)
    tokens = np.full((len(rows), int(lengths.max())), special.eot, np.int64)
    for r, sequence in enumerate(sequences):
        tokens[r, : len(sequence)] = sequence
    audio_rows = np.array([windows[k].cross_row for k in rows], np.int64)
    frames = np.array([windows[k].n_frames // 2 for k in rows], np.int64)
    on_backend = backend.align_matrices(cross, audio_rows, tokens, lengths, frames)
    if on_backend is not None:
        matrix, probs = on_backend
        matrices = [matrix[r, : lengths[r], : frames[r]] for r in range(len(rows))]
    else:
        qk, probs = backend.align(cross, audio_rows, tokens, lengths)
        matrices = [alignment_matrix(qk[r, :, : lengths[r]], windows[k].n_frames, map_heads=map_heads)
                    for r, k in enumerate(rows)]
    timed = find_alignments([AlignmentRow(matrices[r], probs[r, : lengths[r] - 1], texts[k], len(prefixes[k]) - 1,
                                          windows[k].language) for r, k in enumerate(rows)], tokenizer)
    for k, alignment in zip(rows, timed):
        alignments[k] = alignment
    return alignments


def _end(segments: Sequence[SegmentWords]) -> float | None:
    """openai's get_end: the last word's end, else the last segment's end, else None."""
    return next((w.end for s in reversed(segments) for w in reversed(s.words or [])),
                segments[-1].end if segments else None)


def _after_words(window: WindowWords, threshold: float | None) -> None:
    """openai's transcribe() after add_word_timestamps: the next window starts at the last word's end when this
    one was cut mid-segment; with a hallucination threshold, silence before a segment that looks hallucinated is
    skipped (the window dropped when its first segment is one, or cut before it); last_speech_timestamp moves on."""
    time_offset = window.time_offset
    if not window.single_timestamp_ending:
        last_word_end = _end(window.segments)
        if last_word_end is not None and last_word_end > time_offset:
            window.seek = round(last_word_end * FRAMES_PER_SECOND)
    if threshold is not None and _skip_hallucinations(window, threshold):
        return
    last_word_end = _end(window.segments)
    if last_word_end is not None:
        window.last_speech_timestamp = last_word_end


def _skip_hallucinations(window: WindowWords, threshold: float) -> bool:
    """openai's hallucination_silence_threshold rules on a timed window (in place); True when the whole window is
    dropped (seek moved past the silence before its first, anomalous, segment)."""
    time_offset = window.time_offset
    window_end_time = (window.previous_seek + N_FRAMES) * HOP_LENGTH / SAMPLE_RATE
    segments = window.segments
    if not window.single_timestamp_ending:
        last_word_end = _end(segments)
        if last_word_end is not None and last_word_end > time_offset:
            if window_end_time - last_word_end > threshold:
                window.seek = round(last_word_end * FRAMES_PER_SECOND)
            else:
                window.seek = window.previous_seek + window.n_frames
    first = next((s for s in segments if s.words), None)
    if first is not None and _is_anomaly(first):
        gap = first.start - time_offset
        if gap > threshold:
            window.seek = window.previous_seek + round(gap * FRAMES_PER_SECOND)
            window.dropped = True
            return True
    hal_last_end = window.last_speech_timestamp
    segment_duration = window.n_frames * HOP_LENGTH / SAMPLE_RATE
    content_duration = window.content_frames * HOP_LENGTH / SAMPLE_RATE
    for si, segment in enumerate(segments):
        if not segment.words:
            continue
        if _is_anomaly(segment):
            following = next((s for s in segments[si + 1 :] if s.words), None)
            hal_next_start = following.words[0].start if following is not None else time_offset + segment_duration
            silence_before = (segment.start - hal_last_end > threshold or segment.start < threshold
                              or segment.start - time_offset < 2.0)
            silence_after = (hal_next_start - segment.end > threshold or _is_anomaly(following)
                             or window_end_time - segment.end < 2.0)
            if silence_before and silence_after:
                window.seek = round(max(time_offset + 1, segment.start) * FRAMES_PER_SECOND)
                if content_duration - segment.end < threshold:
                    window.seek = window.content_frames
                del segments[si:]
                break
        hal_last_end = segment.end
    return False


def _word_anomaly(word) -> float:
    """openai's word_anomaly_score: improbable, very short or very long words score."""
    duration = word.end - word.start
    score = 1.0 if word.probability < 0.15 else 0.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def _is_anomaly(segment: SegmentWords | None) -> bool:
    """openai's is_segment_anomaly: the first 8 words (punctuation left out) score too much."""
    if segment is None or not segment.words:
        return False
    words = [w for w in segment.words if w.word not in _PUNCTUATION][:8]
    score = sum(_word_anomaly(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)
