"""openai-whisper's text normalisers, written for this package: the basic one (any language) and the English
one (contractions, titles, numbers written as digits, British spellings made American), which is what WER on
English is conventionally scored after.

They follow openai-whisper's ``whisper/normalizers`` (MIT License, Copyright (c) 2022 OpenAI) rule for rule;
tests/whisper_export/runtime/test_normalizers.py holds them to openai-whisper's own on a varied set of
sentences. The spelling map is data: english_spelling.json (with its source and license) beside this module.
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

from whisper_export.runtime.english_numbers import EnglishNumberNormalizer

# letters that NFKD does not split into a base letter and a diacritic
ADDITIONAL_DIACRITICS = {
    "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "ß": "ss", "ẞ": "SS",
    "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "th", "ł": "l", "Ł": "L",
}
SPELLING_FILE = Path(__file__).with_name("english_spelling.json")


def remove_symbols_and_diacritics(s: str, keep: str = "") -> str:
    """Marks, symbols and punctuation (except those in keep) become spaces; diacritics are dropped."""
    def clean(c: str) -> str:
        if c in keep:
            return c
        if c in ADDITIONAL_DIACRITICS:
            return ADDITIONAL_DIACRITICS[c]
        category = unicodedata.category(c)
        if category == "Mn":
            return ""
        return " " if category[0] in "MSP" else c

    return "".join(clean(c) for c in unicodedata.normalize("NFKD", s))


def remove_symbols(s: str) -> str:
    """Marks, symbols and punctuation become spaces; diacritics stay."""
    return "".join(" " if unicodedata.category(c)[0] in "MSP" else c for c in unicodedata.normalize("NFKC", s))


def _drop_bracketed(s: str) -> str:
    s = re.sub(r"[<\[][^>\]]*[>\]]", "", s)  # words between brackets
    return re.sub(r"\(([^)]+?)\)", "", s)  # words between parentheses


class BasicTextNormalizer:
    """Lower case, bracketed and parenthesised words removed, symbols to spaces, whitespace collapsed.

    split_letters separates every grapheme cluster (for scripts written without spaces); it needs the
    ``regex`` package (installed with the export extra).
    """

    def __init__(self, remove_diacritics: bool = False, split_letters: bool = False):
        self.clean = remove_symbols_and_diacritics if remove_diacritics else remove_symbols
        self.split_letters = split_letters

    def __call__(self, s: str) -> str:
        s = self.clean(_drop_bracketed(s.lower())).lower()
        if self.split_letters:
            import regex

            s = " ".join(regex.findall(r"\X", s, regex.U))
        return re.sub(r"\s+", " ", s)


@lru_cache(maxsize=1)
def _spellings() -> dict[str, str]:
    return json.loads(SPELLING_FILE.read_text(encoding="utf-8"))["spellings"]


class EnglishSpellingNormalizer:
    """British spellings to American ones, word by word (english_spelling.json)."""

    def __init__(self):
        self.mapping = _spellings()

    def __call__(self, s: str) -> str:
        return " ".join(self.mapping.get(word, word) for word in s.split())


IGNORED = r"\b(hmm|mm|mhm|mmm|uh|um)\b"
# applied in this order: the longer contractions before the general ones
REPLACERS = {
    # common contractions
    r"\bwon't\b": "will not", r"\bcan't\b": "can not", r"\blet's\b": "let us", r"\bain't\b": "aint",
    r"\by'all\b": "you all", r"\bwanna\b": "want to", r"\bgotta\b": "got to", r"\bgonna\b": "going to",
    r"\bi'ma\b": "i am going to", r"\bimma\b": "i am going to", r"\bwoulda\b": "would have",
    r"\bcoulda\b": "could have", r"\bshoulda\b": "should have", r"\bma'am\b": "madam",
    # titles and prefixes
    r"\bmr\b": "mister ", r"\bmrs\b": "missus ", r"\bst\b": "saint ", r"\bdr\b": "doctor ",
    r"\bprof\b": "professor ", r"\bcapt\b": "captain ", r"\bgov\b": "governor ", r"\bald\b": "alderman ",
    r"\bgen\b": "general ", r"\bsen\b": "senator ", r"\brep\b": "representative ", r"\bpres\b": "president ",
    r"\brev\b": "reverend ", r"\bhon\b": "honorable ", r"\basst\b": "assistant ", r"\bassoc\b": "associate ",
    r"\blt\b": "lieutenant ", r"\bcol\b": "colonel ", r"\bjr\b": "junior ", r"\bsr\b": "senior ",
    r"\besq\b": "esquire ",
    # perfect tenses ("'s done" is ambiguous, so not listed)
    r"'d been\b": " had been", r"'s been\b": " has been", r"'d gone\b": " had gone", r"'s gone\b": " has gone",
    r"'d done\b": " had done", r"'s got\b": " has got",
    # general contractions
    r"n't\b": " not", r"'re\b": " are", r"'s\b": " is", r"'d\b": " would", r"'ll\b": " will", r"'t\b": " not",
    r"'ve\b": " have", r"'m\b": " am",
}


class EnglishTextNormalizer:
    """openai-whisper's English normaliser: what its English WER figures are computed after."""

    def __init__(self):
        self.standardize_numbers = EnglishNumberNormalizer()
        self.standardize_spellings = EnglishSpellingNormalizer()

    def __call__(self, s: str) -> str:
        s = _drop_bracketed(s.lower())
        s = re.sub(IGNORED, "", s)
        s = re.sub(r"\s+'", "'", s)  # a space before an apostrophe
        for pattern, replacement in REPLACERS.items():
            s = re.sub(pattern, replacement, s)
        s = re.sub(r"(\d),(\d)", r"\1\2", s)  # commas between digits
        s = re.sub(r"\.([^0-9]|$)", r" \1", s)  # periods not followed by a digit
        s = remove_symbols_and_diacritics(s, keep=".%$¢€£")  # numeric symbols stay for the number normaliser
        s = self.standardize_spellings(self.standardize_numbers(s))
        # prefix and suffix symbols that no number stands beside
        s = re.sub(r"[.$¢€£]([^0-9])", r" \1", s)
        s = re.sub(r"([^0-9])%", r"\1 ", s)
        return re.sub(r"\s+", " ", s)


# by name: English for English speech (what WER on English is conventionally scored after), basic for any other
NORMALIZERS = {"english": EnglishTextNormalizer, "basic": BasicTextNormalizer}
