"""Build encoder.engine and decoder.engine from an exported bundle, with sidecars, logs and manifest.

    from engines.build import BuildOptions, build_engines
    report = build_engines("bundle/", BuildOptions(compute_capabilities=("8.9",)))

Order of work, so that every mistake that can be caught early is caught before a build starts:

1. the bundle is opened (hashes verified), the profiles are computed and validated (ProfileError),
   the TensorRT module is selected (TensorRTUnavailable) and the target is validated (TargetError);
2. per graph: parse (OnnxParseError, listing the parser's errors by node), check that every network
   input has a range in every profile, and look for IAttention layers (FusedAttentionError, before the
   build);
3. build, then inspect the engine's layers for fused attention kernels (FusedAttentionError: the engine
   is not written), write ``<graph>.engine`` atomically, its sidecar ``<graph>.engine.json`` and keep the
   builder log ``<graph>.engine.log``;
4. rewrite the bundle manifest with the same config, so the engines, sidecars and logs are hashed too.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines import attention as att
from whisper_export.backends.tensorrt import trt_api
from whisper_export.backends.tensorrt.cuda import probe_device
from engines.loaders import (
    BuiltEngine,
    CreateConfig,
    EngineBytesFromNetwork,
    NetworkFromOnnxPath,
    ParsedNetwork,
    SaveEngine,
    TimingCache,
    supported_compute_capabilities,
)
from whisper_export.backends.tensorrt.profiles import EngineLimits, Profile, check_profiles_cover, decoder_profiles, encoder_profiles
from whisper_export.backends.tensorrt.sidecar import EngineSidecar, TensorSpec, sidecar_path
from whisper_export.backends.tensorrt.trt_log import BuildLog
from whisper_export.backends.tensorrt.trt_api import trt
from whisper_export import __version__
from whisper_export.bundle import Bundle, write_manifest
from whisper_export.hashing import cache_dir, sha256_file

GRAPHS = ("encoder", "decoder")
HARDWARE_COMPATIBILITY = ("none", "ampere_plus", "same_compute_capability")


class TargetError(ValueError):
    """The requested target (compute capability, hardware compatibility) is not possible here."""


@dataclass(frozen=True)
class BuildOptions:
    trt_module: str | None = None  # "tensorrt" | "tensorrt_rtx"; None: trt_api.preferred_module()
    compute_capabilities: tuple[str, ...] = ()  # ahead-of-time targets (TensorRT-RTX), e.g. ("8.9",)
    hardware_compatibility: str = "none"  # full TensorRT: "ampere_plus" runs on any sm_80+ GPU
    limits: EngineLimits = EngineLimits()
    cache_dir: Path | None = None  # timing caches; None: cache_dir() / "tensorrt"
    require_fused_attention: bool = True
    graphs: tuple[str, ...] = GRAPHS
    builder_optimization_level: int | None = None

    def __post_init__(self) -> None:
        if self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise TargetError(f"hardware_compatibility: received {self.hardware_compatibility!r}, expected one of "
                              f"{', '.join(HARDWARE_COMPATIBILITY)}")
        unknown = [g for g in self.graphs if g not in GRAPHS]
        if unknown or not self.graphs:
            raise ValueError(f"graphs: received {list(self.graphs)}, expected a non-empty subset of {list(GRAPHS)}")
        for cc in self.compute_capabilities:
            major, dot, minor = cc.partition(".")
            if not (dot and major.isdigit() and minor.isdigit()):
                raise TargetError(f"compute capability: received {cc!r}, expected MAJOR.MINOR such as 8.9")


@dataclass
class EngineResult:
    graph: str
    path: Path
    sidecar: EngineSidecar
    build_seconds: float  # the builder call alone
    total_seconds: float  # parse + build + inspection + writing

    @property
    def fused(self) -> att.FusedAttentionReport:
        return fused_report_from_json(self.sidecar.fused_attention)


@dataclass
class BuildReport:
    bundle: Path
    trt_module: str
    trt_version: str
    engines: list[EngineResult] = field(default_factory=list)
    seconds: float = 0.0


def fused_report_from_json(d: dict[str, Any]) -> att.FusedAttentionReport:
    d = {k: v for k, v in d.items() if k != "passed"}
    return att.FusedAttentionReport(**d)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _target_name(options: BuildOptions, device_cc: str | None) -> str:
    if options.compute_capabilities:
        return "sm" + "-sm".join(cc.replace(".", "") for cc in options.compute_capabilities)
    if options.hardware_compatibility != "none":
        return options.hardware_compatibility
    return f"native-sm{device_cc.replace('.', '')}" if device_cc else "native"


def check_target(options: BuildOptions, info: trt_api.TrtModuleInfo, device_cc: str | None, no_device: str) -> None:
    """TargetError, before anything is built, for targets the selected module cannot build here."""
    aot = supported_compute_capabilities()
    if options.compute_capabilities:
        if not aot:
            raise TargetError(
                f"--compute-capability {','.join(options.compute_capabilities)}: {info.name} {info.version} cannot "
                "build ahead of time for a compute capability (full TensorRT always builds for the GPU it runs on). "
                "Use --trt-module tensorrt_rtx for ahead-of-time builds without a GPU, or build on the target GPU "
                "(optionally with hardware compatibility 'ampere_plus', which still needs an sm_80+ GPU to build)"
            )
        bad = [cc for cc in options.compute_capabilities if cc not in aot]
        if bad:
            raise TargetError(
                f"--compute-capability {','.join(bad)}: {info.name} {info.version} can target only "
                f"{', '.join(aot)}" + (" (TensorRT-RTX does not support data-center GPUs such as H100 (9.0); use full "
                                       "TensorRT on that GPU)" if info.is_rtx and "9.0" in bad else "")
            )
        return
    if device_cc is None:
        if info.is_rtx:
            raise TargetError(
                f"no CUDA GPU here ({no_device}); {info.name} builds without one only ahead of time: pass "
                f"--compute-capability with one of {', '.join(aot)}"
            )
        raise TargetError(f"no CUDA GPU here ({no_device}); full TensorRT needs the target GPU to build. "
                          "Use --trt-module tensorrt_rtx --compute-capability X.Y to build without a GPU")
    if info.is_rtx and aot and device_cc not in aot:
        raise TargetError(f"this GPU has compute capability {device_cc}, which {info.name} {info.version} cannot "
                          f"target (supported: {', '.join(aot)}); use full TensorRT (--trt-module tensorrt)")


def check_precision(info: trt_api.TrtModuleInfo, precision: str, require_fused_attention: bool) -> None:
    """TargetError for a precision whose attention TensorRT cannot fuse (seen: TensorRT-RTX 1.7 has no fused
    attention kernel for fp32; its IAttention layers, not decomposable, then fail the build)."""
    if require_fused_attention and info.is_rtx and precision != "fp16":
        raise TargetError(
            f"precision {precision}: {info.name} {info.version} has fused attention kernels for fp16 only, so "
            "the engines cannot be built with every attention op fused; export and build with --fp16"
        )


def check_buildable(bundle: Bundle) -> None:
    """TargetError for a bundle whose graphs TensorRT cannot build: onnxruntime's contrib operators
    (attention='onnxruntime'), or 8-bit weights (export --int8: MatMulInteger on dynamically quantized
    activations, or onnxruntime's MatMulNBits, neither of which TensorRT parses)."""
    if bundle.config.get("attention") == "onnxruntime":
        raise TargetError(
            f"{bundle.directory}: received a bundle exported with attention='onnxruntime' (onnxruntime contrib "
            "operators, which TensorRT does not parse), expected attention='onnx'; re-export it with --attention onnx")
    if bundle.config.get("quantize"):
        raise TargetError(
            f"{bundle.directory}: received a bundle of int{bundle.config['quantize']['bits']} weights (export --int8: "
            f"{bundle.config['quantize']['form']} for onnxruntime, which TensorRT does not parse), expected float "
            "weights; export without --int8 (--fp16 for TensorRT) to build engines")


def _dtype_name(dtype: trt.DataType) -> str:
    try:
        import numpy as np

        return np.dtype(trt.nptype(dtype)).name
    except TypeError:  # bfloat16, fp8: no numpy equivalent
        return str(dtype).rsplit(".", 1)[-1].lower()


def io_specs(parsed: ParsedNetwork) -> list[TensorSpec]:
    """The network's I/O tensors with the ONNX graph's dimension names."""
    onnx_dims: dict[str, tuple[str | None, ...]] = {}
    for value in [*parsed.onnx_model.graph.input, *parsed.onnx_model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        onnx_dims[value.name] = tuple(d.dim_param or None for d in dims)
    specs = []
    net = parsed.network
    for mode, count, get in (("input", net.num_inputs, net.get_input), ("output", net.num_outputs, net.get_output)):
        for i in range(count):
            t = get(i)
            shape = tuple(int(t.shape[axis]) for axis in range(len(t.shape)))
            names = onnx_dims.get(t.name, (None,) * len(shape))
            names = tuple(n if d < 0 else None for d, n in zip(shape, names))
            specs.append(TensorSpec(t.name, mode, _dtype_name(t.dtype), shape, names))
    return specs


def _inspect_engine(data: bytes, log: BuildLog, device_cc: str | None) -> tuple[list[att.EngineLayer], str]:
    """IEngineInspector where an engine can be deserialized here (a GPU), else the builder's layer dump."""
    if device_cc is not None:
        try:
            runtime = trt.Runtime(log.trt_logger())
            engine = runtime.deserialize_cuda_engine(data)
            if engine is not None:
                inspector = engine.create_engine_inspector()
                text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
                layers = att.layers_from_inspector_json(text)
                if layers:
                    return layers, "engine_inspector"
        except Exception as e:  # the builder log still answers
            log.note(f"engine inspector unavailable ({e}); using the builder's layer dump")
    return att.layers_from_builder_log("\n".join(log.layer_dumps)), "builder_log"


def build_engines(
    bundle_dir: str | os.PathLike[str],
    options: BuildOptions = BuildOptions(),
    progress: Callable[[str], None] = _stderr,
) -> BuildReport:
    """Build the engines of an exported bundle; see the module docstring for the checks and the files."""
    t_start = time.perf_counter()
    bundle = Bundle.open(Path(bundle_dir))
    check_buildable(bundle)
    dims = bundle.dims
    limits = options.limits.resolved(dims)  # ProfileError before anything else
    profiles: dict[str, list[Profile]] = {
        "encoder": encoder_profiles(dims, limits),
        "decoder": decoder_profiles(dims, limits),
    }
    module = options.trt_module or trt_api.preferred_module(options.compute_capabilities[0]
                                                            if options.compute_capabilities else None)
    info = trt_api.select(module)
    device, no_device = probe_device()
    device_cc = device.compute_capability if device else None
    check_target(options, info, device_cc, no_device)
    check_precision(info, bundle.precision, options.require_fused_attention)
    timing_dir = options.cache_dir or cache_dir() / "tensorrt"
    cache_file = timing_dir / f"{info.name}-{info.version}-{_target_name(options, device_cc)}.timing-cache"
    progress(f"[build] {bundle.directory}: {info.name} {info.version}, target "
             f"{', '.join(options.compute_capabilities) or (f'this GPU ({device_cc})' if device_cc else '?')}, "
             f"precision {bundle.precision}, timing cache {cache_file}")
    report = BuildReport(bundle.directory, info.name, info.version)
    expected = {"encoder": att.expected_attention_ops("encoder", dims.n_audio_layer, dims.n_text_layer),
                "decoder": att.expected_attention_ops("decoder", dims.n_audio_layer, dims.n_text_layer)}
    for graph in options.graphs:
        report.engines.append(_build_one(bundle, graph, profiles[graph], options, limits, info, device_cc,
                                         cache_file, expected[graph], progress))
    write_manifest(bundle.directory, bundle.config)
    report.seconds = time.perf_counter() - t_start
    progress(f"[build] done in {report.seconds:.1f} s; manifest updated")
    return report


def _build_one(
    bundle: Bundle,
    graph: str,
    profiles: list[Profile],
    options: BuildOptions,
    limits: EngineLimits,
    info: trt_api.TrtModuleInfo,
    device_cc: str | None,
    cache_file: Path,
    expected_attention: int,
    progress: Callable[[str], None],
) -> EngineResult:
    t0 = time.perf_counter()
    onnx_path = bundle.directory / f"{graph}.onnx"
    engine_path = bundle.directory / f"{graph}.engine"
    log_path = bundle.directory / f"{graph}.engine.log"
    log_path.unlink(missing_ok=True)
    log = BuildLog(log_path, prefix=f"[build] {graph}: ")
    try:
        parsed, io, fused = _parse_checked(graph, onnx_path, log, profiles, options, expected_attention, progress)
        built, timing_cache = _build_inspected(graph, parsed, profiles, fused, options, device_cc, cache_file, log,
                                               progress)
        SaveEngine(built, engine_path)()
        sidecar = EngineSidecar(
            graph=graph,
            engine_file=engine_path.name,
            engine_bytes=len(built.data),
            engine_sha256=hashlib.sha256(built.data).hexdigest(),
            onnx_file=onnx_path.name,
            onnx_sha256=sha256_file(onnx_path),
            trt_module=info.name,
            trt_version=info.version,
            compute_capabilities=list(options.compute_capabilities),
            hardware_compatibility=options.hardware_compatibility,
            built_on_compute_capability=device_cc,
            module_compute_capabilities=supported_compute_capabilities(),
            precision=bundle.precision,
            strongly_typed=True,
            profiles=profiles,
            io=io,
            limits=limits.to_json(),
            build_seconds=round(built.seconds, 3),
            built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            fused_attention=fused.to_json(),
            timing_cache=timing_cache.to_json(),
            onnx_rewrites=parsed.rewrites,
            log_file=log_path.name,
            whisper_export_version=__version__,
        )
        sidecar.write(sidecar_path(engine_path))
        total = time.perf_counter() - t0
        progress(f"[build] {graph}: wrote {engine_path.name} ({len(built.data) / 1e6:.1f} MB), builder "
                 f"{built.seconds:.1f} s, total {total:.1f} s")
        return EngineResult(graph, engine_path, sidecar, built.seconds, total)
    finally:
        log.close()


def _parse_checked(
    graph: str,
    onnx_path: Path,
    log: BuildLog,
    profiles: list[Profile],
    options: BuildOptions,
    expected_attention: int,
    progress: Callable[[str], None],
) -> tuple[ParsedNetwork, list[TensorSpec], att.FusedAttentionReport]:
    """Step 2 of the module docstring: parse, profiles cover every input, IAttention layers before the build."""
    progress(f"[build] {graph}: parsing {onnx_path.name} (strongly typed)")
    parsed = NetworkFromOnnxPath(onnx_path, log)()
    io = io_specs(parsed)
    check_profiles_cover(profiles, {t.name: t.shape for t in io if t.mode == "input"}, graph)
    fused = att.check_network(graph, expected_attention, att.network_attention(parsed.network))
    if options.require_fused_attention and fused.problems:
        raise att.FusedAttentionError(f"{graph}: {'; '.join(fused.problems)}")
    return parsed, io, fused


def _build_inspected(
    graph: str,
    parsed: ParsedNetwork,
    profiles: list[Profile],
    fused: att.FusedAttentionReport,
    options: BuildOptions,
    device_cc: str | None,
    cache_file: Path,
    log: BuildLog,
    progress: Callable[[str], None],
) -> tuple[BuiltEngine, TimingCache]:
    """Step 3 up to the write: build, then look for fused attention kernels in the engine's layers."""
    timing_cache = TimingCache(cache_file)
    config = CreateConfig(profiles, log, options.compute_capabilities, options.hardware_compatibility,
                          timing_cache, options.builder_optimization_level)
    progress(f"[build] {graph}: building {len(profiles)} profile(s) "
             f"({', '.join(p.name for p in profiles)}), {fused.network_attention} IAttention layers")
    built = EngineBytesFromNetwork(parsed, config)()
    # the inspector needs to deserialize the engine: only where it was built for this machine's GPU
    runnable_here = device_cc is not None and (not options.compute_capabilities
                                               or device_cc in options.compute_capabilities)
    layers, source = _inspect_engine(built.data, log, device_cc if runnable_here else None)
    att.check_engine(fused, layers, source)
    progress(f"[build] {fused.summary()}")
    if timing_cache.loaded_bytes and device_cc is None and not timing_cache.accepted:
        # the usual case of an ahead-of-time build: harmless, so not worded as a failure
        progress(f"[build] {graph}: timing cache not used (built without a CUDA device; the sidecar says why)")
    elif timing_cache.loaded_bytes:
        progress(f"[build] {graph}: timing cache {timing_cache.loaded_bytes} bytes read, "
                 + ("accepted" if timing_cache.accepted else f"not usable here: {timing_cache.detail}"))
    if options.require_fused_attention:
        att.require_fused(fused)
    return built, timing_cache
