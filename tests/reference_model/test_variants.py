"""Loading the published Whisper variants' layouts: Hugging Face directories written by transformers (fp16, bf16,
sharded, no tokenizer files), OpenAI .pt files and CTranslate2 directories written by ctranslate2's converter, at
small widths with the published structure (128 mels, vocabulary 51866, few decoder layers under more encoder
layers). The full sizes run in benchmarks/large_variants.py (NOTES.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reference_model import CheckpointError, load_checkpoint
from reference_model.checkpoint import expected_shapes
from reference_model.huggingface import canonical_to_hf
from reference_model.synthetic import VARIANTS, narrow, write_ctranslate2, write_huggingface, write_openai

TURBO = narrow(VARIANTS["large-v3-turbo"])  # 128 mels, 51866, 6 encoder / 4 decoder layers, width 64
DISTIL_EN = narrow(VARIANTS["distil-small.en"])  # 80 mels, 51864, 6 encoder / 4 decoder layers


@pytest.fixture(scope="module")
def turbo_hf(tmp_path_factory):
    return write_huggingface(TURBO, tmp_path_factory.mktemp("variants") / "turbo-hf", seed=1)


def transformers_state(directory, dtype=torch.float32) -> dict[str, np.ndarray]:
    """The weights as transformers itself loads them, by transformers' names, in float32."""
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(directory, dtype=dtype)
    return {k: v.float().numpy() for k, v in model.state_dict().items()}


def assert_same_weights(ckpt, hf_state: dict[str, np.ndarray]) -> None:
    for name, value in ckpt.state.items():
        np.testing.assert_array_equal(np.asarray(value, np.float32), hf_state[canonical_to_hf(name)], err_msg=name)


def test_published_dims_give_the_published_parameter_counts():
    # millions of parameters on the model cards (openai-whisper, distil-whisper), rounded as published
    published = {"small": 244, "medium": 769, "large-v2": 1550, "large-v3": 1550, "large-v3-turbo": 809,
                 "distil-large-v2": 756, "distil-large-v3": 756, "distil-medium.en": 394, "distil-small.en": 166}
    for name, millions in published.items():
        count = sum(int(np.prod(s)) for s in expected_shapes(VARIANTS[name]).values())
        assert abs(count / 1e6 - millions) <= 0.015 * millions, (name, count)


def test_hf_directory_from_transformers_without_tokenizer_files(turbo_hf):
    assert sorted(p.name for p in turbo_hf.iterdir()) == ["config.json", "generation_config.json",
                                                          "model.safetensors"]
    ckpt = load_checkpoint(turbo_hf)
    assert ckpt.dims == TURBO and ckpt.format == "huggingface"
    # stored precision, memory-mapped: fp16 stays fp16 and no copy of the file is made
    assert all(v.dtype == np.float16 and isinstance(v, np.memmap) for v in ckpt.state.values())
    assert_same_weights(ckpt, transformers_state(turbo_hf))
    tok = ckpt.tokenizer()
    assert ckpt.tokenizer_json is None and "yue" in tok.special.language_codes
    assert tok.sot_sequence("yue") == [50258, 50358, 50360]  # large-v3's <|yue|>, <|transcribe|>
    assert ckpt.describe()["tokenizer"] == "built-in multilingual.tiktoken, 100 languages"


def test_sharded_bfloat16_hf_directory(tmp_path):
    directory = write_huggingface(TURBO, tmp_path / "bf16", dtype="bfloat16", max_shard_size="2MB")
    assert (directory / "model.safetensors.index.json").is_file()
    assert len(list(directory.glob("model-*.safetensors"))) > 1
    ckpt = load_checkpoint(directory)
    assert {v.dtype for v in ckpt.state.values()} == {np.dtype(np.float32)}  # bf16 widened, exactly
    assert_same_weights(ckpt, transformers_state(directory, torch.bfloat16))


def test_openai_pt_keeps_fp16(turbo_hf, tmp_path):
    hf = load_checkpoint(turbo_hf)
    pt = load_checkpoint(write_openai(hf, tmp_path / "large-v3-turbo.pt"))
    assert pt.dims == TURBO and pt.name == "large-v3-turbo" and pt.tokenizer_json is None
    for name, value in hf.state.items():
        assert pt.state[name].dtype == np.float16, name
        np.testing.assert_array_equal(pt.state[name], value, err_msg=name)


