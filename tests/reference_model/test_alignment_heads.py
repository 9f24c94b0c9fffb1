"""Alignment heads: the published table against openai-whisper's own, where each checkpoint's heads come from
(its config, then the table by name or by shape, then openai's last-half default), and bad values."""

from __future__ import annotations

import base64
import gzip
from dataclasses import replace

import numpy as np
import pytest

from reference_model import CheckpointError, load_checkpoint
from reference_model.alignment_heads import KNOWN, last_half_heads, model_key, resolve_alignment_heads
from reference_model.checkpoint import Checkpoint
from reference_model.huggingface import save_huggingface
from reference_model.openai import save_openai
from whisper_export.dims import ModelDims


def test_table_is_openai_whispers():
    """KNOWN holds openai-whisper's _ALIGNMENT_HEADS (base85 + gzip of a (layers, heads) mask) for every model,
    aliases included, with each model's published decoder shape."""
    whisper = pytest.importorskip("whisper")
    published = {"large": "large-v3", "turbo": "large-v3-turbo"}
    assert {published.get(k, k) for k in whisper._ALIGNMENT_HEADS} == set(KNOWN)
    for name, dump in whisper._ALIGNMENT_HEADS.items():
        known = KNOWN[published.get(name, name)]
        mask = np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool)
        assert mask.size == known.n_text_layer * known.n_text_head, name
        want = [tuple(int(v) for v in divmod(i, known.n_text_head)) for i in np.flatnonzero(mask)]
        assert list(known.heads) == want, name


def _dims(name: str) -> ModelDims:
    k = KNOWN[name]
    return ModelDims(n_mels=k.n_mels, n_audio_ctx=1500, n_audio_state=k.n_text_state, n_audio_head=k.n_text_head,
                     n_audio_layer=k.n_text_layer, n_vocab=k.n_vocab, n_text_ctx=448, n_text_state=k.n_text_state,
                     n_text_head=k.n_text_head, n_text_layer=k.n_text_layer)


def _checkpoint(name: str, dims: ModelDims, extra: dict | None = None) -> Checkpoint:
    return Checkpoint(dims, {}, name, "openai", f"{name}.pt", None, extra or {})


def test_resolution_order():
    tiny_en = [list(p) for p in KNOWN["tiny.en"].heads]
    # carried by the checkpoint: used as given (sorted, checked)
    carried = resolve_alignment_heads(_checkpoint("anything", _dims("tiny"), {"alignment_heads": [[3, 1], [0, 2]]}))
    assert carried == ([[0, 2], [3, 1]], "checkpoint")
    # by name, in the spellings checkpoints come with
    for name in ("tiny.en", "openai/whisper-tiny.en", "faster-whisper-tiny.en", "tiny.en.pt", "Systran/faster-whisper-tiny.en/"):
        assert model_key(name) == "tiny.en", name
        assert resolve_alignment_heads(_checkpoint(name, _dims("tiny.en"))) == (tiny_en, "known:tiny.en")
    assert model_key("turbo") == "large-v3-turbo" and model_key("whisper-large") == "large-v3"
    # a name whose model has another shape is not trusted; the shape is (a fine-tune of tiny.en)
    assert resolve_alignment_heads(_checkpoint("base", _dims("tiny.en"))) == (tiny_en, "known:tiny.en")
    assert resolve_alignment_heads(_checkpoint("my-finetune", _dims("small"))) == (
        [list(p) for p in KNOWN["small"].heads], "known:small")
    # large-v1 and large-v2 share a shape: without a name, openai's default
    large = _dims("large-v2")
    assert resolve_alignment_heads(_checkpoint("large-v2", large))[1] == "known:large-v2"
    heads, source = resolve_alignment_heads(_checkpoint("unnamed", large))
    assert source == "last-half" and heads == last_half_heads(large)
    assert heads[0] == [16, 0] and heads[-1] == [31, 19] and len(heads) == 16 * 20


@pytest.mark.parametrize("bad", [[[4, 0]], [[0, 6]], [[-1, 0]], [["a", 0]], [[1]], 7])
def test_bad_carried_heads(bad):
    with pytest.raises(CheckpointError, match=r"x\.pt: alignment_heads: received .*, expected"):
        resolve_alignment_heads(_checkpoint("x", _dims("tiny.en"), {"alignment_heads": bad}))


def test_heads_from_each_checkpoint_format(tiny_checkpoint, tmp_path):
    """CTranslate2's config.json (the packaged tiny.en), Hugging Face's generation_config.json (written by
    save_huggingface, read back), an OpenAI .pt (no heads inside: by its file name)."""
    tiny_en = [list(p) for p in KNOWN["tiny.en"].heads]
    assert resolve_alignment_heads(tiny_checkpoint) == (tiny_en, "checkpoint")
    shuffled = replace(tiny_checkpoint, extra={"alignment_heads": [[3, 4], [1, 0]]})
    hf = load_checkpoint(save_huggingface(shuffled, tmp_path / "hf"))
    assert resolve_alignment_heads(hf) == ([[1, 0], [3, 4]], "checkpoint")
    pt = load_checkpoint(save_openai(tiny_checkpoint, tmp_path / "tiny.en.pt"))
    assert pt.extra == {} and resolve_alignment_heads(pt) == (tiny_en, "known:tiny.en")
