"""The JSON sidecar next to each engine, and the pure checks the runner makes from it before touching a GPU.

``encoder.engine.json`` records what built the engine (TensorRT module and version, target compute
capabilities), from what (the ONNX file's sha256), for which shapes (optimization profiles) and how
(precision, build time, timing cache, the fused-attention inspection), plus the engine's I/O tensors with
their ONNX dimension names. From that alone, without deserializing anything:

* :func:`check_compatible` tells whether this process (TensorRT module/version, GPU) can load the engine,
  with a message that says how to rebuild when it cannot;
* :func:`validate_feeds` checks a call's inputs -- names, dtypes, ranks, fixed axes, named axes that must
  agree across tensors -- and picks the optimization profile (messages name the tensor, what was received
  and what was expected);
* :func:`resolve_output_shapes` gives the output shapes a call will produce.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from whisper_export.atomic import write_text_atomic
from whisper_export.backends.tensorrt.profiles import Profile, ProfileError, select_profile

SIDECAR_FORMAT = "whisper-export-engine"
SIDECAR_VERSION = 1
SIDECAR_SUFFIX = ".json"  # encoder.engine -> encoder.engine.json


class SidecarError(ValueError):
    """A sidecar that is missing, unreadable or not of this format."""


class EngineMismatch(RuntimeError):
    """The engine was built for another TensorRT module/version or another GPU: rebuild it."""


class EngineInputError(ValueError):
    """Inputs that do not fit the engine's I/O tensors or any of its optimization profiles."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    mode: str  # "input" | "output"
    dtype: str  # numpy dtype name: "float32", "float16", "int64"
    shape: tuple[int, ...]  # -1 for a dynamic axis
    dim_names: tuple[str | None, ...]  # the ONNX dim_param of each axis ("rows", "capacity"), None if fixed

    def expected(self) -> str:
        axes = [str(d) if d >= 0 else (n or "?") for d, n in zip(self.shape, self.dim_names)]
        return f"({', '.join(axes)}{',' if len(axes) == 1 else ''}) {self.dtype}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "dtype": self.dtype, "shape": list(self.shape),
                "dim_names": list(self.dim_names)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "TensorSpec":
        shape = tuple(int(x) for x in d["shape"])
        names = tuple(d.get("dim_names") or [None] * len(shape))
        return cls(str(d["name"]), str(d["mode"]), str(d["dtype"]), shape, names)


