"""openai-whisper's English number normaliser (whisper/normalizers/english.py, MIT License, Copyright (c) 2022
OpenAI), written for this package: spelled-out numbers become digits.

- commas in numbers go; suffixes stay (``1960s``, ``274th``, ``32nd``);
- currency words after a number become prefixed symbols (``twenty dollars`` -> ``$20``), ``percent`` a suffix;
- ``one`` / ``ones`` stay words; successive single digits are read as a nominal number (``one oh one`` ->
  ``101``).

The word-by-word scan keeps openai-whisper's state exactly (the number so far, an int or a string of digits,
and a pending prefix); each kind of word has its own method here.
"""

from __future__ import annotations

import re
from fractions import Fraction

ONES = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
MULTIPLIERS = {name: 10 ** power for name, power in (
    ("hundred", 2), ("thousand", 3), ("million", 6), ("billion", 9), ("trillion", 12), ("quadrillion", 15),
    ("quintillion", 18), ("sextillion", 21), ("septillion", 24), ("octillion", 27), ("nonillion", 30),
    ("decillion", 33))}
NUMERIC = re.compile(r"^\d+(\.\d+)?$")


def _fraction(s) -> Fraction | None:
    try:
        return Fraction(s)
    except ValueError:
        return None


class _Vocabulary:
    """The number words and their values."""

    def __init__(self):
        self.zeros = {"o", "oh", "zero"}
        self.ones = {name: i for i, name in enumerate(ONES, start=1)}
        plural = {("sixes" if name == "six" else name + "s"): (value, "s") for name, value in self.ones.items()}
        ordinal = {"zeroth": (0, "th"), "first": (1, "st"), "second": (2, "nd"), "third": (3, "rd"),
                   "fifth": (5, "th"), "twelfth": (12, "th"),
                   **{name + ("h" if name.endswith("t") else "th"): (value, "th")
                      for name, value in self.ones.items() if value > 3 and value not in (5, 12)}}
        self.ones_suffixed = {**plural, **ordinal}
        self.tens = dict(TENS)
        self.tens_suffixed = {**{name.replace("y", "ies"): (value, "s") for name, value in TENS.items()},
                              **{name.replace("y", "ieth"): (value, "th") for name, value in TENS.items()}}
        self.multipliers = dict(MULTIPLIERS)
        self.multipliers_suffixed = {**{name + "s": (value, "s") for name, value in MULTIPLIERS.items()},
                                     **{name + "th": (value, "th") for name, value in MULTIPLIERS.items()}}
        self.decimals = {*self.ones, *self.tens, *self.zeros}
        self.preceding_prefixers = {"minus": "-", "negative": "-", "plus": "+", "positive": "+"}
        self.following_prefixers = {"pound": "£", "pounds": "£", "euro": "€", "euros": "€", "dollar": "$",
                                    "dollars": "$", "cent": "¢", "cents": "¢"}
        self.prefixes = set(self.preceding_prefixers.values()) | set(self.following_prefixers.values())
        self.suffixers = {"per": {"cent": "%"}, "percent": "%"}
        self.specials = {"and", "double", "triple", "point"}
        self.words = {key for mapping in (
            self.zeros, self.ones, self.ones_suffixed, self.tens, self.tens_suffixed, self.multipliers,
            self.multipliers_suffixed, self.preceding_prefixers, self.following_prefixers, self.suffixers,
            self.specials) for key in mapping}


