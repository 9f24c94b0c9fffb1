"""The protobuf-level cut of an ONNX model (runtime/onnx_cut.py), checked with the onnx package itself."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_export.runtime.onnx_cut import CutError, cut, encode, fields
from whisper_export.runtime.vad import FEATURES, silero_model_path

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def silero() -> bytes:
    return silero_model_path().read_bytes()


def test_fields_read_and_write_a_model_byte_for_byte(silero):
    assert encode(fields(silero)) == silero


def test_halves_are_valid_models_that_meet_at_the_tensor(silero):
    front, back = (onnx.load_from_string(half) for half in cut(silero, FEATURES))
    for model in (front, back):
        onnx.checker.check_model(model, full_check=True)
    whole = onnx.load_from_string(silero)
    assert [i.name for i in front.graph.input] == ["input"]
    assert [o.name for o in front.graph.output] == [FEATURES]
    assert [i.name for i in back.graph.input] == [FEATURES, "h", "c"]
    assert [o.name for o in back.graph.output] == [o.name for o in whole.graph.output]
    # every node once, in order; every initializer where a node reads it
    assert [n.name for n in front.graph.node] + [n.name for n in back.graph.node] == [n.name for n in whole.graph.node]
    for model in (front, back):
        read = {i for n in model.graph.node for i in n.input}
        assert {t.name for t in model.graph.initializer} == read & {t.name for t in whole.graph.initializer}
    assert front.opset_import == whole.opset_import and back.ir_version == whole.ir_version


def test_halves_compute_what_the_whole_model_does(silero):
    import onnxruntime as ort

    def session(model: bytes):
        return ort.InferenceSession(model, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(3)
    frames = (rng.standard_normal((40, 576)) * 0.1).astype(np.float32)
    state = {"h": rng.standard_normal((1, 1, 128)).astype(np.float32), "c": np.zeros((1, 1, 128), np.float32)}
    front, back = cut(silero, FEATURES)
    features = session(front).run(None, {"input": frames})[0]
    assert features.shape[0] == 40
    for ours, theirs in zip(session(back).run(None, {FEATURES: features, **state}),
                            session(silero).run(None, {"input": frames, **state})):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("tensor, message", [
    ("no_such_tensor", r"received tensor 'no_such_tensor', expected a tensor that a node of the model reads"),
    ("input", r"received tensor 'input', expected the one tensor passing from front to back"),
    # the first Pow reads it, but the second Pow, after the cut, reads the other Slice's output, made before it
    ("_v_146", r"received tensor '_v_146', expected the one tensor passing from front to back"),
])
def test_a_cut_where_more_than_one_tensor_crosses_is_refused(silero, tensor, message):
    with pytest.raises(CutError, match=message):
        cut(silero, tensor)


def test_truncated_or_foreign_bytes_are_refused(silero):
    with pytest.raises(CutError, match="runs past the end of the model"):
        cut(silero[: len(silero) // 2], FEATURES)
    with pytest.raises(CutError, match="expected 1"):
        cut(b"", FEATURES)
