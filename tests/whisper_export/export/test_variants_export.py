"""The published variants' structure through export, check and transcribe, at small widths: checkpoints without
tokenizer files (Hugging Face from transformers, OpenAI .pt, CTranslate2 from its converter), fp16 exported to fp16
bit for bit, weights streamed to external data, and check's bounded mode. The full sizes run in
benchmarks/large_variants.py (NOTES.md)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from reference_model import load_checkpoint
from reference_model.synthetic import VARIANTS, narrow, write_ctranslate2, write_huggingface, write_openai
from whisper_export import graph_io as io
from whisper_export.bundle import Bundle
from whisper_export.checks.check import CheckOptions, check_bundle
from whisper_export.export.exporter import ExportOptions, export_bundle

TURBO = narrow(VARIANTS["large-v3-turbo"])  # 128 mels, 51866, 6 encoder / 4 decoder layers, width 64
QUIET = {"progress": lambda _: None}


@pytest.fixture(scope="module")
def turbo_hf(tmp_path_factory):
    return write_huggingface(TURBO, tmp_path_factory.mktemp("variants") / "turbo-hf", seed=2)


@pytest.fixture(scope="module")
def turbo_bundle_fp16(turbo_hf, tmp_path_factory):
    return export_bundle(load_checkpoint(turbo_hf), tmp_path_factory.mktemp("bundles") / "turbo-fp16",
                         ExportOptions(precision="fp16"), **QUIET)


def initializers(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_fp16_checkpoint_exports_to_fp16_bit_for_bit(turbo_hf, turbo_bundle_fp16):
    state = load_checkpoint(turbo_hf).state
    bundle = Bundle.open(turbo_bundle_fp16)
    encoder, decoder = initializers(bundle.encoder_path), initializers(bundle.decoder_path)
    for name in ("encoder.conv1.bias", "encoder.blocks.5.mlp_ln.weight", "encoder.ln_post.bias"):
        assert encoder[name].dtype == np.float16 and encoder[name].tobytes() == state[name].tobytes(), name
    # the convolution stem's kernel (out, in, tap) is stored tap-major (tap * in + in, out) for its one MatMul
    conv1 = state["encoder.conv1.weight"]
    taps = np.ascontiguousarray(conv1.transpose(2, 1, 0).reshape(-1, conv1.shape[0]))
    assert encoder["encoder.conv1.weight_taps"].dtype == np.float16
    assert encoder["encoder.conv1.weight_taps"].tobytes() == taps.tobytes()
    for name in ("decoder.token_embedding.weight", "decoder.positional_embedding"):
        assert decoder[name].dtype == np.float16 and decoder[name].tobytes() == state[name].tobytes(), name
    # projections are stored transposed (x @ W.T); the query's attention scale 1/4 is a power of two: exact
    out = "encoder.blocks.0.attn.out.weight"
    assert encoder[f"{out}_t"].tobytes() == np.ascontiguousarray(state[out].T).tobytes()
    assert bundle.config["special_tokens"]["language_tokens"][-1] == 50358  # <|yue|>, from the built-in vocabulary
    assert (turbo_bundle_fp16 / "tokenizer.json").is_file()
    assert bundle.tokenizer().special.timestamp_begin == 50365


def test_quick_check_of_the_fp16_bundle(turbo_bundle_fp16, english_clips):
    report = check_bundle(turbo_bundle_fp16, english_clips[:1], seed=3, options=CheckOptions.quick())
    assert report.ok, report.table()
    assert any(r.output == f"{io.LOGITS} x4" for r in report.rows)
    assert len(report.tokens) == 1 and 0 < len(report.tokens[0]["reference"]) <= 16


@pytest.mark.parametrize("source", ["openai", "ctranslate2-float32"])
def test_other_layouts_export_and_pass_the_check(source, turbo_hf, tmp_path, english_clips):
    if source == "openai":
        checkpoint = write_openai(load_checkpoint(turbo_hf), tmp_path / "large-v3-turbo.pt")
    else:
        checkpoint = write_ctranslate2(turbo_hf, tmp_path / "ct2", "float32")
    bundle = export_bundle(load_checkpoint(checkpoint), tmp_path / "bundle", **QUIET)
    # the release gate's graph checks (3 windows, 20 steps); a random model never says eot, so tokens are capped
    report = check_bundle(bundle, english_clips[:1], seed=4, options=CheckOptions(max_tokens=32))
    assert report.ok, report.table()
    assert Bundle.open(bundle).dims == TURBO


def test_streamed_weights_never_enter_the_graph_in_memory(turbo_hf, tmp_path):
    """Inside streamed_weights the builder writes each weight to the data file as it makes it: the graph it returns
    references every weight of 1 KB or more, and the file holds them all at 64 KiB-aligned offsets."""
    from whisper_export.export.graphs import decoder_graph
    from whisper_export.export.onnx_builder import WeightFile, streamed_weights

    ckpt = load_checkpoint(turbo_hf)
    with streamed_weights(tmp_path / "decoder.onnx.data") as weights:
        model = decoder_graph(ckpt.dims, ckpt.state, np.float16, "onnx", 23, {})
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    inline = [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    assert len(external) > 4 * TURBO.n_text_layer and all(len(t.raw_data) < 1024 for t in inline)
    assert model.ByteSize() < 100_000
    offsets = [int(next(e.value for e in t.external_data if e.key == "offset")) for t in external]
    assert all(o % WeightFile.ALIGNMENT == 0 for o in offsets)
    assert weights.nbytes == (tmp_path / "decoder.onnx.data").stat().st_size
    onnx.load_external_data_for_model(model, str(tmp_path))
    embedding = next(t for t in model.graph.initializer if t.name == "decoder.token_embedding.weight")
    assert numpy_helper.to_array(embedding).tobytes() == ckpt.state["decoder.token_embedding.weight"].tobytes()


def test_cli_transcribes_and_checks_a_checkpoint_without_tokenizer_files(turbo_hf, turbo_bundle_fp16, english_clips,
                                                                         tmp_path):
    from typer.testing import CliRunner

    from cli import app

    def run(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    # no --bundle: exported on demand (into the tests' private cache) with the built-in vocabulary
    res = run("transcribe", english_clips[0], "--model", turbo_hf, "--language", "en", "--beam-size", "1",
              "--temperature", "0", "--output-format", "json", "--output-dir", tmp_path / "out")
    assert res.exit_code == 0, res.stderr[-2000:]
    result = json.loads((tmp_path / "out" / f"{english_clips[0].stem}.json").read_text())
    assert result["language"] == "en" and result["segments"]
    res = run("check", "--bundle", turbo_bundle_fp16, "--quick", "--steps", "2", "--audio", english_clips[0])
    assert res.exit_code == 0, res.stdout + res.stderr
    assert f"{io.LOGITS} x2" in res.stdout and res.stdout.strip().endswith("PASS")
    res = run("check", "--bundle", turbo_bundle_fp16, "--steps", "0")
    assert res.exit_code == 2 and "check steps: received 0, expected a positive integer" in res.stderr
