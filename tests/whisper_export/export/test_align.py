"""align.onnx (word timestamps) on real weights: the graph against the PyTorch reference in every bundle kind, its
operators, the alignment heads in the bundle config, the backends' align() (onnxruntime, torch) and its checks, and
bundles exported before it (they open and transcribe; word timestamps fail with a re-export message)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from reference_model.alignment_heads import KNOWN
from reference_model.model import Whisper
from whisper_export import graph_io as io
from whisper_export.bundle import Bundle, write_manifest
from whisper_export.checks.check import check_align


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    return Whisper.from_state_dict(tiny_checkpoint.dims, tiny_checkpoint.state)


def _reference_cross(model, seed: int):
    import torch

    mel = np.random.default_rng(seed).standard_normal((2, 80, 3000)).astype(np.float32)
    with torch.no_grad():
        return model.encode(torch.from_numpy(mel))


@pytest.mark.parametrize("kind", ["fp32", "fp16", "fp32 onnxruntime"])
def test_align_graph_matches_the_reference(kind, tiny_bundle, tiny_bundle_fp16, tiny_bundle_ort, tiny_model):
    """check_align: the alignment heads' scores and log text probabilities within the bundle precision's tolerance
    (fp32 1e-4 + 1e-4 x max|ref|; fp16 1e-2 + 2e-2 x max|ref|), 0 where the next token is not text."""
    bundle = Bundle.open({"fp32": tiny_bundle, "fp16": tiny_bundle_fp16, "fp32 onnxruntime": tiny_bundle_ort}[kind])
    seed = int(np.random.SeedSequence().entropy % 2**31)
    rows = check_align(bundle, tiny_model, *_reference_cross(tiny_model, seed), np.random.default_rng(seed))
    assert len(rows) == 3 and all(r.ok for r in rows), f"seed {seed}: {rows}"
    if kind == "fp32":
        assert rows[0].max_abs < 1e-4 and rows[1].max_abs < 1e-4, rows


def test_align_graph_is_plain_onnx_in_every_bundle_kind(tiny_bundle, tiny_bundle_ort, tiny_bundle_fp16):
    """No contrib operator and no opset-23 Attention, whatever attention the decoder was exported with: the same
    graph for onnxruntime's CPU and CUDA providers and for TensorRT; scores and softmax in float32."""
    graphs = [onnx.load(str(Bundle.open(b).align_path)) for b in (tiny_bundle, tiny_bundle_ort, tiny_bundle_fp16)]
    ops = [[n.op_type for n in g.graph.node] for g in graphs]
    assert ops[0] == ops[1] and all(n.domain in ("", "ai.onnx") for g in graphs for n in g.graph.node)
    assert "Attention" not in ops[0] and {"MatMul", "Softmax", "LogSoftmax", "GatherElements"} <= set(ops[0])
    fp16 = graphs[2].graph
    typed = {v.name: v.type.tensor_type.elem_type for v in [*fp16.value_info, *fp16.input, *fp16.output]}
    softmax_inputs = [n.input[0] for n in fp16.node if n.op_type in ("Softmax", "LogSoftmax")]
    assert softmax_inputs and all(typed[name] == onnx.TensorProto.FLOAT for name in softmax_inputs)
    assert [o.name for o in fp16.output] == io.align_outputs()
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in fp16.output)


