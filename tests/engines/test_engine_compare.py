"""compare_backends: every graph output across torch / onnxruntime / TensorRT through polygraphy's comparator."""

from __future__ import annotations

import pytest

from engine_helpers import needs_rtx


@needs_rtx
def test_compare_backends_rows_and_skips(built_bundle, tiny_checkpoint):
    from whisper_export.checks.compare import compare_backends, format_table
    from whisper_export.backends.tensorrt.cuda import probe_device

    assert built_bundle.exit_code == 0, built_bundle.stderr
    rows = compare_backends(built_bundle.path, ["torch", "onnxruntime", "tensorrt"], checkpoint=tiny_checkpoint)
    table = format_table(rows)
    compared = [r for r in rows if r.status != "skipped"]
    assert {r.backend for r in compared} >= {"onnxruntime"} and {r.reference for r in compared} == {"torch"}
    assert {r.graph for r in compared} >= {"encoder", "decoder[prompt]", "decoder[step]"}
    outputs = {(r.graph, r.output) for r in compared if r.backend == "onnxruntime"}
    assert ("encoder", "out_cross_v_3") in outputs and ("decoder[step]", "out_logits") in outputs
    assert ("decoder[prompt]", "out_self_k_0") in outputs and len(outputs) == 8 + 2 * 9
    assert all(r.ok for r in compared), table
    assert all(r.get("ok") for r in rows)  # mapping-style access for callers treating rows as dicts
    if probe_device()[0] is None:  # CPU CI: the TensorRT backend is skipped with its reason, in the table
        (skip,) = [r for r in rows if r.status == "skipped"]
        assert skip.backend == "tensorrt" and "no CUDA device" in skip.reason
        assert "tensorrt     -            skipped: " in table


def test_compare_backends_needs_two_backends_and_known_names(tiny_bundle_fp16):
    from whisper_export.checks.compare import compare_backends

    with pytest.raises(ValueError, match="expected a non-empty subset"):
        compare_backends(tiny_bundle_fp16, ["torch", "tensorflow"])
    rows = compare_backends(tiny_bundle_fp16, ["onnxruntime", "tensorrt"])
    assert rows[-1].status == "skipped" and "fewer than two backends" in rows[-1].reason
    assert any(r.backend == "tensorrt" and "encoder.engine is missing" in r.reason for r in rows)
