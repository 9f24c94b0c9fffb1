"""The TensorRT runner and backend without a GPU: sidecar checks (compatibility, inputs, profile selection)
as pure functions, and the runner/backend plumbing over a fake device whose "engine" is onnxruntime.
Real execution is at the end, marked gpu."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine_helpers import TARGET_CC, needs_rtx
from whisper_export.backends.tensorrt.sidecar import (
    EngineInputError,
    EngineMismatch,
    EngineSidecar,
    RuntimeEnv,
    SidecarError,
    check_compatible,
    resolve_output_shapes,
    sidecar_path,
    validate_feeds,
)
from whisper_export import graph_io as io

pytestmark = needs_rtx


@pytest.fixture(scope="module")
def sidecars(built_bundle) -> dict[str, EngineSidecar]:
    assert built_bundle.exit_code == 0, built_bundle.stderr
    return {g: EngineSidecar.read(sidecar_path(built_bundle.path / f"{g}.engine")) for g in ("encoder", "decoder")}


def _env(sidecar: EngineSidecar, **changes) -> RuntimeEnv:
    env = RuntimeEnv(sidecar.trt_module, sidecar.trt_version, TARGET_CC)
    return dataclasses.replace(env, **changes)


def _decoder_feeds(rows=4, n_new=1, capacity=32, n_audio=2, n_logits=1, dtype=np.float16, **override):
    feeds = {io.TOKENS: ((rows, n_new), np.int64), io.OFFSETS: ((rows,), np.int64),
             io.LOGIT_POSITIONS: ((n_logits,), np.int64)}
    feeds.update({n: ((rows, 6, capacity, 64), dtype) for n in io.self_inputs(4)})
    feeds.update({n: ((n_audio, 6, 1500, 64), dtype) for n in io.cross_inputs(4)})
    feeds.update(override)
    return feeds


# -- compatibility: before deserializing -------------------------------------------------------------


def test_compatible_environment_passes(sidecars):
    for s in sidecars.values():
        check_compatible(s, _env(s))


@pytest.mark.parametrize("changes, message", [
    ({"trt_module": "tensorrt", "trt_version": "10.13.0.35"},
     "built with tensorrt_rtx .*, but this process uses tensorrt 10.13.0.35.*Rebuild: whisper-export build --trt-module tensorrt"),
    ({"trt_version": "1.6.0.1"}, "this process has 1.6.0.1; TensorRT engines load only in the exact version.*Rebuild"),
    ({"compute_capability": None, "no_device_reason": "CUDA error 35"}, "no CUDA device to run it on \\(CUDA error 35\\)"),
    ({"compute_capability": "9.0"}, "compute capability 9.0, which tensorrt_rtx .* cannot target at all.*H100"),
    ({"compute_capability": "8.6"}, "built ahead of time for compute capability 8.9, this GPU is 8.6. "
                                    "Rebuild: whisper-export build --trt-module tensorrt_rtx --compute-capability 8.6"),
])
def test_mismatches_are_refused_with_a_rebuild_hint(sidecars, changes, message):
    s = sidecars["decoder"]
    with pytest.raises(EngineMismatch, match=message):
        check_compatible(s, _env(s, **changes))


def test_native_and_hardware_compatible_engines(sidecars):
    native = dataclasses.replace(sidecars["encoder"], trt_module="tensorrt", trt_version="10.13.0.35",
                                 compute_capabilities=[], module_compute_capabilities=[],
                                 built_on_compute_capability="9.0")
    check_compatible(native, RuntimeEnv("tensorrt", "10.13.0.35", "9.0"))
    with pytest.raises(EngineMismatch, match="built on a GPU of compute capability 9.0, this GPU is 8.9"):
        check_compatible(native, RuntimeEnv("tensorrt", "10.13.0.35", "8.9"))
    ampere = dataclasses.replace(native, hardware_compatibility="ampere_plus")
    check_compatible(ampere, RuntimeEnv("tensorrt", "10.13.0.35", "8.6"))
    with pytest.raises(EngineMismatch, match="Ampere-plus .* this GPU is 7.5"):
        check_compatible(ampere, RuntimeEnv("tensorrt", "10.13.0.35", "7.5"))


def test_runner_refuses_before_deserializing(built_bundle, monkeypatch):
    from engine_fakes import FakeDevice, FakeRunner

    runner = FakeRunner(built_bundle.path / "encoder.engine", FakeDevice("9.0"))
    monkeypatch.setattr(runner, "_create_context", lambda data: pytest.fail("deserialized a mismatched engine"))
    with pytest.raises(EngineMismatch, match="9.0"):
        runner.open()
    with pytest.raises(EngineMismatch, match="no CUDA device"):
        FakeRunner(built_bundle.path / "encoder.engine", FakeDevice(None)).open()


def test_replaced_engine_file_is_detected(built_bundle, tmp_path):
    from engine_fakes import FakeRunner

    for name in ("encoder.engine", "encoder.engine.json", "encoder.onnx"):
        shutil.copy(built_bundle.path / name, tmp_path / name)
    with open(tmp_path / "encoder.engine", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(EngineMismatch, match="sha256 differs"):
        FakeRunner(tmp_path / "encoder.engine").open()


def test_sidecar_errors(tmp_path, sidecars):
    with pytest.raises(SidecarError, match="missing; expected the JSON sidecar"):
        EngineSidecar.read(tmp_path / "x.engine.json")
    data = sidecars["encoder"].to_json()
    (tmp_path / "a.json").write_text(__import__("json").dumps({**data, "format_version": 99}))
    with pytest.raises(SidecarError, match="format_version 99, expected 1"):
        EngineSidecar.read(tmp_path / "a.json")
    del data["io"]
    (tmp_path / "b.json").write_text(__import__("json").dumps(data))
    with pytest.raises(SidecarError, match=r"missing keys \['io'\]"):
        EngineSidecar.read(tmp_path / "b.json")


# -- inputs: validation and profile selection --------------------------------------------------------


def test_valid_inputs_select_a_profile_and_resolve_output_shapes(sidecars):
    dec = sidecars["decoder"]
    profile, named = validate_feeds(dec, _decoder_feeds())
    assert profile == 0 and named == {"rows": 4, "n_new": 1, "n_logits": 1, "capacity": 32, "n_audio": 2}
    shapes = resolve_output_shapes(dec, named)
    assert shapes[io.LOGITS] == (4, 1, 51864) and shapes["out_self_v_3"] == (4, 6, 32, 64)
    profile, named = validate_feeds(dec, _decoder_feeds(n_new=5, n_logits=2))
    assert profile == 1 and resolve_output_shapes(dec, named)[io.LOGITS] == (4, 2, 51864)
    profile, named = validate_feeds(sidecars["encoder"], {io.MEL: ((3, 80, 3000), np.float32)})
    assert profile == 0 and resolve_output_shapes(sidecars["encoder"], named)["out_cross_k_0"] == (3, 6, 1500, 64)


@pytest.mark.parametrize("override, message", [
    ({io.TOKENS: ((4, 1), np.int32)}, "in_tokens: received dtype int32, expected int64 (shape (rows, n_new) int64)"),
    ({"in_self_k_0": ((4, 6, 32, 64), np.float32)}, "in_self_k_0: received dtype float32, expected float16"),
    ({"in_self_k_1": ((4, 6, 32, 32), np.float16)},
     "in_self_k_1: received shape (4, 6, 32, 32), expected (rows, 6, capacity, 64) float16 (axis 3 is 64)"),
    ({io.OFFSETS: ((5,), np.int64)}, "in_offsets: received shape (5,), expected (rows,) int64 with rows = 4 (from in_tokens)"),
    ({io.OFFSETS: ((4, 1), np.int64)}, "in_offsets: received shape (4, 1), expected (rows,) int64"),
    ({"in_cross_v_2": ((3, 6, 1500, 64), np.float16)}, "in_cross_v_2: received shape (3, 6, 1500, 64), expected "
                                                       "(n_audio, 6, 1500, 64) float16 with n_audio = 2 (from in_cross_k_0)"),
])
def test_invalid_inputs_name_the_tensor_and_what_was_expected(sidecars, override, message):
    with pytest.raises(EngineInputError) as info:
        validate_feeds(sidecars["decoder"], _decoder_feeds(**override))
    assert message in str(info.value)


def test_missing_and_unknown_inputs(sidecars):
    feeds = _decoder_feeds()
    del feeds[io.OFFSETS]
    feeds["in_offset"] = ((4,), np.int64)
    with pytest.raises(EngineInputError, match=r"\(missing \['in_offsets'\]\) \(not inputs: \['in_offset'\]\)"):
        validate_feeds(sidecars["decoder"], feeds)


def test_shapes_outside_every_profile_are_refused(sidecars):
    with pytest.raises(EngineInputError, match=r"profile 0 'step': in_tokens \(81, 1\) .*profile 1 'prompt'"):
        validate_feeds(sidecars["decoder"], _decoder_feeds(rows=81, n_audio=1))
    with pytest.raises(EngineInputError, match=r"in_mel \(17, 80, 3000\) is outside min \(1, 80, 3000\) .. max \(16, 80, 3000\)"):
        validate_feeds(sidecars["encoder"], {io.MEL: ((17, 80, 3000), np.float32)})


# -- runner and backend plumbing on a fake device ---------------------------------------------------


def test_runner_infer_on_fake_device_matches_onnxruntime(built_bundle):
    import onnxruntime as ort

    from engine_fakes import FakeRunner

    rng = np.random.default_rng(0)
    feeds = {io.TOKENS: rng.integers(0, 51864, (4, 3)), io.OFFSETS: np.array([0, 1, 2, 3]),
             io.LOGIT_POSITIONS: np.array([0, 2])}
    feeds.update({n: rng.standard_normal((4, 6, 16, 64)).astype(np.float16) for n in io.self_inputs(4)})
    feeds.update({n: rng.standard_normal((2, 6, 1500, 64)).astype(np.float16) for n in io.cross_inputs(4)})
    with FakeRunner(built_bundle.path / "decoder.engine") as runner:
        got = runner.infer(feeds)
        assert runner.ort_context.profile == 1  # 3 new tokens: the prompt profile
        step = {**feeds, io.TOKENS: feeds[io.TOKENS][:, :1], io.LOGIT_POSITIONS: np.array([0])}
        runner.infer(step)
        assert runner.ort_context.profile == 0 and runner.ort_context.profile_switches == 2
        with pytest.raises(EngineInputError, match="in_tokens: received dtype int32"):
            runner.infer({**feeds, io.TOKENS: feeds[io.TOKENS].astype(np.int32)})
    session = ort.InferenceSession(str(built_bundle.path / "decoder.onnx"), providers=["CPUExecutionProvider"])
    want = dict(zip(io.decoder_outputs(4), session.run(io.decoder_outputs(4), feeds)))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_backend_decode_loop_on_fake_device_matches_the_onnxruntime_backend(built_bundle):
    """A pool of two audio slots x 3 beams: prompts written into one slot's rows at a time (staged copies), then
    whole-pool steps with beam reorders (ping-pong sets) and device-resident cross K/V in their slots: the
    logits of the onnxruntime backend, bit for bit."""
    from engine_fakes import FakeDevice, FakeRunner
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend
    from whisper_export.backends.step import StepRequest
    from whisper_export.backends.tensorrt.backend import TensorRTBackend

    rng = np.random.default_rng(1)
    mel = rng.standard_normal((2, 80, 3000)).astype(np.float32)
    n_audio, beams, capacity = 2, 3, 24
    rows = n_audio * beams
    prompt = np.repeat(np.array([[50257, 50362, 440, 1049]]), beams, axis=0).astype(np.int64)
    device = FakeDevice()
    with TensorRTBackend(built_bundle.path, device=device, runner_factory=FakeRunner) as trt_backend, \
            OnnxRuntimeBackend(built_bundle.path) as ort_backend:
        states = []
        for backend in (trt_backend, ort_backend):
            cross = backend.new_cross(n_audio)
            backend.encode(mel[::-1].copy(), into=cross, slots=[1, 0])  # window i into slot 1 - i
            states.append((cross, backend.new_cache(rows, capacity)))
        outs = []
        for backend, (cross, cache) in zip((trt_backend, ort_backend), states):
            prompts = [backend.step(StepRequest(prompt, np.zeros(beams, np.int64), slot * beams, beams,
                                                positions=np.array([0, 3])), cache, cross).logits for slot in (1, 0)]
            outs.append(np.concatenate(prompts[::-1]))
        np.testing.assert_array_equal(outs[0], outs[1], err_msg="prompts")
        tokens, offsets = outs[0][:, -1].argmax(-1)[:, None].astype(np.int64), np.full(rows, 4, np.int64)
        sources = None
        for step in range(5):
            outs = [backend.step(StepRequest(tokens, offsets, group=beams, sources=sources), cache, cross).logits
                    for backend, (cross, cache) in zip((trt_backend, ort_backend), states)]
            np.testing.assert_array_equal(outs[0], outs[1], err_msg=f"step {step}")
            offsets = offsets + 1
            tokens = outs[0][:, -1].argmax(-1)[:, None].astype(np.int64)
            sources = np.array([1, 1, 0, 5, 3, 3], np.int64)  # a beam reorder inside each audio
        assert trt_backend.decoder.ort_context.profile == 0  # the steps ran on the step profile
        with pytest.raises(ValueError, match=r"rows <= 80 and capacity <= 448 \(the decoder engine's profile\)"):
            trt_backend.new_cache(81, 32)
        with pytest.raises(ValueError, match="in_mel: received shape"):
            trt_backend.encode(mel[:, :, :100])
    assert device.memory.blocks == {}  # close() freed every device buffer


def test_backend_refuses_a_bundle_without_engines(tmp_path, built_bundle):
    from whisper_export.backends.tensorrt.backend import TensorRTBackend
    from whisper_export.backends.base import BackendError
    from whisper_export.bundle import Bundle, write_manifest

    for name in ("encoder.onnx", "decoder.onnx", "cache_reorder.onnx", "greedy_select.onnx", "tokenizer.json"):
        shutil.copy(built_bundle.path / name, tmp_path / name)
    write_manifest(tmp_path, Bundle.open(built_bundle.path).config)
    with pytest.raises(BackendError, match="encoder.engine, .*decoder.engine: missing; build the engines first"):
        TensorRTBackend(tmp_path)


# -- real execution: needs a GPU that TensorRT-RTX supports (never in CPU CI) -------------------------


@pytest.fixture(scope="module")
def native_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    """Engines built for the GPU of this machine (whatever TensorRT module is installed)."""
    from engines.build import BuildOptions, build_engines
    from whisper_export.export.exporter import ExportOptions, export_bundle

    out = export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("native") / "b", ExportOptions(precision="fp16"),
                        progress=lambda _: None)
    build_engines(out, BuildOptions(cache_dir=tmp_path_factory.mktemp("cache")), progress=lambda _: None)
    return out


@pytest.mark.gpu
def test_gpu_backend_matches_onnxruntime_greedy_tokens(native_bundle):
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend
    from whisper_export.backends.step import StepRequest
    from whisper_export.backends.tensorrt.backend import TensorRTBackend

    rng = np.random.default_rng(2)
    mel = (rng.standard_normal((2, 80, 3000)) * 0.3).astype(np.float32)
    tokens = np.repeat(np.array([[50257, 50362]]), 2, axis=0).astype(np.int64)
    logits = []
    for backend_cls in (TensorRTBackend, OnnxRuntimeBackend):
        with backend_cls(native_bundle) as backend:
            cross, cache = backend.encode(mel), backend.new_cache(2, 32)
            logits.append(backend.step(StepRequest(tokens, np.zeros(2, np.int64)), cache, cross).logits)
    np.testing.assert_allclose(logits[0], logits[1], atol=0.5)
    assert (logits[0][:, -1].argmax(-1) == logits[1][:, -1].argmax(-1)).all()


@pytest.mark.gpu
def test_gpu_compare_backends_all_pass(native_bundle):
    from whisper_export.checks.compare import compare_backends, format_table

    rows = compare_backends(native_bundle, ["torch", "onnxruntime", "tensorrt"])
    assert not [r for r in rows if r.status == "skipped"], format_table(rows)
    assert all(r.ok for r in rows), format_table(rows)
