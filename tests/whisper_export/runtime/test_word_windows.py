"""The transcription loop's word rules on hand-made windows (runtime/word_windows.py): the next window starts at the
last word's end when a window was cut mid-segment, and openai-whisper's hallucination_silence_threshold rules,
each case worked out from openai-whisper's transcribe() here."""

from __future__ import annotations

from whisper_export.runtime.word_windows import WindowWords, _after_words
from whisper_export.runtime.words import SegmentWords, Word


def _segment(words: list[tuple[str, float, float, float]]) -> SegmentWords:
    return SegmentWords(words[0][1], words[-1][2], [1, 2], [Word(*w) for w in words])


def _window(segments: list[SegmentWords], *, start_frame: int = 1000, seek: int = 4000, single: bool = False,
            last_speech: float = 9.0, n_frames: int = 3000, content_frames: int = 9000) -> WindowWords:
    return WindowWords("en", start_frame, seek, n_frames, content_frames, single, segments, last_speech)


CLEAR = [(" Hello", 10.5, 10.9, 0.9), (" there", 10.9, 11.4, 0.8), (" friend.", 11.4, 12.34, 0.95)]
# improbable and very short words: openai's anomaly score >= the number of words
ANOMALOUS = [(" uh", 16.0, 16.05, 0.05), (" the", 16.05, 16.1, 0.1), (" um", 16.1, 16.12, 0.02)]


def test_cut_window_continues_at_the_last_word():
    window = _window([_segment(CLEAR)])
    _after_words(window, None)
    assert window.seek == 1234 and window.last_speech_timestamp == 12.34 and not window.dropped
    single = _window([_segment(CLEAR)], single=True)  # nothing was cut: the segment rules' seek stays
    _after_words(single, None)
    assert single.seek == 4000 and single.last_speech_timestamp == 12.34


def test_threshold_with_little_left_in_the_window_moves_to_its_end():
    # the window (10..40 s) has 27.66 s left after the last word: more than the threshold, seek to the word's end
    window = _window([_segment(CLEAR)])
    _after_words(window, 30.0)
    assert window.seek == 1000 + 3000  # 27.66 s left <= 30 s: the whole window is done
    window = _window([_segment(CLEAR)])
    _after_words(window, 2.0)
    assert window.seek == 1234


def test_anomalous_first_segment_after_silence_drops_the_window():
    # the first segment with words is anomalous and starts 6 s into the window (> 2 s): decode again from there
    window = _window([_segment(ANOMALOUS), _segment(CLEAR)], single=True)
    _after_words(window, 2.0)
    assert window.dropped and window.seek == 1000 + 600
    assert window.last_speech_timestamp == 9.0  # unchanged: nothing was kept
    near = _window([_segment(ANOMALOUS)], start_frame=1500, single=True)  # starts 1 s in: not after a silence
    _after_words(near, 2.0)
    assert not near.dropped


def test_anomaly_between_silences_cuts_the_window():
    later = [(w, s + 20.0, e + 20.0, p) for w, s, e, p in CLEAR]  # 30.5..32.34 s
    window = _window([_segment(CLEAR), _segment(ANOMALOUS), _segment(later)], single=True)
    _after_words(window, 2.0)
    # silence before (16.0 - 12.34 > 2) and after (30.5 - 16.12 > 2): the anomaly and what follows are dropped,
    # the next window starts at the anomaly
    assert len(window.segments) == 1 and window.seek == 1600 and not window.dropped
    assert window.last_speech_timestamp == 12.34
    # at the end of the audio the rest is skipped
    window = _window([_segment(CLEAR), _segment(ANOMALOUS)], single=True, content_frames=1700)
    _after_words(window, 2.0)
    assert window.seek == 1700 and len(window.segments) == 1
    # without the threshold nothing is dropped
    window = _window([_segment(CLEAR), _segment(ANOMALOUS), _segment(later)], single=True)
    _after_words(window, None)
    assert len(window.segments) == 3 and window.seek == 4000
