"""attention="onnxruntime": the decoder on onnxruntime's fused contrib operators (graphs_ort.py), on the CPU.

The fp32 logits of this variant against PyTorch are held to 1e-4 in test_export's 20-step rollout; here its
structure, its fp16 tokens, its runtime behaviour and its one restriction.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from reference_model.model import Whisper
from whisper_export.backends.onnxruntime import OnnxRuntimeBackend
from whisper_export.backends.step import StepRequest
from whisper_export.bundle import Bundle
from whisper_export.checks.check import check_graphs, check_tokens
from whisper_export.export.exporter import ExportOptions, export_bundle
from whisper_export.runtime.api import WhisperRuntime
from whisper_export.runtime.audio import log_mel_batch


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def test_decoder_runs_on_fused_kernels(tiny_bundle_ort, tiny_checkpoint):
    dims = tiny_checkpoint.dims
    bundle = Bundle.open(tiny_bundle_ort)
    dec, enc = _ops(bundle.decoder_path), _ops(bundle.encoder_path)
    L = dims.n_text_layer
    assert dec["GroupQueryAttention"] == L and dec["MultiHeadAttention"] == L and dec["BiasGelu"] == L
    # every LayerNorm takes the residual and the previous projection's bias with it; the first adds the
    # positional embedding to the token embedding
    assert dec["SkipLayerNormalization"] == 3 * L + 1 and "LayerNormalization" not in dec
    assert not {"ScatterElements", "Softmax", "Attention", "Transpose", "Gelu"} & set(dec)
    assert enc["MultiHeadAttention"] == dims.n_audio_layer and "Softmax" not in enc


def test_fp16_variant_greedy_tokens_identical_to_fp32_reference(tiny_checkpoint, english_clips, tmp_path):
    bundle = Bundle.open(export_bundle(tiny_checkpoint, tmp_path / "b16",
                                       ExportOptions(precision="fp16", attention="onnxruntime"), progress=lambda _: None))
    model = Whisper.from_state_dict(tiny_checkpoint.dims, tiny_checkpoint.state)
    rows = check_graphs(bundle, model, seed=int(np.random.SeedSequence().entropy % 2**31))
    assert all(r.ok for r in rows), [r for r in rows if not r.ok]
    for r in check_tokens(bundle, model, english_clips):
        assert r["identical"], f"{r['audio']}: reference {r['reference']} != fp16 variant {r['bundle']}"


@pytest.mark.parametrize("options", [dict(beam_size=1), dict(beam_size=5), dict(beam_size=1, without_timestamps=False)])
def test_variant_transcribes_like_the_standard_bundle(tiny_bundle, tiny_bundle_ort, english_clips, options):
    with WhisperRuntime.load(tiny_bundle) as standard, WhisperRuntime.load(tiny_bundle_ort) as fused:
        for clip in english_clips:
            want, got = standard.transcribe(clip, **options), fused.transcribe(clip, **options)
            assert [s.tokens for s in got.segments] == [s.tokens for s in want.segments], clip.name


def test_several_tokens_only_as_a_prompt(tiny_bundle_ort, english_clips):
    with OnnxRuntimeBackend(tiny_bundle_ort) as backend:
        cross = backend.encode(log_mel_batch(english_clips[:1]))
        cache = backend.new_cache(1, 8)
        backend.step(StepRequest(np.array([[50257, 50362]]), np.array([0])), cache, cross)
        with pytest.raises(ValueError, match=r"offsets: received \[2\] for a 2-token step, expected all 0"):
            backend.step(StepRequest(np.array([[440, 2068]]), np.array([2])), cache, cross)
