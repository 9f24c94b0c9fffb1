"""Polygraphy-style composable loaders (OutputFromInput), written against whisper_export.backends.tensorrt.trt_api.trt.

    network = NetworkFromOnnxPath("decoder.onnx", logger)
    config = CreateConfig(profiles, compute_capabilities=["8.9"], timing_cache=cache)
    data = EngineBytesFromNetwork(network, config)()          # nothing happens before this call
    SaveEngine(data, "decoder.engine")()

Each loader is a callable object; its arguments may be values or other loaders (called when needed), as
in polygraphy.backend.trt. Polygraphy's own TensorRT loaders are not used because they pick
``tensorrt``/``tensorrt_rtx`` from a process-wide environment variable read at import
(POLYGRAPHY_USE_TENSORRT_RTX) and cannot report what this project needs (the parser's errors by node,
the layer dump for the fused-attention check, whether a timing cache was accepted).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import onnx

from whisper_export.atomic import write_bytes_atomic
from whisper_export.backends.tensorrt.profiles import Profile
from whisper_export.backends.tensorrt.trt_api import selected, trt
from whisper_export.backends.tensorrt.trt_log import BuildLog

T = TypeVar("T")

class OnnxParseError(RuntimeError):
    """The ONNX parser rejected the graph; the message lists every error with its node."""


class EngineBuildError(RuntimeError):
    """The builder returned no engine; the message carries the builder's errors."""


def invoke(value: T | Callable[[], T]) -> T:
    """polygraphy's invoke_if_callable: a loader is called, a value passes through."""
    return value() if callable(value) else value


# -- network -----------------------------------------------------------------------------------------


@dataclass
class ParsedNetwork:
    builder: trt.Builder
    network: trt.INetworkDefinition
    parser: trt.OnnxParser
    onnx_model: onnx.ModelProto  # the graph as parsed (external data not loaded)
    rewrites: list[str] = field(default_factory=list)


def drop_softmax_precision(model: onnx.ModelProto) -> list[str]:
    """Remove ``softmax_precision`` from Attention nodes, in place; returns what was changed.

    The exporter sets softmax_precision=FLOAT so that onnxruntime accumulates the fp16 graph's softmax in
    fp32. TensorRT's ONNX parser refuses the attribute ("Setting softmax precision is not supported in
    TensorRT Attention."); its fused attention kernels choose the softmax precision themselves. The ONNX
    file in the bundle is left untouched (its sha256 is what the sidecar records).
    """
    changed = []
    for node in model.graph.node:
        if node.op_type == "Attention" and any(a.name == "softmax_precision" for a in node.attribute):
            kept = [a for a in node.attribute if a.name != "softmax_precision"]
            del node.attribute[:]
            node.attribute.extend(kept)
            changed.append(node.name)
    if not changed:
        return []
    return [f"dropped Attention.softmax_precision on {len(changed)} nodes ({changed[0]}..{changed[-1]}): "
            "not supported by the TensorRT ONNX parser"]


def format_parser_errors(parser: trt.OnnxParser, path: Path) -> str:
    lines = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node, name, op = e.node(), e.node_name(), e.node_operator()
        where = f"node {node} {name!r} ({op})" if node >= 0 else "graph"
        lines.append(f"  {where}: {e.code().name}: {e.desc()}")
    return f"{path}: the TensorRT ONNX parser failed with {parser.num_errors} error(s):\n" + "\n".join(lines)


