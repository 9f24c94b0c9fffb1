"""align.onnx (word timestamps) is buildable by TensorRT: the fp16 bundle's graph parses (strongly typed) and builds
into an engine for sm_89 with TensorRT-RTX on this CPU-only machine, over a profile of up to 8 rows of up to 230
tokens. The engine is not run (no supported GPU here) and not written into bundles: word timestamps on the
TensorRT backend are not wired yet."""

from __future__ import annotations

from engine_helpers import TARGET_CC, needs_rtx

from whisper_export import graph_io as io
from whisper_export.bundle import Bundle


@needs_rtx
def test_align_graph_builds_with_tensorrt_rtx(built_bundle, tmp_path):
    from engines.loaders import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath
    from whisper_export.backends.tensorrt.profiles import Profile, ShapeRange
    from whisper_export.backends.tensorrt.trt_log import BuildLog

    bundle = Bundle.open(built_bundle.path)
    d = bundle.dims
    log = BuildLog(tmp_path / "align.engine.log")
    parsed = NetworkFromOnnxPath(bundle.align_path, log)()
    network = parsed.network
    assert [network.get_input(i).name for i in range(network.num_inputs)] == io.align_inputs(d.n_text_layer)
    assert [network.get_output(i).name for i in range(network.num_outputs)] == io.align_outputs()
    cross = (d.n_text_head, d.n_audio_ctx, d.text_head_dim)
    shapes = {io.TOKENS: ShapeRange((1, 2), (1, 120), (8, 230)), io.AUDIO_ROWS: ShapeRange((1,), (1,), (8,)),
              **{name: ShapeRange((1, *cross), (1, *cross), (8, *cross)) for name in io.cross_inputs(d.n_text_layer)}}
    built = EngineBytesFromNetwork(parsed, CreateConfig([Profile("align", shapes)], log, (TARGET_CC,)))()
    assert len(built.data) > 10_000_000 and not log.errors  # the decoder's fp16 weights are in it
