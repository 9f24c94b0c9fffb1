"""Our text normalisers against openai-whisper's own (whisper.normalizers), sentence by sentence."""

from __future__ import annotations

import pytest

from whisper_export.runtime.english_numbers import EnglishNumberNormalizer
from whisper_export.runtime.normalizers import BasicTextNormalizer, EnglishTextNormalizer

whisper_normalizers = pytest.importorskip("whisper.normalizers", reason="openai-whisper is the reference")
whisper_english = pytest.importorskip("whisper.normalizers.english", reason="openai-whisper is the reference")

SENTENCES = [
    # the committed clips' texts and what tiny.en makes of them
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "We need some eye fresh red, milk and some apples for breakfast.",
    "The quick round-fark jump over the lazy dog.",
    # contractions, titles, fillers, brackets
    "I won't go, can't you see? Let's say y'all wanna leave; gonna be fine, ain't it?",
    "Mr. Smith and Mrs. Jones met Dr. Who on St. Patrick's day with Lt. Col. Mustard Jr.",
    "Hmm, um, uh I think mhm that's [MUSIC] right (laughs) <noise> okay.",
    "She'd been there; he's gone; they'd done it; it's got to work; we're here; I'm sure; you've seen; I'll go.",
    "Don't, shouldn't, wouldn't, couldn't, isn't, aren't, wasn't",
    # numbers in words and digits, ordinals, plurals, currencies, percentages, decimals
    "I have twenty three apples and one hundred and five oranges.",
    "It costs twenty dollars and fifty cents, or $3.50, or £7, or five euros.",
    "Nineteen sixty-five was the year; the 1960s were wild; the twenty first century.",
    "Two thousand and twenty four, three million, four point five billion.",
    "one oh one, double seven, triple zero, oh two oh",
    "She came first, he came second and third, the twelfth and the fortieth time.",
    "Fifty percent, 20 per cent, minus five degrees, plus six, negative three point one four.",
    "One and a half cups, two and a half hours, and a half",
    "Seventeen hundreds, sixes and sevens, the nineties, ones and twos",
    "1,000,000 people, 3.14159, $2 and ¢7, $0.50",
    "The 274th and 32nd entries; 1st, 2nd, 3rd and 4th.",
    "hundred thousands, millionth, a billion dollars, 5 million euros",
    "point five, point, zero point seven five, two point",
    # British spellings, diacritics, symbols
    "The colour of the theatre's aeroplane was grey; they apologised and organised it.",
    "Café naïve façade résumé Ærøskøbing Łódź straße þorn",
    "Hello!!! What?? #hashtag @mention & 100% — “quoted” ‘text’ … etc.",
    "",
    "   spaces    everywhere   ",
]


@pytest.mark.parametrize("sentence", SENTENCES)
def test_english_normalizer_matches_openai_whisper(sentence):
    assert EnglishTextNormalizer()(sentence) == whisper_normalizers.EnglishTextNormalizer()(sentence)


@pytest.mark.parametrize("sentence", SENTENCES + ["Ich trinke jeden Morgen eine Tasse Kaffee mit Milch.",
                                                  "Bonjour, je voudrais un café et un croissant, s'il vous plaît.",
                                                  "日本語のテキスト、句読点。", "Привет, как дела?"])
@pytest.mark.parametrize("options", [{}, {"remove_diacritics": True}, {"split_letters": True}])
def test_basic_normalizer_matches_openai_whisper(sentence, options):
    assert BasicTextNormalizer(**options)(sentence) == whisper_normalizers.BasicTextNormalizer(**options)(sentence)


def test_number_normalizer_matches_on_number_word_sequences():
    """Every pair of number-ish words (the scan's state transitions), after a digit and after a word."""
    ours, theirs = EnglishNumberNormalizer(), whisper_english.EnglishNumberNormalizer()
    words = ["one", "oh", "twelve", "twenty", "thirties", "fifth", "hundred", "thousands", "millionth", "and",
             "double", "point", "minus", "dollars", "percent", "per", "cent", "7", "3.5", "$4", "apples", "ones"]
    for a in words:
        for b in words:
            for text in (f"{a} {b}", f"5 {a} {b} two", f"twenty {a} {b} cats"):
                assert ours(text) == theirs(text), text
