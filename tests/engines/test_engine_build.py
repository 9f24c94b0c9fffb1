"""Engine builds with TensorRT-RTX, ahead of time for sm_89 on a CPU-only machine."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from engine_helpers import TARGET_CC, needs_rtx, run_build_cli

pytestmark = needs_rtx


def _sidecar(bundle: Path, graph: str):
    from whisper_export.backends.tensorrt.sidecar import EngineSidecar, sidecar_path

    return EngineSidecar.read(sidecar_path(bundle / f"{graph}.engine"))


def test_cli_build_writes_both_engines_with_valid_sidecars(built_bundle, capsys):
    from whisper_export.bundle import Bundle, sha256_file

    assert built_bundle.exit_code == 0, built_bundle.stderr
    with capsys.disabled():
        print(f"\n[engines] CLI build of tiny.en fp16 for sm_{TARGET_CC.replace('.', '')}: {built_bundle.seconds:.1f} s "
              "(checkpoint + export + both engines)")
    out = built_bundle.path
    assert built_bundle.stdout.strip() == str(out)  # the bundle path on stdout, progress on stderr
    assert "[build] encoder:" in built_bundle.stderr and "[build] decoder:" in built_bundle.stderr
    bundle = Bundle.open(out)  # verifies every hash, engines included
    for graph in ("encoder", "decoder"):
        engine = out / f"{graph}.engine"
        assert engine.stat().st_size > 1_000_000
        assert f"{graph}.engine" in bundle.files and f"{graph}.engine.json" in bundle.files
        s = _sidecar(out, graph)
        assert s.graph == graph and s.engine_file == engine.name
        assert s.engine_sha256 == hashlib.sha256(engine.read_bytes()).hexdigest()
        assert s.engine_bytes == engine.stat().st_size
        assert s.onnx_sha256 == sha256_file(out / f"{graph}.onnx")
        assert (s.trt_module, s.trt_version) == ("tensorrt_rtx", __import__("tensorrt_rtx").__version__)
        assert s.compute_capabilities == [TARGET_CC] and s.built_on_compute_capability is None
        assert s.precision == "fp16" and s.strongly_typed
        assert s.build_seconds > 0 and s.built_at
        assert s.profiles and s.fused_attention["passed"] is True
        assert all("softmax_precision" in r for r in s.onnx_rewrites)  # what was changed before parsing
        assert (out / s.log_file).stat().st_size > 0
        with capsys.disabled():
            print(f"[engines] {graph}.engine: {s.engine_bytes / 1e6:.1f} MB, builder {s.build_seconds:.2f} s")
    enc, dec = _sidecar(out, "encoder"), _sidecar(out, "decoder")
    assert [t.name for t in enc.inputs] == ["in_mel"]
    assert {t.name: t.dtype for t in dec.inputs}["in_tokens"] == "int64"
    assert {t.name: t.dtype for t in dec.outputs}["out_logits"] == "float32"
    assert {t.name: t.dtype for t in dec.outputs}["out_self_k_0"] == "float16"
    # the int64 steering inputs are data tensors, not shape tensors: dynamic on the rows axis only
    assert {t.name: t.dim_names for t in dec.inputs}["in_offsets"] == ("rows",)
    assert [p.name for p in dec.profiles] == ["step", "prompt"]
    prompt = dec.profiles[1].shapes
    assert prompt["in_tokens"].max == (80, 228) and prompt["in_self_k_0"].max == (80, 6, 448, 64)
    assert prompt["in_cross_k_0"].max == (16, 6, 1500, 64) and enc.profiles[0].shapes["in_mel"].max == (16, 80, 3000)


def test_every_attention_op_is_a_fused_attention_kernel(built_bundle, tiny_checkpoint):
    assert built_bundle.exit_code == 0, built_bundle.stderr
    dims = tiny_checkpoint.dims
    for graph, expected in (("encoder", dims.n_audio_layer), ("decoder", 2 * dims.n_text_layer)):
        fused = _sidecar(built_bundle.path, graph).fused_attention
        assert fused["expected"] == expected
        assert fused["network_attention"] == expected  # IAttention layers in the parsed network
        assert fused["engine_fused"] == expected  # ... each found in a fused MHA kernel of the engine
        assert fused["decomposable"] == 0 and fused["unfused_nodes"] == [] and fused["passed"]
        assert all("mha" in k for k in fused["fused_kernels"]), fused["fused_kernels"]


def test_second_build_reuses_the_timing_cache(built_bundle, tmp_path):
    from engines.build import BuildOptions, build_engines

    caches = sorted((built_bundle.cache_dir / "tensorrt").glob("tensorrt_rtx-*-sm89.timing-cache"))
    assert len(caches) == 1 and caches[0].stat().st_size > 0  # written by build 1
    size = caches[0].stat().st_size
    bundle = tmp_path / "b"
    shutil.copytree(built_bundle.path, bundle)
    messages: list[str] = []
    report = build_engines(bundle, BuildOptions(trt_module="tensorrt_rtx", compute_capabilities=(TARGET_CC,),
                                                cache_dir=built_bundle.cache_dir / "tensorrt", graphs=("encoder",)),
                           progress=messages.append)
    cache = report.engines[0].sidecar.timing_cache
    assert cache["path"] == str(caches[0])
    assert cache["loaded_bytes"] == size > 0  # build 2 read the non-empty cache of build 1 ...
    log = (bundle / "encoder.engine.log").read_text()
    assert f"timing cache: read {size} bytes from {caches[0]}" in log
    # ... and handed it to TensorRT, whose verdict is recorded: TensorRT-RTX cannot deserialize a timing
    # cache without a CUDA device, so on CPU CI it is refused (and kept for GPU builds), on a GPU accepted
    if cache["accepted"] is False:
        assert "CUDA device" in cache["detail"]
        assert caches[0].stat().st_size == size  # the refused cache was not overwritten
    else:
        assert cache["accepted"] is True


def test_matmul_fallback_fails_the_fused_attention_check(matmul_bundle, tmp_path):
    from engines.attention import FusedAttentionError
    from engines.build import BuildOptions, build_engines

    options = BuildOptions(trt_module="tensorrt_rtx", compute_capabilities=(TARGET_CC,), cache_dir=tmp_path)
    with pytest.raises(FusedAttentionError, match="0 IAttention layers, expected 4"):
        build_engines(matmul_bundle, options, progress=lambda _: None)  # refused before building
    assert not (matmul_bundle / "encoder.engine").exists()
    # built anyway, the engine inspection still fails it: TensorRT's own MatMul-Softmax-MatMul pattern
    # fusions are reported but do not count as fused attention ops
    from dataclasses import replace

    report = build_engines(matmul_bundle, replace(options, graphs=("encoder",), require_fused_attention=False),
                           progress=lambda _: None)
    fused = report.engines[0].fused
    assert not fused.passed and fused.engine_fused == 0 and fused.network_attention == 0
    assert fused.engine_source == "builder_log"


def _broken_bundle(src: Path, dst: Path) -> None:
    """A copy of a bundle whose encoder.onnx has a node the TensorRT parser cannot import."""
    from whisper_export.bundle import Bundle, write_manifest

    dst.mkdir()
    for name in ("decoder.onnx", "cache_reorder.onnx", "greedy_select.onnx", "tokenizer.json"):
        shutil.copy(src / name, dst / name)
    x = helper.make_tensor_value_info("in_mel", TensorProto.FLOAT, ["batch", 80, 3000])
    y = helper.make_tensor_value_info("out_cross_k_0", TensorProto.FLOAT, ["batch", 80, 3000])
    nodes = [helper.make_node("Relu", ["in_mel"], ["h"], name="fine_relu"),
             helper.make_node("FrobnicateTensor", ["h"], ["out_cross_k_0"], name="my_broken_node", domain="bogus.ops")]
    graph = helper.make_graph(nodes, "broken", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid("bogus.ops", 1)])
    onnx.save(model, dst / "encoder.onnx")
    write_manifest(dst, Bundle.open(src).config)


def test_parser_errors_name_the_failing_node(built_bundle, tmp_path):
    from engines.loaders import NetworkFromOnnxPath, OnnxParseError
    from whisper_export.backends.tensorrt.trt_log import BuildLog

    broken = tmp_path / "broken"
    _broken_bundle(built_bundle.path, broken)
    with pytest.raises(OnnxParseError) as info:
        NetworkFromOnnxPath(broken / "encoder.onnx", BuildLog(None))()
    message = str(info.value)
    assert "my_broken_node" in message and "FrobnicateTensor" in message and "encoder.onnx" in message
    # through the CLI: exit 1, the node named on stderr, no engine written
    result = run_build_cli(["--engines-only", "--out", str(broken), "--compute-capability", TARGET_CC,
                            "--timing-cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1
    assert "my_broken_node" in result.stderr and "parser failed" in result.stderr
    assert not (broken / "encoder.engine").exists()


def test_unreadable_onnx_is_a_parse_error(tmp_path):
    from engines.loaders import NetworkFromOnnxPath, OnnxParseError
    from whisper_export.backends.tensorrt.trt_log import BuildLog

    (tmp_path / "x.onnx").write_bytes(b"\x00not a protobuf at all" * 10)
    with pytest.raises(OnnxParseError, match="x.onnx"):
        NetworkFromOnnxPath(tmp_path / "x.onnx", BuildLog(None))()


@pytest.mark.parametrize("args, message", [
    (["--max-batch", "16", "--max-beam", "5", "--max-rows", "40"], "max rows 40 < max_batch 16 x max_beam 5 = 80"),
    (["--max-tokens", "500"], "max_tokens: received 500, expected <= max_capacity 448"),
    (["--max-batch", "0"], "max_batch: received 0"),
])
def test_profile_too_small_is_refused_before_anything_is_built(tmp_path, args, message):
    out = tmp_path / "never"
    result = run_build_cli(["--fp16", "--compute-capability", TARGET_CC, "--out", str(out), *args])
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr
    assert not out.exists()  # not even exported


def test_an_existing_output_is_refused_before_the_model_is_loaded(tmp_path):
    out = tmp_path / "kept"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run_build_cli(["--fp16", "--compute-capability", TARGET_CC, "--out", str(out),
                            "--model", str(tmp_path / "no_such_checkpoint")])
    assert result.exit_code == 2, result.stderr
    assert "already exists; pass --overwrite" in result.stderr and "--engines-only" in result.stderr
    assert "[build] loading" not in result.stderr and "no_such_checkpoint" not in result.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_opt_above_max_is_refused(tiny_checkpoint):
    from whisper_export.backends.tensorrt.profiles import EngineLimits, ProfileError

    with pytest.raises(ProfileError, match="opt_rows: received 100, expected <= max_rows 80"):
        EngineLimits(opt_rows=100).resolved(tiny_checkpoint.dims)


def test_unsupported_compute_capability_is_refused_before_export(tmp_path):
    out = tmp_path / "never"
    result = run_build_cli(["--fp16", "--compute-capability", "9.0", "--out", str(out)])
    assert result.exit_code == 2
    assert "can target only " in result.stderr and "8.9" in result.stderr and "H100" in result.stderr
    assert not out.exists()


def test_missing_tensorrt_exits_3_and_leaves_a_working_onnx_bundle(tmp_path, monkeypatch):
    """With no TensorRT module at all (simulated), the export still happens and the exit code is 3."""
    import onnxruntime as ort

    from whisper_export.backends.tensorrt import trt_api
    from whisper_export import graph_io
    from whisper_export.bundle import Bundle

    monkeypatch.setattr(trt_api, "installed_version", lambda name: None)
    real_import = trt_api._import

    def no_trt(name: str):
        raise trt_api.TensorRTUnavailable(f"TensorRT module {name!r} is not importable (simulated)")

    monkeypatch.setattr(trt_api, "_import", no_trt)
    out = tmp_path / "bundle"
    result = run_build_cli(["--out", str(out)])
    monkeypatch.setattr(trt_api, "_import", real_import)
    assert result.exit_code == 3, result.stderr
    assert "no TensorRT Python module is installed" in result.stderr
    assert "is complete" in result.stderr
    bundle = Bundle.open(out)
    assert not (out / "encoder.engine").exists()
    session = ort.InferenceSession(str(bundle.encoder_path), providers=["CPUExecutionProvider"])
    mel = np.zeros((1, bundle.dims.n_mels, 3000), np.float32)
    (k0,) = session.run([graph_io.cross_outputs(bundle.dims.n_text_layer)[0]], {graph_io.MEL: mel})
    assert k0.shape[0] == 1


def test_requested_module_not_installed_exits_3(tmp_path):
    from whisper_export.backends.tensorrt import trt_api

    if trt_api.installed_version("tensorrt"):
        pytest.skip("full TensorRT is installed here")
    out = tmp_path / "bundle"
    result = run_build_cli(["--out", str(out), "--trt-module", "tensorrt"])
    assert result.exit_code == 3
    assert "'tensorrt' is not importable" in result.stderr and "--trt-module tensorrt_rtx" in result.stderr
    assert (out / "manifest.json").is_file()


def test_manifest_json_lists_engine_files(built_bundle):
    manifest = json.loads((built_bundle.path / "manifest.json").read_text())
    assert {"encoder.engine", "decoder.engine", "encoder.engine.json", "decoder.engine.json",
            "encoder.engine.log", "decoder.engine.log"} <= set(manifest["files"])


def test_fp32_with_tensorrt_rtx_is_refused_before_export(tmp_path):
    out = tmp_path / "never"
    result = run_build_cli(["--fp32", "--compute-capability", TARGET_CC, "--out", str(out)])
    assert result.exit_code == 2
    assert "fused attention kernels for fp16 only" in result.stderr and "--fp16" in result.stderr
    assert not out.exists()


def test_full_tensorrt_cannot_build_ahead_of_time(monkeypatch):
    """Full TensorRT has no compute-capability target: --compute-capability is refused, clearly."""
    from engines import build as build_mod
    from engines.build import BuildOptions, TargetError, check_target
    from whisper_export.backends.tensorrt.trt_api import TrtModuleInfo

    monkeypatch.setattr(build_mod, "supported_compute_capabilities", lambda: [])
    full = TrtModuleInfo("tensorrt", "10.13.0.35")
    with pytest.raises(TargetError, match="cannot build ahead of time for a compute capability.*--trt-module tensorrt_rtx"):
        check_target(BuildOptions(compute_capabilities=("8.9",)), full, None, "no GPU")
    with pytest.raises(TargetError, match="full TensorRT needs the target GPU to build"):
        check_target(BuildOptions(), full, None, "no GPU")
    check_target(BuildOptions(hardware_compatibility="ampere_plus"), full, "9.0", "")  # on a GPU: fine


def test_onnxruntime_variant_is_refused_before_anything_is_built(tiny_bundle_ort, tmp_path):
    from engines.build import BuildOptions, TargetError, build_engines

    options = BuildOptions(trt_module="tensorrt_rtx", compute_capabilities=(TARGET_CC,), cache_dir=tmp_path)
    with pytest.raises(TargetError, match="attention='onnxruntime'.*expected attention='onnx'"):
        build_engines(tiny_bundle_ort, options, progress=lambda _: None)
    assert not list(tiny_bundle_ort.glob("*.engine"))


def _files(directory):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _leftovers(directory):
    return [p.name for p in directory.parent.iterdir() if p.name.startswith(f".{directory.name}.")]


@pytest.mark.parametrize("mode", [["--engines-only"], ["--overwrite"]])
def test_a_failing_rebuild_leaves_the_bundle_as_it_was(built_bundle, tmp_path, monkeypatch, mode):
    """Engines are built in a staged copy beside --out and swapped in only when written: a rebuild whose engine
    TensorRT refuses (its error stands in for the builder's, after a new encoder engine and a truncated log were
    written) exits 1 with one line saying the bundle is unchanged, and every file of the bundle (engines, logs,
    manifest) is as it was; no staging directory stays."""
    import shutil
    from pathlib import Path

    import engines.build as build_module
    from engines.loaders import EngineBuildError
    from whisper_export.bundle import Bundle

    assert built_bundle.exit_code == 0, built_bundle.stderr
    out = tmp_path / "bundle"
    shutil.copytree(built_bundle.path, out)
    before = _files(out)

    def refused(bundle_dir, options, progress):
        staged = Path(bundle_dir)
        for name, data in (("encoder.engine", b"a new engine"), ("decoder.engine.log", b"")):
            (staged / name).unlink(missing_ok=True)  # as the builder writes: a new file, never through a link
            (staged / name).write_bytes(data)
        raise EngineBuildError("TensorRT could not build the engine:\n  exceed_int32_dim\n  (decoder)")

    monkeypatch.setattr(build_module, "build_engines", refused)
    result = run_build_cli([*mode, "--out", str(out), "--compute-capability", TARGET_CC])
    assert result.exit_code == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"the bundle {out} is unchanged" in errors[0], result.stderr
    assert "exceed_int32_dim" in errors[0]
    assert _files(out) == before and not _leftovers(out)
    Bundle.open(out)


def test_a_profile_past_tensorrts_int32_elements_is_refused_before_anything_is_built(built_bundle, tmp_path):
    """--max-batch 100000: the cross K/V of 500,000 rows would hold more than 2^31 elements, which TensorRT
    refuses only after the export; refused first (exit 2), the bundle untouched."""
    import shutil

    out = tmp_path / "bundle"
    shutil.copytree(built_bundle.path, out)
    before = _files(out)
    result = run_build_cli(["--overwrite", "--out", str(out), "--compute-capability", TARGET_CC,
                            "--max-batch", "100000"])
    assert result.exit_code == 2, result.stderr
    assert "max_rows: received 500000" in result.stderr and "expected at most 3728" in result.stderr
    assert _files(out) == before and not _leftovers(out)


def test_an_interrupted_engines_only_build_leaves_the_bundle_as_it_was(built_bundle, tmp_path, monkeypatch):
    """Ctrl-C (or a kill) while the engines are being written: the bundle under --out keeps its old files (the
    build wrote into the staged copy), so it still opens and verifies."""
    import shutil

    import engines.build as build_module
    from whisper_export.bundle import Bundle

    out = tmp_path / "bundle"
    shutil.copytree(built_bundle.path, out)
    before = _files(out)

    def interrupted(bundle_dir, options, progress):
        from pathlib import Path

        log = Path(bundle_dir) / "decoder.engine.log"
        log.unlink()  # as the builder does before it logs
        log.write_text("")  # a truncated log, as a kill leaves it
        (Path(bundle_dir) / "encoder.engine").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "build_engines", interrupted)
    result = run_build_cli(["--engines-only", "--out", str(out), "--compute-capability", TARGET_CC])
    assert result.exit_code != 0  # click turns the interrupt into its Abort
    assert _files(out) == before and not _leftovers(out)
    Bundle.open(out)