@pytest.mark.parametrize("quantization", ["float16", "float32"])
def test_ctranslate2_converter_output(turbo_hf, tmp_path, quantization):
    directory = write_ctranslate2(turbo_hf, tmp_path / f"ct2-{quantization}", quantization)
    assert not (directory / "tokenizer.json").exists()
    ckpt = load_checkpoint(directory)
    assert ckpt.dims == TURBO and ckpt.format == "ctranslate2"
    assert {v.dtype for v in ckpt.state.values()} == {np.dtype(quantization)}
    assert_same_weights(ckpt, transformers_state(turbo_hf))
    config = json.loads((directory / "config.json").read_text())
    assert sorted(config["lang_ids"]) == list(ckpt.tokenizer().special.language_tokens)  # 100, with <|yue|>
    assert ckpt.extra["alignment_heads"] == config["alignment_heads"]


def test_english_only_distil_structure(tmp_path):
    ckpt = load_checkpoint(write_huggingface(DISTIL_EN, tmp_path / "distil-small.en", dtype="float32"))
    assert ckpt.dims == DISTIL_EN and ckpt.dims.n_text_layer == 4
    tok = ckpt.tokenizer()
    assert tok.sot_sequence() == [50257] and tok.special.eot == 50256 and not tok.is_multilingual


def test_generation_settings_that_contradict_the_vocabulary(turbo_hf, tmp_path):
    import shutil

    directory = tmp_path / "hf"
    shutil.copytree(turbo_hf, directory)
    path = directory / "generation_config.json"
    good = json.loads(path.read_text())
    for key, value, message in (
        ("no_timestamps_token_id", 50363, "<|notimestamps|>=50363, expected 50364"),
        ("lang_to_id", {**good["lang_to_id"], "<|yue|>": 50357}, "<|yue|>=50357, expected 50358"),
        ("is_multilingual", False, "is_multilingual=False, expected True"),
    ):
        path.write_text(json.dumps({**good, key: value}))
        with pytest.raises(CheckpointError, match=message.replace("|", r"\|")):
            load_checkpoint(directory)
    path.write_text(json.dumps(good))
    assert load_checkpoint(directory).dims == TURBO


def test_ctranslate2_lang_ids_that_contradict_the_vocabulary(turbo_hf, tmp_path):
    directory = write_ctranslate2(turbo_hf, tmp_path / "ct2")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "lang_ids": config["lang_ids"][:99]}))
    with pytest.raises(CheckpointError, match="received 99 lang_ids .* expected the vocabulary's 100"):
        load_checkpoint(directory)


def test_truncated_safetensors_names_the_tensor(turbo_hf, tmp_path):
    import shutil

    directory = tmp_path / "hf"
    shutil.copytree(turbo_hf, directory)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor '.*': bytes .* expected .* inside the file"):
        load_checkpoint(directory)


def test_reference_keeping_fp16_weights_computes_the_fp32_reference_exactly(turbo_hf):
    """check.py's reference for fp16 checkpoints: the same outputs, bit for bit, from half the weight memory."""
    from reference_model.model import Whisper

    state = load_checkpoint(turbo_hf).state
    fp32, kept = Whisper.from_state_dict(TURBO, state), Whisper.from_state_dict(TURBO, state, keep_fp16=True)
    stored = {t.dtype for t in kept.state_dict().values()}
    assert stored == {torch.float16}
    mel, tokens = torch.randn(2, TURBO.n_mels, 3000), torch.randint(0, 50000, (2, 5))
    with torch.no_grad():
        outputs = []
        for model in (fp32, kept):
            ck, cv = model.encode(mel)
            sk, sv = model.empty_cache(2)
            logits, k, v = model.decoder(tokens, torch.zeros(2, dtype=torch.long), torch.arange(2), sk, sv, ck, cv)
            outputs.append([*ck, *cv, logits, *k, *v])
    assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(*outputs))
