"""The fused-attention inspection over engine layer dumps (pure Python: no TensorRT needed)."""

from __future__ import annotations

import json

from engines.attention import (
    NetworkAttention,
    check_engine,
    check_network,
    layers_from_builder_log,
    layers_from_inspector_json,
)

# lines as TensorRT-RTX 1.7 logs them after "Layers:" (ProfilingVerbosity.DETAILED), shortened
LOG = """[VERBOSE] Layers:
Name: __myl_AddReshTranReshMove_myl0_7, LayerType: kgen, Inputs: [ { Name: a, Dimensions: [-1,384], Format: (Linear) Row major linear format }], Constants: [], Outputs: [ { Name: b, Dimensions: [-1,1500,64] }], TacticName: __myl_AddReshTranReshMove_0x45_vec, StreamId: 0, Metadata: [ONNX Layer: Add_2][ONNX Layer: Reshape_2][ONNX Layer: Attention][ONNX Layer: Transpose_3]
Name: _gemm_mha_v2_myl0_16, LayerType: kgen, Inputs: [ { Name: q, Dimensions: [-1,1500,64] }, { Name: k, Dimensions: [-1,64,1500] }], Constants: [], Outputs: [ { Name: o }], TacticName: _gemm_mha_v2_0x1268, StreamId: 0, Metadata: [ONNX Layer: Attention]
Name: _gemv_mha_v1_myl0_40, LayerType: kgen, Inputs: [], Constants: [], Outputs: [], TacticName: _gemv_mha_v1_0x4bb6_vec, StreamId: 1, Metadata: [ONNX Layer: Attention_1]
Name: exit^bb^signal^1_myl0_94, LayerType: signal, Inputs: [], Constants: [], Outputs: [], TacticName: , StreamId: 1, EventId: 14, Metadata: 
Name: _gemm_mha_v2_myl0_52, LayerType: kgen, Inputs: [], Constants: [], Outputs: [], TacticName: _gemm_mha_v2_0xc85a, StreamId: 0, Metadata: [ONNX Layer: MatMul_12][ONNX Layer: Cast_10][ONNX Layer: Softmax_1][ONNX Layer: MatMul_11]
"""


def _net(*names: str) -> list[NetworkAttention]:
    return [NetworkAttention(n, False, False) for n in names]


def test_builder_log_parsing():
    layers = layers_from_builder_log(LOG)
    assert [layer.name for layer in layers] == ["__myl_AddReshTranReshMove_myl0_7", "_gemm_mha_v2_myl0_16",
                                                "_gemv_mha_v1_myl0_40", "exit^bb^signal^1_myl0_94",
                                                "_gemm_mha_v2_myl0_52"]
    assert layers[0].onnx_nodes == ("Add_2", "Reshape_2", "Attention", "Transpose_3")
    assert layers[1].tactic == "_gemm_mha_v2_0x1268" and layers[1].is_fused_attention
    assert not layers[0].is_fused_attention  # mentions Attention in metadata, but is a reshape kernel
    assert not layers[3].is_fused_attention


def test_all_attention_nodes_fused_passes_and_pattern_fusions_are_counted_apart():
    report = check_engine(check_network("encoder", 2, _net("Attention", "Attention_1")),
                          layers_from_builder_log(LOG), "builder_log")
    assert report.passed, report.problems
    assert report.engine_fused == 2 and report.pattern_mha_fusions == 1
    assert report.fused_kernels == ["_gemm_mha_v2_0x1268", "_gemv_mha_v1_0x4bb6_vec"]
    assert "2/2 attention ops fused" in report.summary()


def test_an_unfused_attention_node_fails():
    report = check_engine(check_network("decoder", 3, _net("Attention", "Attention_1", "Attention_2")),
                          layers_from_builder_log(LOG), "builder_log")
    assert not report.passed
    assert report.unfused_nodes == ["Attention_2"]
    assert "1 attention ops have no fused attention kernel in the engine: Attention_2" in report.summary()


def test_no_iattention_in_the_network_fails_even_with_trt_pattern_fusion():
    report = check_network("encoder", 4, [])
    assert "has 0 IAttention layers, expected 4" in report.problems[0]
    report = check_engine(report, layers_from_builder_log(LOG), "builder_log")
    assert not report.passed and report.engine_fused == 0 and report.pattern_mha_fusions == 3


def test_decomposable_attention_fails():
    report = check_network("encoder", 1, [NetworkAttention("Attention", True, False)])
    assert not report.passed and "allow decomposition" in report.problems[0]


def test_missing_layer_information_fails():
    report = check_engine(check_network("encoder", 1, _net("Attention")), [], "builder_log")
    assert not report.passed and "ProfilingVerbosity.DETAILED" in report.problems[0]


def test_engine_inspector_json_parsing():
    text = json.dumps({"Layers": [
        {"Name": "_gemm_mha_v2_myl0_16", "LayerType": "kgen", "TacticName": "_gemm_mha_v2_0x1", "Metadata": "[ONNX Layer: Attention]"},
        {"Name": "Reformat", "LayerType": "Reformat", "TacticName": "", "Metadata": ""},
    ], "Bindings": ["in_mel"]})
    layers = layers_from_inspector_json(text)
    report = check_engine(check_network("encoder", 1, _net("Attention")), layers, "engine_inspector")
    assert report.passed and report.engine_source == "engine_inspector"
    # below DETAILED verbosity the inspector lists names only: nothing to prove fusion with
    names_only = layers_from_inspector_json(json.dumps({"Layers": ["a", "b"]}))
    assert not check_engine(check_network("encoder", 1, _net("Attention")), names_only, "engine_inspector").passed
