"""runtime/words.py's numpy pieces against references written out plainly here (and against openai-whisper's own
dtw_cpu / median_filter where it is installed), on random inputs; word splitting and punctuation merging against
openai-whisper's rules on real tokens."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_export.runtime import dtw as dtw_module
from whisper_export.runtime.words import (
    APPEND_PUNCTUATIONS,
    PREPEND_PUNCTUATIONS,
    WordTiming,
    alignment_matrix,
    dtw_many,
    median_filter,
    merge_punctuations,
    split_to_word_tokens,
)


def plain_median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Each value's window of `width` along the last axis, indices past an edge reflected (-1 -> 1, n -> n - 2),
    sorted, its middle value."""
    pad = width // 2
    n = x.shape[-1]
    if n <= pad:
        return x.copy()
    out = np.empty_like(x)
    for index in np.ndindex(*x.shape[:-1]):
        row = x[index]
        for f in range(n):
            window = []
            for k in range(f - pad, f + pad + 1):
                if k < 0:
                    k = -k
                elif k >= n:
                    k = 2 * (n - 1) - k
                window.append(row[k])
            out[index + (f,)] = sorted(window)[pad]
    return out


def plain_dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """openai-whisper's dtw_cpu and backtrace written out: float32 cost table, ties to the left move."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, np.float32)
    trace = np.full((n + 1, m + 1), -1)
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = float(x[i - 1, j - 1]) + float(c)
            trace[i, j] = t
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        i, j = (i - 1, j - 1) if t == 0 else (i - 1, j) if t == 1 else (i, j - 1)
    path = np.array(path[::-1]).T
    return path[0], path[1]


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (1, 4), (5, 7), (4, 50), (17, 31), (2, 3, 9)])
def test_median_filter_matches_the_plain_filter(shape):
    rng = np.random.default_rng(sum(shape))
    for values in (rng.standard_normal(shape).astype(np.float32),
                   rng.integers(0, 3, shape).astype(np.float32)):  # many ties
        for width in (7, 5, 1):
            got = median_filter(values, width)
            assert got.shape == values.shape and got.dtype == values.dtype
            np.testing.assert_array_equal(got, plain_median_filter(values, width))


def test_median_filter_rejects_even_width():
    with pytest.raises(ValueError, match="received 6, expected an odd int"):
        median_filter(np.zeros((2, 10), np.float32), 6)


@pytest.fixture(params=["numba", "numpy"])
def dtw_impl(request):
    """Each DTW implementation as dtw_many's signature: numba's compiled loop (the default where numba is
    installed) and the numpy sweep (the fallback)."""
    if request.param == "numpy":
        return dtw_module.dtw_many_numpy
    pytest.importorskip("numba")
    assert dtw_module._compiled_dtw() is not None, "numba is installed but did not compile the DTW"
    return dtw_many


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (6, 1), (4, 4), (9, 40), (23, 17), (30, 120)])
def test_dtw_matches_the_plain_dtw(shape, dtw_impl):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    for x in (rng.standard_normal(shape), rng.integers(-2, 2, shape).astype(np.float64)):  # ties everywhere
        rows, cols = dtw_impl([x])[0]
        want_rows, want_cols = plain_dtw(x)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(cols, want_cols)
        assert rows[-1] == shape[0] - 1 and cols[-1] == shape[1] - 1  # ends in the last cell


def test_dtw_on_float32_costs_with_ties_and_nan_matches_the_plain_dtw(dtw_impl):
    """The costs the word step passes (float32 values, NaN where a frame has no attention, exact ties between the
    diagonal and up moves below the left one), each through the sweep that handles it."""
    rng = np.random.default_rng(11)
    for shape in ((1, 1), (7, 30), (25, 140), (40, 9)):
        smooth = rng.standard_normal(shape).astype(np.float32).astype(np.float64)
        ties = rng.integers(-2, 2, shape).astype(np.float64)
        with_nan = smooth.copy()
        with_nan[:, rng.integers(0, shape[1], max(1, shape[1] // 5))] = np.nan
        for x in (smooth, ties, with_nan):
            rows, cols = dtw_impl([x])[0]
            want_rows, want_cols = plain_dtw(x)
            np.testing.assert_array_equal(rows, want_rows)
            np.testing.assert_array_equal(cols, want_cols)


def test_dtw_many_matches_dtw_one_by_one(dtw_impl):
    """Matrices of different shapes swept together (the smaller ones padded) give each one's own path."""
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal(shape).astype(np.float32).astype(np.float64)
          for shape in ((12, 300), (3, 40), (30, 120), (1, 1))]
    xs.append(rng.integers(-2, 2, (20, 60)).astype(np.float64))  # one with ties: the whole batch takes the rule
    for got, x in zip(dtw_impl(xs), xs):
        want = plain_dtw(x)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert dtw_impl([]) == []


