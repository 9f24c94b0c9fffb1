"""int8 CTranslate2 checkpoints, as faster-whisper users save them: made here with ctranslate2's own converter
from the packaged tiny.en (saved as a Hugging Face directory), loaded, dequantized and transcribed."""

from __future__ import annotations

import numpy as np
import pytest

from reference_model import CheckpointError, load_checkpoint
from reference_model.ctranslate2 import dequantize
from reference_model.huggingface import save_huggingface
from whisper_export.checks.wer import corpus_wer
from whisper_export.runtime.normalizers import EnglishTextNormalizer

ctranslate2 = pytest.importorskip("ctranslate2")
LAYOUTS = ("int8", "int8_float16", "int8_float32")


@pytest.fixture(scope="module")
def converted(tiny_checkpoint, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ct2")
    hf = save_huggingface(tiny_checkpoint, root / "hf")
    converter = ctranslate2.converters.TransformersConverter(str(hf), copy_files=["tokenizer.json"])
    return {q: converter.convert(str(root / q), quantization=q) for q in LAYOUTS}


@pytest.fixture(scope="module")
def fp32_texts(tiny_checkpoint, english_clips) -> list[str]:
    from whisper_export.runtime.api import WhisperRuntime

    with WhisperRuntime.load(model=tiny_checkpoint, backend="torch") as rt:
        return [r.unwrap().text for r in rt.transcribe_batch(english_clips, temperature=0.0, without_timestamps=True)]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_int8_checkpoint_dequantizes_within_half_a_step(converted, tiny_checkpoint, layout):
    """Every weight within half its quantization step of the float original (int8 weights: max|row| / 127
    per output channel); float16 layouts also round the other tensors at fp16 precision."""
    ckpt = load_checkpoint(converted[layout])
    assert ckpt.dims == tiny_checkpoint.dims and ckpt.format == "ctranslate2" and ckpt.tokenizer_json is not None
    for name, ref in tiny_checkpoint.state.items():
        got = np.asarray(ckpt.state[name], np.float32)
        assert got.shape == ref.shape, name
        if ref.ndim >= 2 and "positional" not in name:
            step = np.abs(ref).reshape(ref.shape[0], -1).max(axis=1) / 127
            err = np.abs(got - ref).reshape(ref.shape[0], -1).max(axis=1)
            assert np.all(err <= step * 0.5 + 1e-6), name
        else:
            np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4, err_msg=name)
    # the weights really went through int8: a linear layer differs from the float one
    assert not np.array_equal(ckpt.state["encoder.blocks.0.mlp.0.weight"], tiny_checkpoint.state["encoder.blocks.0.mlp.0.weight"])


@pytest.mark.parametrize("layout", ["int8", "int8_float16"])  # int8_float32 stores what int8 stores
def test_int8_checkpoint_transcribes_like_fp32(converted, english_clips, fp32_texts, layout):
    """The dequantized model on the torch backend: its text on the committed clips within 10% WER of the fp32
    model's text (scored against it with the English normaliser)."""
    from whisper_export.runtime.api import WhisperRuntime

    with WhisperRuntime.load(model=str(converted[layout]), backend="torch") as rt:
        texts = [r.unwrap().text for r in rt.transcribe_batch(english_clips, temperature=0.0, without_timestamps=True)]
    normalize = EnglishTextNormalizer()
    assert all(texts)
    assert corpus_wer([normalize(t) for t in fp32_texts], [normalize(t) for t in texts]) <= 0.1, (texts, fp32_texts)


def test_a_bad_scale_is_named():
    weight = np.ones((3, 4), np.int8)
    with pytest.raises(CheckpointError, match=r"w_scale: received shape \(2,\).*expected 3 or 1"):
        dequantize({"w": weight, "w_scale": np.ones(2, np.float32)}, "ckpt")
    with pytest.raises(CheckpointError, match="finite, nonzero: False"):
        dequantize({"w": weight, "w_scale": np.array([1, 0, 1], np.float32)}, "ckpt")


def test_aliases_share_one_dequantized_array():
    weight = np.arange(6, dtype=np.int8).reshape(2, 3)
    out = dequantize({"emb": weight, "emb_scale": np.array([2.0, 4.0], np.float32), "proj": weight}, "ckpt")
    np.testing.assert_array_equal(out["emb"], np.array([[0, 0.5, 1], [0.75, 1, 1.25]], np.float32))
    assert out["proj"] is out["emb"]