class NetworkFromOnnxPath:
    """ONNX file -> ParsedNetwork, strongly typed: every tensor's type comes from the (fp16) graph."""

    def __init__(self, path: str | os.PathLike[str], log: BuildLog, strongly_typed: bool = True) -> None:
        self.path = Path(path)
        self.log = log
        self.strongly_typed = strongly_typed

    def __call__(self) -> ParsedNetwork:
        logger = self.log.trt_logger()
        builder = trt.Builder(logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if self.strongly_typed else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        try:
            model = onnx.load(str(self.path), load_external_data=False)
        except Exception as e:  # protobuf's DecodeError and friends
            raise OnnxParseError(f"{self.path}: not a readable ONNX model ({e})") from e
        rewrites = drop_softmax_precision(model)
        # parse() with the file's path resolves external weights next to it, as parse_from_file does
        ok = parser.parse(model.SerializeToString(), str(self.path))
        if not ok or parser.num_errors:
            raise OnnxParseError(format_parser_errors(parser, self.path))
        for note in rewrites:
            self.log.note(note)
        return ParsedNetwork(builder, network, parser, model, rewrites)


# -- config ------------------------------------------------------------------------------------------


def compute_capability_enum(cc: str) -> trt.ComputeCapability:
    """'8.9' -> ComputeCapability.SM89 (TensorRT-RTX); ValueError listing what the module supports."""
    supported = supported_compute_capabilities()
    key = "SM" + cc.replace(".", "")
    if cc not in supported:
        raise ValueError(
            f"compute capability: received {cc!r}, expected one of {', '.join(supported)} "
            f"({selected().name} {selected().version})"
        )
    value: trt.ComputeCapability = getattr(trt.ComputeCapability, key)
    return value


def supported_compute_capabilities() -> list[str]:
    """What the selected module can build for ahead of time ([] for full TensorRT: no such API)."""
    if not hasattr(trt, "ComputeCapability"):
        return []
    out = []
    for name in trt.ComputeCapability.__members__:
        if name.startswith("SM") and name[2:].isdigit():
            digits = name[2:]
            out.append(f"{digits[:-1]}.{digits[-1]}")
    return out


class TimingCache:
    """A timing cache file shared by builds: read before, written after.

    The file is keyed by TensorRT module, version and target (the caller chooses the name). A cache that
    TensorRT refused to load (``accepted`` False: another version, or -- for TensorRT-RTX -- no CUDA device
    to deserialize it with) is kept as it is rather than overwritten by this build's, so that a cache made
    on a GPU machine survives CPU-only builds. TensorRT-RTX says timing-cache operations are no-ops
    (DeprecationWarning since RTX 1.2); what its cache blob carries is its code-generator and compilation
    caches. The Python DeprecationWarnings are silenced here, and the facts recorded instead.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loaded_bytes = 0
        self.accepted: bool | None = None  # None: nothing to load
        self.detail = ""
        self.saved_bytes = 0

    def attach(self, config: trt.IBuilderConfig, log: BuildLog) -> None:
        blob = self.path.read_bytes() if self.path.is_file() else b""
        self.loaded_bytes = len(blob)
        with warnings.catch_warnings(), log.capture(quiet=True) as seen:
            warnings.simplefilter("ignore", DeprecationWarning)
            cache = config.create_timing_cache(blob)
            config.set_timing_cache(cache, False)
        refused = [m for m in seen if "timing cache" in m.lower() and ("fail" in m.lower() or "not be used" in m.lower())]
        cuda = [m for m in seen if "cudaError" in m]
        if blob:
            self.accepted = not refused
            if self.accepted:
                self.detail = "loaded"
            elif cuda:
                cause = cuda[0][cuda[0].find("cudaError"):].rstrip(")")
                self.detail = f"TensorRT needs a CUDA device to deserialize a timing cache ({cause})"
            else:
                self.detail = "; ".join(refused)
            log.note(f"timing cache: read {len(blob)} bytes from {self.path}: "
                     + ("accepted by TensorRT" if self.accepted else f"refused by TensorRT: {self.detail}"))
        else:
            log.note(f"timing cache: none at {self.path}; starting an empty one")

    def save(self, config: trt.IBuilderConfig, log: BuildLog) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            blob = bytes(memoryview(config.get_timing_cache().serialize()))
        if self.accepted is False and self.loaded_bytes:
            log.note(f"timing cache: kept the existing {self.path} (TensorRT could not load it here), "
                     f"did not write this build's {len(blob)} bytes")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.path, blob)
        self.saved_bytes = len(blob)
        log.note(f"timing cache: wrote {len(blob)} bytes to {self.path}")

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "loaded_bytes": self.loaded_bytes, "accepted": self.accepted,
                "detail": self.detail, "saved_bytes": self.saved_bytes}


class CreateConfig:
    """(builder, network) -> IBuilderConfig with profiles, target, detailed profiling, timing cache."""

    def __init__(
        self,
        profiles: Sequence[Profile],
        log: BuildLog,
        compute_capabilities: Sequence[str] = (),
        hardware_compatibility: str = "none",
        timing_cache: TimingCache | None = None,
        builder_optimization_level: int | None = None,
    ) -> None:
        self.profiles = list(profiles)
        self.log = log
        self.compute_capabilities = list(compute_capabilities)
        self.hardware_compatibility = hardware_compatibility
        self.timing_cache = timing_cache
        self.builder_optimization_level = builder_optimization_level

    def __call__(self, builder: trt.Builder, network: trt.INetworkDefinition) -> trt.IBuilderConfig:
        config = builder.create_builder_config()
        # the engine's per-layer description (kernel names, ONNX node metadata): the fused-attention check
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        if self.builder_optimization_level is not None:
            config.builder_optimization_level = self.builder_optimization_level
        if self.compute_capabilities:
            if not supported_compute_capabilities():
                raise ValueError(
                    f"{selected().name} {selected().version} cannot build for a compute capability ahead of time; "
                    "use --trt-module tensorrt_rtx, or build on the target GPU"
                )
            config.num_compute_capabilities = len(self.compute_capabilities)
            for i, cc in enumerate(self.compute_capabilities):
                config.set_compute_capability(compute_capability_enum(cc), i)
        if self.hardware_compatibility != "none":
            level = {"ampere_plus": trt.HardwareCompatibilityLevel.AMPERE_PLUS,
                     "same_compute_capability": trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY}
            config.hardware_compatibility_level = level[self.hardware_compatibility]
        for p in self.profiles:
            profile = builder.create_optimization_profile()
            for name, rng in p.shapes.items():
                profile.set_shape(name, trt.Dims(rng.min), trt.Dims(rng.opt), trt.Dims(rng.max))
            if config.add_optimization_profile(profile) < 0:
                raise EngineBuildError(f"profile {p.name!r} was rejected by TensorRT: {self.log.errors[-3:]}")
        if self.timing_cache is not None:
            self.timing_cache.attach(config, self.log)
        return config


# -- engine ------------------------------------------------------------------------------------------


@dataclass
class BuiltEngine:
    data: bytes
    seconds: float


class EngineBytesFromNetwork:
    """(ParsedNetwork, CreateConfig) -> serialized engine bytes; saves the timing cache afterwards."""

    def __init__(self, network: ParsedNetwork | Callable[[], ParsedNetwork], config: CreateConfig) -> None:
        self.network = network
        self.config = config

    def __call__(self) -> BuiltEngine:
        parsed = invoke(self.network)
        config = self.config(parsed.builder, parsed.network)
        log = self.config.log
        t0 = time.perf_counter()
        errors_before = len(log.errors)
        serialized = parsed.builder.build_serialized_network(parsed.network, config)
        seconds = time.perf_counter() - t0
        if serialized is None or not len(memoryview(serialized)):
            errors = log.errors[errors_before:] or ["(no error was logged)"]
            hint = ""
            if any("not supported by a dedicated kernel" in e for e in errors):
                hint = ("\nAn attention op of this model has no fused kernel for this target (head size, dtype or "
                        "mask shape); its IAttention layers do not allow decomposition, so nothing unfused is built.")
            raise EngineBuildError("TensorRT could not build the engine:\n"
                                   + "\n".join(f"  {e}" for e in errors[-10:]) + hint)
        if self.config.timing_cache is not None:
            self.config.timing_cache.save(config, log)
        return BuiltEngine(bytes(memoryview(serialized)), seconds)


class SaveEngine:
    """Writes the engine atomically (temp file, then rename); returns what it wrote."""

    def __init__(self, engine: BuiltEngine | Callable[[], BuiltEngine], path: str | os.PathLike[str]) -> None:
        self.engine = engine
        self.path = Path(path)

    def __call__(self) -> BuiltEngine:
        built = invoke(self.engine)
        write_bytes_atomic(self.path, built.data)
        return built