class _Scan:
    """One pass over the words: the number being built (value), a pending prefix, and whether the next word
    was consumed already (skip)."""

    def __init__(self, vocab: _Vocabulary):
        self.v = vocab
        self.prefix: str | None = None
        self.value: int | str | None = None
        self.skip = False

    def output(self, result) -> str:
        result = str(result)
        if self.prefix is not None:
            result = self.prefix + result
        self.value = self.prefix = None
        return result

    def flush(self) -> list[str]:
        return [self.output(self.value)] if self.value is not None else []

    def word(self, prev: str | None, current: str, nxt: str | None) -> list[str]:
        v = self.v
        has_prefix = current[0] in v.prefixes
        if NUMERIC.match(current[1:] if has_prefix else current):
            return self.arabic(current, has_prefix)
        if current not in v.words:
            return self.flush() + [self.output(current)]
        if current in v.zeros:
            self.value = str(self.value or "") + "0"
            return []
        for table, method in ((v.ones, self.one), (v.ones_suffixed, self.one_suffixed), (v.tens, self.ten),
                              (v.tens_suffixed, self.ten_suffixed), (v.multipliers, self.multiplier),
                              (v.multipliers_suffixed, self.multiplier_suffixed)):
            if current in table:
                return method(prev, current)
        if current in v.preceding_prefixers:
            out = self.flush()
            if nxt in v.words or self.numeric(nxt):
                self.prefix = v.preceding_prefixers[current]
                return out
            return out + [self.output(current)]
        if current in v.following_prefixers:
            if self.value is None:
                return [self.output(current)]
            self.prefix = v.following_prefixers[current]
            return [self.output(self.value)]
        if current in v.suffixers:
            return self.suffixed(current, nxt)
        return self.special(prev, current, nxt)

    @staticmethod
    def numeric(word: str | None) -> bool:
        return word is not None and NUMERIC.match(word) is not None

    def arabic(self, current: str, has_prefix: bool) -> list[str]:
        """Digits, possibly signed or with a currency prefix, possibly a decimal."""
        bare = current[1:] if has_prefix else current
        f = _fraction(bare)
        out = []
        if self.value is not None:
            if isinstance(self.value, str) and self.value.endswith("."):
                self.value = str(self.value) + str(current)  # decimals, address components
                return []
            out.append(self.output(self.value))
        self.prefix = current[0] if has_prefix else self.prefix
        self.value = f.numerator if f.denominator == 1 else bare
        return out

    def _joined(self, prev: str | None, digit: int) -> int | str:
        """The value so far followed by a ones word of value digit (1..19)."""
        value = self.value
        if isinstance(value, str) or prev in self.v.ones:
            if prev in self.v.tens and digit < 10:  # the tens' last zero becomes the digit
                assert value[-1] == "0"
                return value[:-1] + str(digit)
            return str(value) + str(digit)
        if digit < 10:
            return value + digit if value % 10 == 0 else str(value) + str(digit)
        return value + digit if value % 100 == 0 else str(value) + str(digit)  # eleven to nineteen

    def one(self, prev: str | None, current: str) -> list[str]:
        digit = self.v.ones[current]
        self.value = digit if self.value is None else self._joined(prev, digit)
        return []

    def one_suffixed(self, prev: str | None, current: str) -> list[str]:
        """An ordinal or plural: the number ends here."""
        digit, suffix = self.v.ones_suffixed[current]
        number = str(digit) if self.value is None else str(self._joined(prev, digit))
        out = [self.output(number + suffix)]
        self.value = None
        return out

    def ten(self, prev: str | None, current: str) -> list[str]:
        tens = self.v.tens[current]
        if self.value is None:
            self.value = tens
        elif isinstance(self.value, str) or self.value % 100 != 0:
            self.value = str(self.value) + str(tens)
        else:
            self.value += tens
        return []

    def ten_suffixed(self, prev: str | None, current: str) -> list[str]:
        tens, suffix = self.v.tens_suffixed[current]
        if self.value is None:
            return [self.output(str(tens) + suffix)]
        if isinstance(self.value, str) or self.value % 100 != 0:
            return [self.output(str(self.value) + str(tens) + suffix)]
        return [self.output(str(self.value + tens) + suffix)]

    def multiplier(self, prev: str | None, current: str) -> list[str]:
        multiplier = self.v.multipliers[current]
        if self.value is None:
            self.value = multiplier
        elif isinstance(self.value, str) or self.value == 0:
            f = _fraction(self.value)
            product = f * multiplier if f is not None else None
            if f is not None and product.denominator == 1:
                self.value = product.numerator
            else:
                out = [self.output(self.value)]
                self.value = multiplier
                return out
        else:
            self.value = self.value // 1000 * 1000 + self.value % 1000 * multiplier
        return []

    def multiplier_suffixed(self, prev: str | None, current: str) -> list[str]:
        multiplier, suffix = self.v.multipliers_suffixed[current]
        if self.value is None:
            out = [self.output(str(multiplier) + suffix)]
        elif isinstance(self.value, str):
            f = _fraction(self.value)
            product = f * multiplier if f is not None else None
            if f is not None and product.denominator == 1:
                out = [self.output(str(product.numerator) + suffix)]
            else:
                out = [self.output(self.value), self.output(str(multiplier) + suffix)]
        else:
            self.value = self.value // 1000 * 1000 + self.value % 1000 * multiplier
            out = [self.output(str(self.value) + suffix)]
        self.value = None
        return out

    def suffixed(self, current: str, nxt: str | None) -> list[str]:
        """percent -> %, per cent -> %, after a number."""
        if self.value is None:
            return [self.output(current)]
        suffix = self.v.suffixers[current]
        if not isinstance(suffix, dict):
            return [self.output(str(self.value) + suffix)]
        if nxt in suffix:
            self.skip = True
            return [self.output(str(self.value) + suffix[nxt])]
        return [self.output(self.value), self.output(current)]

    def special(self, prev: str | None, current: str, nxt: str | None) -> list[str]:
        """and, double, triple, point: number words only before a number word or digits."""
        v = self.v
        if current not in v.specials:
            raise ValueError(f"Unexpected token: {current}")
        if nxt not in v.words and not self.numeric(nxt):
            return self.flush() + [self.output(current)]
        if current == "and":  # "and" after hundreds, thousands, ... is dropped
            return [] if prev in v.multipliers else self.flush() + [self.output(current)]
        if current in ("double", "triple"):
            if nxt in v.ones or nxt in v.zeros:
                self.value = str(self.value or "") + str(v.ones.get(nxt, 0)) * (2 if current == "double" else 3)
                self.skip = True
                return []
            return self.flush() + [self.output(current)]
        if nxt in v.decimals or self.numeric(nxt):  # point
            self.value = str(self.value or "") + "."
        return []


