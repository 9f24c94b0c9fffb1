"""Word timestamps in numpy, as openai-whisper's timing.py computes them from its model's cross-attention.

From align.onnx's outputs for one window (Backend.align): the alignment heads' scores cut to the window's frames,
softmaxed, normalised over the tokens and median-filtered (width 7) along time, averaged over the heads; dynamic
time warping of the text tokens against the frames; tokens grouped into words (at spaces, or at each complete
character for languages written without them); openai's punctuation merging; its duration heuristics at
sentence and segment boundaries; each word's probability (the mean of its tokens').
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from whisper_export.runtime.audio import HOP_LENGTH, SAMPLE_RATE
from whisper_export.runtime.dtw import dtw, dtw_many  # noqa: F401 - dtw: the words' API as before
from whisper_export.tokenizer import WhisperTokenizer

# map(function, heads): the builtin, or a thread pool's
HeadMap = Callable[[Callable[[np.ndarray], object], Iterable[np.ndarray]], Iterator[object]]
TOKENS_PER_SECOND = SAMPLE_RATE / (2 * HOP_LENGTH)  # 50: one audio context position per 20 ms
MEDIAN_FILTER_WIDTH = 7
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END_MARKS = ".。!！?？"
# languages written without spaces between words: split at every complete Unicode character instead
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
# scores (heads x tokens x frames) from which alignment_matrix maps its heads' work as asked; below, one by one
_THREADED_SIZE = 1 << 17
_MEDIAN_ROWS = 128  # rows filtered at a time: the sorting network's arrays stay in the CPU cache
# the standard 6-input sorting network (12 comparators, depth 5): its outputs 2 and 3 are the middle two
_SORT6 = ((0, 5), (1, 3), (2, 4), (1, 2), (3, 4), (0, 3), (2, 5), (0, 1), (2, 3), (4, 5), (1, 2), (3, 4))


@dataclass(frozen=True)
class Word:
    """One word of a segment, as openai-whisper writes it: text with its leading space, seconds, probability."""

    word: str
    start: float
    end: float
    probability: float


@dataclass
class WordTiming:
    """A word of the alignment (openai's WordTiming): seconds from the window's start; mutable while merged."""

    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


@dataclass
class SegmentWords:
    """A segment of a window while its words are timed: start/end in seconds (adjusted), its tokens (timestamps
    included), and the words found for it (None until timed)."""

    start: float
    end: float
    tokens: list[int]
    words: list[Word] | None = field(default=None)


def median_filter(x: np.ndarray, width: int = MEDIAN_FILTER_WIDTH) -> np.ndarray:
    """The median of each `width` consecutive values along the last axis, the edges reflected (openai's
    median_filter: unchanged when the axis is not longer than width // 2)."""
    if not isinstance(width, int) or width < 1 or width % 2 == 0:
        raise ValueError(f"median filter width: received {width!r}, expected an odd int >= 1")
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padding = [(0, 0)] * (x.ndim - 1) + [(pad, pad)]
    if width != 7:
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, padding, mode="reflect"), width, axis=-1)
        return np.sort(windows, axis=-1)[..., pad]
    flat = x.reshape(-1, x.shape[-1])
    out = np.empty_like(flat)
    for start in range(0, flat.shape[0], _MEDIAN_ROWS):
        out[start : start + _MEDIAN_ROWS] = _median7(flat[start : start + _MEDIAN_ROWS])
    return out.reshape(x.shape)


def _median7(x: np.ndarray) -> np.ndarray:
    """Width-7 median filter of rows x (R, F), two outputs at a time: windows 2m and 2m + 1 share six values, whose
    third and fourth smallest (lo, hi) a sorting network finds once; each window's median is then its seventh
    value clipped to [lo, hi]. Exact: every output is one of the inputs."""
    n = x.shape[-1]
    half = (n + 1) // 2
    padded = np.pad(x, [(0, 0), (3, 4)], mode="reflect")  # one value more than needed: an odd n's last pair
    shared = [padded[:, 1 + i : 1 + i + 2 * half : 2].copy() for i in range(6)]
    spare = np.empty_like(shared[0])
    for i, j in _SORT6:
        np.minimum(shared[i], shared[j], out=spare)
        np.maximum(shared[i], shared[j], out=shared[j])
        shared[i], spare = spare, shared[i]
    lo, hi = shared[2], shared[3]
    out = np.empty((x.shape[0], 2 * half), x.dtype)
    for k, first in ((0, 0), (1, 7)):  # window 2m's own value is padded[2m], window 2m + 1's padded[2m + 7]
        own = out[:, k::2]
        np.minimum(padded[:, first : first + 2 * half : 2], hi, out=own)
        np.maximum(own, lo, out=own)
    return out[:, :n]