def test_bundle_config_carries_the_alignment_heads(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    assert bundle.alignment_heads == [list(p) for p in KNOWN["tiny.en"].heads]
    assert bundle.config["alignment_heads_source"] == "checkpoint"  # tiny.en's CTranslate2 config.json has them


def _encoded(backend, clips):
    from whisper_export.runtime.audio import load_audio, log_mel_batch

    mel = log_mel_batch([load_audio(clips[n]["path"]) for n in ("en_fox.wav", "en_stella.wav")], 80)
    return backend.encode(mel)


def _request(tokenizer, texts: list[str]):
    special = tokenizer.special
    rows = [[special.sot, special.no_timestamps, *tokenizer.encode(t), special.eot] for t in texts]
    lengths = np.array([len(r) for r in rows], np.int64)
    tokens = np.full((len(rows), lengths.max()), special.eot, np.int64)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    return tokens, lengths


def test_backends_align_alike(tiny_bundle, tiny_checkpoint, clips):
    """OnnxRuntimeBackend.align (align.onnx) and TorchBackend.align (the PyTorch decoder with hooks) on real
    speech: rows attend to the audio audio_rows names; fp32 tolerance on the scores, probabilities alike."""
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend
    from whisper_export.backends.reference import TorchBackend

    bundle = Bundle.open(tiny_bundle)
    tokens, lengths = _request(bundle.tokenizer(), [" Please call Stella.", " The quick brown fox.", " Hi"])
    audio_rows = np.array([1, 0, 1], np.int64)
    with OnnxRuntimeBackend(bundle) as ort_backend, TorchBackend(tiny_checkpoint) as torch_backend:
        qk, probs = ort_backend.align(_encoded(ort_backend, clips), audio_rows, tokens, lengths)
        want_qk, want_probs = torch_backend.align(_encoded(torch_backend, clips), audio_rows, tokens, lengths)
    assert qk.shape == (3, 8, tokens.shape[1], 1500) and probs.shape == (3, tokens.shape[1] - 1)
    assert np.abs(qk - want_qk).max() <= 1e-4 + 1e-4 * np.abs(want_qk).max()
    np.testing.assert_allclose(probs, want_probs, atol=1e-5)
    # speech that says the text: its words are likely (" Please", " call", " Stella"), the eot after them not text
    assert probs[0, 1:4].min() > 0.2 and probs[0, 0] == probs[0, 5] == 0.0, probs[0]


@pytest.mark.parametrize("bad, message", [
    (dict(audio_rows=np.array([0, 2, 0])), r"align audio_rows: received \[0, 2, 0\], expected 3 rows in 0\.\.1"),
    (dict(lengths=np.array([5, 1, 5])), r"align lengths: received \[5, 1, 5\], expected 3 lengths in 2\.\.\d+"),
    (dict(tokens=np.zeros((3, 1), np.int64)), r"align tokens: received shape \(3, 1\), expected"),
    (dict(tokens=np.full((3, 4), 99999)), r"align tokens: received ids 99999\.\.99999, expected 0\.\.51863"),
    (dict(audio_rows=np.array([0.0, 1.0, 0.0])), r"align audio_rows: received float64 \(3,\), expected a 1-D int64"),
])
def test_align_request_is_checked(bad, message, tiny_bundle):
    """Checked before align.onnx is opened or run (the cross K/V's contents do not matter)."""
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend

    bundle = Bundle.open(tiny_bundle)
    tokens, lengths = _request(bundle.tokenizer(), [" One.", " Two words.", " Three"])
    request = dict(audio_rows=np.array([0, 1, 0], np.int64), tokens=tokens, lengths=lengths) | bad
    with OnnxRuntimeBackend(bundle) as backend:
        with pytest.raises(ValueError, match=message):
            backend.align(backend.new_cross(2), request["audio_rows"], request["tokens"], request["lengths"])
        assert backend._align is None


def test_bundle_without_align_opens_and_words_need_a_re_export(tiny_bundle, tmp_path, clips):
    """A bundle exported before align.onnx: it opens and transcribes; word timestamps fail, naming the file and
    the version to re-export with."""
    from whisper_export.runtime.api import WhisperRuntime

    old = tmp_path / "old-bundle"
    shutil.copytree(tiny_bundle, old)
    (old / io.ALIGN_FILE).unlink()
    config = json.loads((old / "manifest.json").read_text())["config"]
    (old / "manifest.json").unlink()
    write_manifest(old, {k: v for k, v in config.items() if not k.startswith("alignment_heads")})
    bundle = Bundle.open(old)
    assert bundle.align_path is None and bundle.alignment_heads == []
    with WhisperRuntime.load(old) as runtime:
        assert "lazy dog" in runtime.transcribe(clips["en_fox.wav"]["path"]).text
        with pytest.raises(ValueError, match=r"has no align\.onnx .* re-export the bundle with whisper-export >= 0\.2"):
            runtime.transcribe(clips["en_fox.wav"]["path"], word_timestamps=True)
