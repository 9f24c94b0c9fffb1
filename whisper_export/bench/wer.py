"""Word error rate between a transcript and a reference text, for benchmarks and tests.

A light normalisation, not Whisper's English normaliser: lower case, words as runs of letters, digits and
apostrophes, so punctuation and casing never count as errors. Compound spellings ("round-fark" against
"round fark") count as the word splits they are.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[\w']+")


def normalized_words(text: str) -> list[str]:
    return [w.strip("'") for w in _WORD.findall(text.lower()) if w.strip("'")]


def word_errors(hypothesis: str, reference: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, words in the reference): the Levenshtein distance over words."""
    hyp, ref = normalized_words(hypothesis), normalized_words(reference)
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, other in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other))
        previous = current
    return previous[-1], len(ref)


def word_error_rate(hypothesis: str, reference: str) -> float:
    """Errors per reference word (0.0 when both are empty; inf for text against an empty reference)."""
    errors, words = word_errors(hypothesis, reference)
    if words == 0:
        return 0.0 if errors == 0 else float("inf")
    return errors / words