@dataclass
class EngineSidecar:
    graph: str  # "encoder" | "decoder"
    engine_file: str
    engine_bytes: int
    engine_sha256: str
    onnx_file: str
    onnx_sha256: str
    trt_module: str  # "tensorrt" | "tensorrt_rtx"
    trt_version: str
    compute_capabilities: list[str]  # ahead-of-time targets ("8.9"); empty: the build machine's GPU
    hardware_compatibility: str  # "none" | "ampere_plus" | "same_compute_capability"
    built_on_compute_capability: str | None  # the build machine's GPU, None when built without one
    module_compute_capabilities: list[str]  # what the TensorRT module can target at all (RTX: no 9.0)
    precision: str
    strongly_typed: bool
    profiles: list[Profile]
    io: list[TensorSpec]
    limits: dict[str, Any]
    build_seconds: float
    built_at: str  # ISO 8601, UTC
    fused_attention: dict[str, Any]
    timing_cache: dict[str, Any]
    onnx_rewrites: list[str] = field(default_factory=list)
    log_file: str | None = None
    whisper_export_version: str = ""
    format: str = SIDECAR_FORMAT
    format_version: int = SIDECAR_VERSION

    @property
    def inputs(self) -> list[TensorSpec]:
        return [t for t in self.io if t.mode == "input"]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [t for t in self.io if t.mode == "output"]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["profiles"] = [p.to_json() for p in self.profiles]
        d["io"] = [t.to_json() for t in self.io]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "sidecar") -> "EngineSidecar":
        if d.get("format") != SIDECAR_FORMAT:
            raise SidecarError(f"{where}: format {d.get('format')!r}, expected {SIDECAR_FORMAT!r}")
        if d.get("format_version") != SIDECAR_VERSION:
            raise SidecarError(
                f"{where}: format_version {d.get('format_version')!r}, expected {SIDECAR_VERSION}; rebuild the engines"
            )
        names = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = sorted(n for n in required if n not in d)
        if missing:
            raise SidecarError(f"{where}: missing keys {missing}")
        values = {k: v for k, v in d.items() if k in names}
        try:
            values["profiles"] = [Profile.from_json(p) for p in d["profiles"]]
            values["io"] = [TensorSpec.from_json(t) for t in d["io"]]
            sidecar = cls(**values)
        except (KeyError, TypeError, ValueError) as e:
            raise SidecarError(f"{where}: malformed ({e})") from e
        if not sidecar.profiles:
            raise SidecarError(f"{where}: no optimization profiles")
        return sidecar

    def write(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> "EngineSidecar":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SidecarError(f"{path}: missing; expected the JSON sidecar written next to the engine by "
                               "'whisper-export build'") from None
        except (OSError, json.JSONDecodeError) as e:
            raise SidecarError(f"{path}: unreadable ({e})") from e
        return cls.from_json(data, str(path))


def sidecar_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


# -- compatibility (before deserializing) ------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeEnv:
    """What this process offers: the TensorRT module bound to whisper_export.backends.tensorrt.trt_api.trt and the GPU."""

    trt_module: str
    trt_version: str
    compute_capability: str | None  # None: no usable CUDA device
    no_device_reason: str = ""


def _cc_tuple(cc: str) -> tuple[int, int]:
    major, _, minor = cc.partition(".")
    return int(major), int(minor or 0)


def check_compatible(sidecar: EngineSidecar, env: RuntimeEnv) -> None:
    """Raise EngineMismatch, suggesting the rebuild, unless env can deserialize and run the engine."""
    name = sidecar.engine_file
    rebuild = f"whisper-export build --trt-module {env.trt_module}"
    if sidecar.trt_module != env.trt_module:
        raise EngineMismatch(
            f"{name}: built with {sidecar.trt_module} {sidecar.trt_version}, but this process uses "
            f"{env.trt_module} {env.trt_version}; engines load only in the module that built them. Rebuild: {rebuild}"
        )
    if sidecar.trt_version != env.trt_version:
        raise EngineMismatch(
            f"{name}: built with {sidecar.trt_module} {sidecar.trt_version}, this process has {env.trt_version}; "
            f"TensorRT engines load only in the exact version that built them. Rebuild: {rebuild}"
        )
    if env.compute_capability is None:
        raise EngineMismatch(f"{name}: no CUDA device to run it on ({env.no_device_reason or 'none found'})")
    cc = env.compute_capability
    if sidecar.module_compute_capabilities and cc not in sidecar.module_compute_capabilities and sidecar.compute_capabilities:
        raise EngineMismatch(
            f"{name}: this GPU has compute capability {cc}, which {sidecar.trt_module} {sidecar.trt_version} cannot "
            f"target at all (it supports {', '.join(sidecar.module_compute_capabilities)}); "
            + ("TensorRT-RTX does not run on data-center GPUs such as H100 (9.0): use full TensorRT "
               "(whisper-export build --trt-module tensorrt on that GPU)" if sidecar.trt_module == "tensorrt_rtx"
               else "use another GPU or TensorRT version")
        )
    targets = ", ".join(sidecar.compute_capabilities)
    if sidecar.compute_capabilities and cc not in sidecar.compute_capabilities:
        raise EngineMismatch(
            f"{name}: built ahead of time for compute capability {targets}, this GPU is {cc}. Rebuild: "
            f"{rebuild} --compute-capability {cc}"
        )
    if not sidecar.compute_capabilities:
        hw = sidecar.hardware_compatibility
        built = sidecar.built_on_compute_capability
        if hw == "ampere_plus":
            if _cc_tuple(cc) < (8, 0):
                raise EngineMismatch(f"{name}: built Ampere-plus hardware compatible, this GPU is {cc} (< 8.0). "
                                     f"Rebuild on this GPU: {rebuild}")
        elif built is not None and built != cc:
            raise EngineMismatch(
                f"{name}: built on a GPU of compute capability {built}, this GPU is {cc}; an engine runs only on "
                f"the GPU generation that built it. Rebuild on this GPU: {rebuild}"
            )


# -- inputs ------------------------------------------------------------------------------------------


def validate_feeds(
    sidecar: EngineSidecar, feeds: Mapping[str, tuple[Sequence[int], Any]]
) -> tuple[int, dict[str, int]]:
    """Check {input name: (shape, dtype)} against the engine; return (profile index, named axis sizes).

    Raises EngineInputError (or ProfileError, a ValueError too) whose message names the tensor, the
    received shape/dtype and the expected one.
    """
    graph = sidecar.engine_file
    specs = {t.name: t for t in sidecar.inputs}
    missing = [n for n in specs if n not in feeds]
    unknown = sorted(set(feeds) - set(specs))
    if missing or unknown:
        raise EngineInputError(
            f"{graph}: received inputs {sorted(feeds)}, expected {list(specs)}"
            + (f" (missing {missing})" if missing else "") + (f" (not inputs: {unknown})" if unknown else "")
        )
    named: dict[str, tuple[int, str]] = {}
    for name, spec in specs.items():
        shape, dtype = feeds[name]
        shape = tuple(int(s) for s in shape)
        got_dtype = np.dtype(dtype).name
        if got_dtype != spec.dtype:
            raise EngineInputError(f"{name}: received dtype {got_dtype}, expected {spec.dtype} (shape {spec.expected()})")
        if len(shape) != len(spec.shape):
            raise EngineInputError(f"{name}: received shape {shape}, expected {spec.expected()}")
        for axis, (got, fixed, dim_name) in enumerate(zip(shape, spec.shape, spec.dim_names)):
            if fixed >= 0 and got != fixed:
                raise EngineInputError(f"{name}: received shape {shape}, expected {spec.expected()} (axis {axis} is {fixed})")
            if fixed < 0 and dim_name:
                if dim_name in named and named[dim_name][0] != got:
                    size, source = named[dim_name]
                    raise EngineInputError(
                        f"{name}: received shape {shape}, expected {spec.expected()} with {dim_name} = {size} "
                        f"(from {source})"
                    )
                named.setdefault(dim_name, (got, name))
    shapes = {name: tuple(int(s) for s in feeds[name][0]) for name in specs}
    try:
        index = select_profile(sidecar.profiles, shapes, graph)
    except ProfileError as e:
        raise EngineInputError(str(e)) from None
    return index, {k: v for k, (v, _) in named.items()}


def resolve_output_shapes(sidecar: EngineSidecar, named: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """Output shapes from the named axis sizes validate_feeds returned; EngineInputError if one is unknown."""
    shapes = {}
    for spec in sidecar.outputs:
        dims = []
        for fixed, dim_name in zip(spec.shape, spec.dim_names):
            if fixed >= 0:
                dims.append(fixed)
            elif dim_name is not None and dim_name in named:
                dims.append(named[dim_name])
            else:
                raise EngineInputError(
                    f"{spec.name}: output axis {dim_name or '?'} is not determined by any input axis; "
                    "ask the execution context for the shape instead"
                )
        shapes[spec.name] = tuple(dims)
    return shapes