def test_alignment_matrix_on_threads_is_the_one_by_one_matrix():
    """The per-head work mapped on a thread pool gives the same bits as one head after another, with and without
    frames whose normalisation meets 0 / 0 (NaN in every head's column, wider than the median filter)."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(9)
    scores = (rng.standard_normal((6, 40, 1500)) * 4).astype(np.float32)
    silent = scores.copy()
    silent[:, :, 600:620] = np.float32(-1e30)  # no token attends there: 0 / 0 after the softmax
    with ThreadPoolExecutor(4) as pool:
        for qk in (scores, silent):
            one_by_one = alignment_matrix(qk, 2800)
            threaded = alignment_matrix(qk, 2800, map_heads=pool.map)
            assert one_by_one.shape == (40, 1400)
            np.testing.assert_array_equal(threaded, one_by_one)
        assert np.isnan(alignment_matrix(silent, 2800)).any() and not np.isnan(alignment_matrix(scores, 2800)).any()


def test_against_openai_whisper_dtw_and_median_filter(dtw_impl):
    timing = pytest.importorskip("whisper.timing")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    for shape in ((12, 300), (40, 90), (5, 5)):
        x = -np.abs(rng.standard_normal(shape))
        rows, cols = dtw_impl([x])[0]
        want = timing.dtw_cpu(x)
        np.testing.assert_array_equal(rows, want[0])
        np.testing.assert_array_equal(cols, want[1])
    weights = rng.standard_normal((6, 20, 250)).astype(np.float32)
    np.testing.assert_array_equal(median_filter(weights, 7), timing.median_filter(torch.from_numpy(weights), 7).numpy())


@pytest.fixture(scope="module")
def tokenizers():
    """The English-only and multilingual vocabularies (tiny.en's and base's)."""
    from whisper_export.tokenizer import WhisperTokenizer

    return tuple(WhisperTokenizer.builtin(n) for n in (51864, 51865))


def test_split_to_word_tokens_follows_openai(tokenizers):
    english, multilingual = tokenizers
    eot = english.special.eot
    tokens = english.encode(" Hello, world! It's a co-operative test.") + [eot]
    words, groups = split_to_word_tokens(english, tokens, "en")
    assert sum(groups, []) == tokens  # every token once, in order
    # a word starts at a space or is punctuation alone; the pieces after it join it ("'s", "operative")
    assert words[:-1] == [" Hello", ",", " world", "!", " It's", " a", " co", "-operative", " test", "."]
    assert groups[-1] == [eot]
    # Chinese: a word ends wherever the tokens so far decode to complete characters; a character of several
    # byte-level tokens (the emoji, the rare 龘) stays in one word
    text = "你好，龘世界🎉"
    zh = multilingual.encode(text) + [multilingual.special.eot]
    words, groups = split_to_word_tokens(multilingual, zh, "zh")
    assert "".join(words) == text and sum(groups, []) == zh and "\ufffd" not in text
    assert words[:-1] == ["你好", "，", "龘", "世界", "🎉"] and len(groups[-2]) > 1 and ["龘"] == [w for w in words if "龘" in w]


def test_split_matches_openai_whisper_tokenizer(tokenizers):
    whisper_tokenizer = pytest.importorskip("whisper.tokenizer")
    english, multilingual = tokenizers
    theirs_en = whisper_tokenizer.get_tokenizer(False, language="en")
    theirs_multi = whisper_tokenizer.get_tokenizer(True, language="ja")
    for ours, theirs, language, text in (
        (english, theirs_en, "en", " Don't stop -- \"now\", (she said) 3.5% of ¿qué? naïve café"),
        (multilingual, theirs_multi, "ja", "こんにちは、世界！テスト🎉です。"),
    ):
        tokens = ours.encode(text) + [ours.special.eot]
        assert tokens == theirs.encode(text) + [theirs.eot]
        want_words, want_groups = theirs.split_to_word_tokens(tokens)
        words, groups = split_to_word_tokens(ours, tokens, language)
        assert groups == want_groups and words[:-1] == want_words[:-1]


def test_merge_punctuations_as_openai():
    def alignment():
        words = [" \"", "Hello", ",", " (", "world", ")", "!", " ¿", "qué", "?\""]
        return [WordTiming(w, [k], 0.0, 1.0, 0.5) for k, w in enumerate(words)]

    merged = alignment()
    merge_punctuations(merged, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    # prepended marks join the next word, appended ones the previous; '?"' is not one of them
    assert [(a.word, a.tokens) for a in merged if a.word] == [
        (" \"Hello,", [0, 1, 2]), (" (world)!", [3, 4, 5, 6]), (" ¿qué", [7, 8]), ("?\"", [9])]
    timing = pytest.importorskip("whisper.timing")
    theirs = [timing.WordTiming(a.word, a.tokens, a.start, a.end, a.probability) for a in alignment()]
    timing.merge_punctuations(theirs, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    assert [(a.word, a.tokens) for a in merged] == [(a.word, a.tokens) for a in theirs]


def test_word_probability_mean_is_numpys_mean():
    """The word probability (openai's np.mean of its tokens' probabilities) taken without numpy's per-call cost
    below 8 tokens: the same float for every length."""
    from whisper_export.runtime.words import _mean

    rng = np.random.default_rng()
    for n in range(1, 20):
        values = rng.random(n)
        for i, j in ((0, n), (n // 3, n)):
            assert _mean(values, values.tolist(), i, j) == float(np.mean(values[i:j]))
