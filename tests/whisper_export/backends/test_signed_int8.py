"""An int8 bundle's MatMulInteger weights given to onnxruntime as int8 (backends/signed_int8.py): the rewrite
of the protobuf bytes against the onnx package's reading of them, and the outputs against the uint8 form."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from whisper_export.backends import signed_int8
from whisper_export.backends.ort_cpu import OrtCpuBackend
from whisper_export.backends.signed_int8 import cpu_multiplies_u8s8_exactly, signed_weights

K, N, V = 48, 40, 30


def _model(rng, zero_point: int = 128) -> tuple[bytes, np.ndarray, np.ndarray]:
    """y = MatMulInteger(x, w, 128, zero point) three times (one weight shared by two matmuls and a Gather, one
    read by a matmul and a Shape), as export --int8 writes them. Small values: no u8 x s8 kernel saturates on them."""
    shared = (rng.integers(-20, 21, (K, N)) + 128).astype(np.uint8)
    alone = (rng.integers(-20, 21, (N, V)) + 128).astype(np.uint8)
    nodes = [
        helper.make_node("MatMulInteger", ["x", "shared", "x_zero", "w_zero"], ["p"]),
        helper.make_node("MatMulInteger", ["x", "shared", "x_zero", "w_zero"], ["p2"]),
        helper.make_node("Add", ["p", "p2"], ["sum"]),
        helper.make_node("Cast", ["sum"], ["sum_u8_rows"], to=TensorProto.FLOAT),
        helper.make_node("DynamicQuantizeLinear", ["sum_u8_rows"], ["q", "q_scale", "q_zero"]),
        helper.make_node("MatMulInteger", ["q", "alone", "q_zero", "w_zero"], ["y"]),
        helper.make_node("Gather", ["shared", "ids"], ["rows"], axis=0),
        helper.make_node("Shape", ["alone"], ["dims"]),  # reads only the dims, as export's output shapes do
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [None, K]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, V]),
         helper.make_tensor_value_info("rows", TensorProto.UINT8, [None, N]),
         helper.make_tensor_value_info("dims", TensorProto.INT64, [2])],
        [numpy_helper.from_array(shared, "shared"), numpy_helper.from_array(alone, "alone"),
         numpy_helper.from_array(np.array(128, np.uint8), "x_zero"),
         numpy_helper.from_array(np.array(zero_point, np.uint8), "w_zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model.SerializeToString(), shared, alone


def _run(model: bytes, x: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x, "ids": ids})


def test_the_rewrite_signs_the_matmul_weights_and_leaves_what_else_reads_them():
    rng = np.random.default_rng()
    model, shared, alone = _model(rng)
    signed, rewritten = signed_weights(model)
    assert rewritten == 3
    read = onnx.load_from_string(signed)
    tensors = {t.name: numpy_helper.to_array(t) for t in read.graph.initializer}
    matmuls = [n for n in read.graph.node if n.op_type == "MatMulInteger"]
    for node, original in zip(matmuls, (shared, shared, alone)):
        weights, zero = tensors[node.input[1]], tensors[node.input[3]]
        assert weights.dtype == np.int8 and zero.dtype == np.int8 and zero.item() == 0
        np.testing.assert_array_equal(weights, original.astype(np.int16) - 128)
    assert matmuls[0].input[1] == matmuls[1].input[1] != "shared"  # one int8 copy for both
    assert matmuls[2].input[1] == "alone"  # its values read only by a matmul: replaced under its own name
    # nothing else copied: alone replaced in place (its Shape reads only dims), one int8 copy of shared, one zero
    added = {matmuls[0].input[1], matmuls[0].input[3]}
    assert {t.name for t in read.graph.initializer} == {"shared", "alone", "x_zero", "w_zero"} | added
    gather = next(n for n in read.graph.node if n.op_type == "Gather")
    assert gather.input[0] == "shared" and tensors["shared"].dtype == np.uint8
    np.testing.assert_array_equal(tensors["shared"], shared)
    onnx.checker.check_model(read, full_check=True)
    x = rng.integers(0, 256, (7, K)).astype(np.uint8)
    ids = rng.integers(0, K, 5)
    for got, expected in zip(_run(signed, x, ids), _run(model, x, ids)):
        np.testing.assert_array_equal(got, expected)


def test_a_weight_that_is_also_a_graph_output_is_copied_not_replaced():
    model, _, alone = _model(np.random.default_rng(1))
    read = onnx.load_from_string(model)
    read.graph.output.append(helper.make_tensor_value_info("alone", TensorProto.UINT8, [N, V]))
    signed, rewritten = signed_weights(read.SerializeToString())
    assert rewritten == 3
    out = onnx.load_from_string(signed)
    tensors = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert tensors["alone"].dtype == np.uint8  # the output keeps its type and values
    np.testing.assert_array_equal(tensors["alone"], alone)
    onnx.checker.check_model(out, full_check=True)


def test_a_matmul_with_another_zero_point_is_left_as_it_is():
    model, _, _ = _model(np.random.default_rng(0), zero_point=127)
    assert signed_weights(model) == (model, 0)


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse avx2 avx512f avx512_vnni avx512bw", True),
    ("fpu sse avx2 avx_vnni", True),
    ("fpu sse avx2 amx_tile amx_int8", True),
    ("fpu sse avx2 avx512f avx512bw", False),  # vpmaddubsw: int16 pairs that saturate
])
def test_the_cpu_flags_that_make_u8s8_exact(tmp_path, monkeypatch, flags, expected):
    monkeypatch.setattr(signed_int8.platform, "machine", lambda: "x86_64")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\n")
    assert cpu_multiplies_u8s8_exactly.__wrapped__(str(cpuinfo)) is expected


def test_an_int8_bundle_gives_the_same_outputs_with_signed_weights(tiny_bundle_int8, monkeypatch):
    """Where onnxruntime's u8 x s8 kernel is exact (the CPU check), the signed sessions' cross K/V and logits
    equal the uint8 sessions' bit for bit."""
    if not cpu_multiplies_u8s8_exactly():
        pytest.skip("this CPU has no VNNI or AMX: the backend keeps the uint8 weights here")
    signed = OrtCpuBackend(tiny_bundle_int8, threads=2)
    monkeypatch.setattr("whisper_export.backends.ort_common.cpu_multiplies_u8s8_exactly", lambda: False)
    unsigned = OrtCpuBackend(tiny_bundle_int8, threads=2)
    assert signed._signed_int8 and not unsigned._signed_int8
    mel = np.random.default_rng().standard_normal((2, 80, 3000)).astype(np.float32)
    crosses = signed.encode(mel), unsigned.encode(mel)
    for a, b in zip(crosses[0].values, crosses[1].values):
        np.testing.assert_array_equal(a, b)
    from whisper_export.backends.step import StepRequest

    tokens = np.array([[50257, 50362, 440], [50257, 50362, 1002]], np.int64)
    logits = []
    for backend, cross in zip((signed, unsigned), crosses):
        cache = backend.new_cache(2, 16)
        request = StepRequest(tokens=tokens, offsets=np.zeros(2, np.int64))
        logits.append(backend.step(request, cache, cross).logits)
    np.testing.assert_array_equal(logits[0], logits[1])