class EnglishNumberNormalizer:
    """Spelled-out English numbers to digits (see the module docstring)."""

    def __init__(self):
        self.vocab = _Vocabulary()

    def process_words(self, words: list[str]) -> list[str]:
        scan = _Scan(self.vocab)
        out: list[str] = []
        padded = [None, *words, None]
        for prev, current, nxt in zip(padded, padded[1:], padded[2:]):
            if scan.skip:
                scan.skip = False
                continue
            out += scan.word(prev, current, nxt)
        return out + scan.flush()

    def preprocess(self, s: str) -> str:
        """"<number> and a half" -> "<number> point five"; spaces between digits and letters, except suffixes."""
        segments = re.split(r"\band\s+a\s+half\b", s)
        results = []
        for i, segment in enumerate(segments):
            if not segment.strip():
                continue
            results.append(segment)
            if i < len(segments) - 1:
                last_word = segment.rsplit(maxsplit=2)[-1]
                numeric = last_word in self.vocab.decimals or last_word in self.vocab.multipliers
                results.append("point five" if numeric else "and a half")
        s = " ".join(results)
        s = re.sub(r"([a-z])([0-9])", r"\1 \2", s)
        s = re.sub(r"([0-9])([a-z])", r"\1 \2", s)
        return re.sub(r"([0-9])\s+(st|nd|rd|th|s)\b", r"\1\2", s)

    @staticmethod
    def postprocess(s: str) -> str:
        """"$2 and ¢7" -> "$2.07", "$0.07" -> "¢7", and "1(s)" written "one(s)"."""
        def combine_cents(m: re.Match) -> str:
            try:
                return f"{m.group(1)}{m.group(2)}.{int(m.group(3)):02d}"
            except ValueError:
                return m.string

        def extract_cents(m: re.Match) -> str:
            try:
                return f"¢{int(m.group(1))}"
            except ValueError:
                return m.string

        s = re.sub(r"([€£$])([0-9]+) (?:and )?¢([0-9]{1,2})\b", combine_cents, s)
        s = re.sub(r"[€£$]0.([0-9]{1,2})\b", extract_cents, s)
        return re.sub(r"\b1(s?)\b", r"one\1", s)

    def __call__(self, s: str) -> str:
        s = self.preprocess(s)
        s = " ".join(word for word in self.process_words(s.split()) if word is not None)
        return self.postprocess(s)