def split_to_word_tokens(tokenizer: WhisperTokenizer, tokens: list[int], language: str) -> tuple[list[str], list[list[int]]]:
    """openai's Tokenizer.split_to_word_tokens: at spaces and punctuation, or at every complete character for
    UNSPACED_LANGUAGES. Tokens >= eot are words of their own (their text is dropped)."""
    if language in UNSPACED_LANGUAGES:
        return _split_on_unicode(tokenizer, tokens)
    words: list[str] = []
    word_tokens: list[list[int]] = []
    eot = tokenizer.special.eot
    for subword, subword_tokens in zip(*_split_on_unicode(tokenizer, tokens)):
        special = subword_tokens[0] >= eot
        with_space = subword.startswith(" ")
        punctuation = subword.strip() in string.punctuation
        if special or with_space or punctuation or not words:
            words.append(subword)
            word_tokens.append(subword_tokens)
        else:
            words[-1] = words[-1] + subword
            word_tokens[-1].extend(subword_tokens)
    return words, word_tokens


def _split_on_unicode(tokenizer: WhisperTokenizer, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
    """Groups of tokens that decode to complete characters: a group ends where its text has no replacement
    character, or has one that the whole text has at the same place (an invalid byte, not a cut character)."""
    replacement = "\ufffd"
    decoded_full = tokenizer.decode(tokens)
    words, word_tokens, current = [], [], []
    offset = 0
    for token in tokens:
        current.append(token)
        decoded = tokenizer.decode(current)
        if replacement not in decoded or decoded_full[offset + decoded.index(replacement)] == replacement:
            words.append(decoded)
            word_tokens.append(current)
            current = []
            offset += len(decoded)
    return words, word_tokens


def alignment_matrix(qk: np.ndarray, n_frames: int, medfilt_width: int = MEDIAN_FILTER_WIDTH,
                     map_heads: HeadMap = map) -> np.ndarray:
    """qk (n_heads, T, n_audio_ctx): one row's align.onnx scores (its padding cut off) -> (T, n_frames // 2) float32:
    softmax over the window's frames, normalised over the tokens (population std), median-filtered along time,
    averaged over the heads. map_heads: how the heads' work is mapped (an executor's map runs it on threads:
    numpy releases the GIL in its loops; each head's values are the same either way)."""
    weights = np.array(qk[:, :, : n_frames // 2], np.float32)  # a copy, worked on in place
    heads = list(weights)
    if weights.size < _THREADED_SIZE:
        map_heads = map
    nan = any(list(map_heads(_normalise, heads)))
    list(map_heads(partial(_median_in_place, width=medfilt_width, nan=nan), heads))
    return weights.mean(axis=0)


def _normalise(weights: np.ndarray) -> bool:
    """One head's (T, frames) scores, in place: softmax over the frames, normalised over the tokens. Whether
    that made a NaN."""
    weights -= weights.max(axis=-1, keepdims=True)
    np.exp(weights, out=weights)
    weights /= weights.sum(axis=-1, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)
    weights -= weights.mean(axis=-2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # a frame no token attends to: 0 / 0, NaN as in openai
        weights /= std
    return bool(np.isnan(weights).any())


def _median_in_place(weights: np.ndarray, width: int, nan: bool) -> None:
    """One head's median filter, in place. nan: some head has NaN, which openai's median sorts above every
    number (the sorting network would spread it): sorted as +inf, and every +inf is NaN again after."""
    if not nan:
        weights[...] = median_filter(weights, width)
        return
    filtered = median_filter(np.where(np.isnan(weights), np.float32(np.inf), weights), width)
    weights[...] = np.where(np.isinf(filtered), np.float32(np.nan), filtered)


@dataclass(frozen=True)
class AlignmentRow:
    """One window's alignment, whose tokens were the sot sequence (n_sot tokens), <|notimestamps|>, text_tokens and
    eot: matrix (T, n_frames // 2), alignment_matrix's (or Backend.align_matrices') cut to the row's T tokens and
    the window's audio positions; text_probs (T - 1,); language: the window's."""

    matrix: np.ndarray
    text_probs: np.ndarray
    text_tokens: list[int]
    n_sot: int
    language: str


def find_alignments(rows: Sequence[AlignmentRow], tokenizer: WhisperTokenizer) -> list[list[WordTiming]]:
    """openai's find_alignment of each row after its alignment matrix (times in seconds from its window's start);
    the rows' DTWs run in one sweep (dtw_many)."""
    timed = [row for row in rows if row.text_tokens]
    # the alignment matrix's rows that predict each text token, then eot
    paths = iter(dtw_many([-row.matrix[row.n_sot : -1].astype(np.float64) for row in timed]))
    return [_words_on_path(row, next(paths), tokenizer) if row.text_tokens else [] for row in rows]


def _words_on_path(row: AlignmentRow, path: tuple[np.ndarray, np.ndarray],
                   tokenizer: WhisperTokenizer) -> list[WordTiming]:
    """The words of a row's text and their times where the DTW path jumps to their first token."""
    text_indices, time_indices = path
    words, word_tokens = split_to_word_tokens(tokenizer, [*row.text_tokens, tokenizer.special.eot], row.language)
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    probs = np.asarray(row.text_probs[row.n_sot : row.n_sot + len(row.text_tokens)], np.float64)
    listed = probs.tolist()
    return [
        WordTiming(word, tokens, float(start), float(end), _mean(probs, listed, i, j))
        for word, tokens, start, end, i, j in zip(words, word_tokens, jump_times[boundaries[:-1]],
                                                  jump_times[boundaries[1:]], boundaries[:-1], boundaries[1:])
    ]


def _mean(values: np.ndarray, listed: list[float], i: int, j: int) -> float:
    """np.mean(values[i:j]) (openai's word probability), the same bits: below 8 values numpy adds them in order,
    as sum() does, without numpy's per-call cost (a word is mostly 1-3 tokens)."""
    return sum(listed[i:j]) / (j - i) if j - i < 8 else float(np.mean(values[i:j]))


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """openai's merge_punctuations, in place: prepended marks join the next word, appended ones the previous."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1



def add_word_timestamps(segments: list[SegmentWords], alignment: list[WordTiming], *, eot: int, time_offset: float,
                        last_speech_timestamp: float, prepend_punctuations: str = PREPEND_PUNCTUATIONS,
                        append_punctuations: str = APPEND_PUNCTUATIONS) -> None:
    """openai's add_word_timestamps after find_alignment, in place: alignment holds the words of every segment
    of one window (their text tokens, ids < eot, in order); each segment gets its words (seconds from the audio's
    start, rounded to 10 ms), and its start/end move to its first/last word unless that word is implausibly long
    (last_speech_timestamp: where the speech before these segments ended)."""
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median_duration = min(0.7, float(np.median(durations)) if len(durations) else 0.0)
    max_duration = median_duration * 2
    if len(durations):  # words at sentence ends are no longer than twice the median
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > max_duration:
                if alignment[i].word in SENTENCE_END_MARKS:
                    alignment[i].end = alignment[i].start + max_duration
                elif alignment[i - 1].word in SENTENCE_END_MARKS:
                    alignment[i].start = alignment[i].end - max_duration
    merge_punctuations(alignment, prepend_punctuations, append_punctuations)
    index = 0
    for segment in segments:
        n_text = sum(1 for t in segment.tokens if t < eot)
        words: list[list] = []
        saved = 0
        while index < len(alignment) and saved < n_text:
            timing = alignment[index]
            if timing.word:
                words.append([timing.word, round(time_offset + timing.start, 2), round(time_offset + timing.end, 2),
                              timing.probability])
            saved += len(timing.tokens)
            index += 1
        if words:
            last_speech_timestamp = _bound_segment(segment, words, last_speech_timestamp, median_duration,
                                                   max_duration)
        segment.words = [Word(w[0], float(w[1]), float(w[2]), float(w[3])) for w in words]


def _bound_segment(segment: SegmentWords, words: list[list], last_speech_timestamp: float, median_duration: float,
                   max_duration: float) -> float:
    """openai's segment-boundary heuristics on one segment's words [word, start, end, probability] (in place):
    the first words after a pause are at most about twice the median word long; the segment's start/end become
    its first/last word's unless that word looks too long. Returns the segment's (new) end."""
    first, last = words[0], words[-1]
    if first[2] - last_speech_timestamp > median_duration * 4 and (
        first[2] - first[1] > max_duration or (len(words) > 1 and words[1][2] - first[1] > max_duration * 2)
    ):
        if len(words) > 1 and words[1][2] - words[1][1] > max_duration:
            boundary = max(words[1][2] / 2, words[1][2] - max_duration)
            first[2] = words[1][1] = boundary
        first[1] = max(0, first[2] - max_duration)
    if segment.start < first[2] and segment.start - 0.5 > first[1]:
        first[1] = max(0, min(first[2] - median_duration, segment.start))
    else:
        segment.start = first[1]
    if segment.end > last[1] and segment.end + 0.5 < last[2]:
        last[2] = max(last[1] + median_duration, segment.end)
    else:
        segment.end = last[2]
    return segment.end
