"""Which TensorRT: full ``tensorrt`` (>= 10) or ``tensorrt_rtx``, chosen once per process, one static API.

Both Python modules expose the same names (Builder, OnnxParser, IBuilderConfig, ...), so every file in
engines/ is written against one alias, ``trt``:

* for type checkers it *is* ``tensorrt_rtx`` (stubs generated from the installed bindings live in
  typings/tensorrt_rtx; full TensorRT is not installable on the CPU CI machines, so its names are checked
  through the RTX stubs — the two APIs only differ where engines/ branches on ``selected().name``);
* at run time it forwards every attribute to the module chosen by :func:`select` (``--trt-module``), or,
  when nothing was chosen, the first importable one in :data:`PREFERENCE`.

Classes that must *subclass* a TensorRT class (the build logger) are created per module after selection,
never at import time: importing engines/ never imports TensorRT.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

__all__ = [
    "MODULES",
    "PREFERENCE",
    "TensorRTUnavailable",
    "TrtModuleInfo",
    "available",
    "installed_version",
    "preferred_module",
    "select",
    "selected",
    "trt",
]

MODULES = ("tensorrt", "tensorrt_rtx")
# full TensorRT runs on every NVIDIA GPU (data-center ones included); TensorRT-RTX builds ahead of time
# without a GPU. A build that asks for a compute capability prefers RTX (see preferred_module()).
PREFERENCE = ("tensorrt", "tensorrt_rtx")
MIN_TENSORRT_MAJOR = 10


class TensorRTUnavailable(RuntimeError):
    """No usable TensorRT Python module (not installed, too old, or not the one asked for)."""


@dataclass(frozen=True)
class TrtModuleInfo:
    name: str  # "tensorrt" | "tensorrt_rtx"
    version: str  # the module's __version__, e.g. "1.7.1.116"

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"


def _import(name: str) -> ModuleType:
    if name not in MODULES:
        raise ValueError(f"TensorRT module: received {name!r}, expected one of {', '.join(MODULES)}")
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        hint = "pip install tensorrt-rtx" if name == "tensorrt_rtx" else "pip install tensorrt (needs a CUDA GPU to build)"
        raise TensorRTUnavailable(f"TensorRT module {name!r} is not importable ({e}); {hint}") from e
    version = str(getattr(module, "__version__", "0"))
    if name == "tensorrt" and int(version.split(".")[0] or 0) < MIN_TENSORRT_MAJOR:
        raise TensorRTUnavailable(
            f"TensorRT module 'tensorrt': received version {version}, expected >= {MIN_TENSORRT_MAJOR} "
            "(the Attention layer, strongly typed networks and named I/O tensors)"
        )
    return module


def installed_version(name: str) -> str | None:
    """The version of an importable, recent-enough module, or None."""
    try:
        return str(_import(name).__version__)
    except (TensorRTUnavailable, ValueError):
        return None


def available() -> dict[str, str]:
    """{module name: version} of every usable TensorRT module, in preference order."""
    return {name: v for name in PREFERENCE if (v := installed_version(name)) is not None}


class _Selected:
    """Forwards attribute access to the selected module (see the module docstring)."""

    def __init__(self) -> None:
        self._module: ModuleType | None = None
        self._info: TrtModuleInfo | None = None

    def _bind(self, module: ModuleType, info: TrtModuleInfo) -> None:
        self._module, self._info = module, info

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        if self._module is None:
            select(None)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"<TensorRT alias for {self._info.name if self._info else 'no module yet'}>"


if TYPE_CHECKING:
    import tensorrt_rtx as trt
else:
    trt = _Selected()


def select(name: str | None = None) -> TrtModuleInfo:
    """Bind ``trt`` to `name`, or to the first importable module of PREFERENCE; returns what was bound.

    Raises TensorRTUnavailable naming what is installed. Selecting a different module later in the same
    process rebinds the alias (objects created through the old one keep working with their own module).
    """
    if name is None:
        found = available()
        if not found:
            raise TensorRTUnavailable(
                f"no TensorRT Python module is installed (tried {', '.join(PREFERENCE)}); "
                "pip install tensorrt-rtx (builds without a GPU) or tensorrt (>= 10)"
            )
        name = next(iter(found))
    try:
        module = _import(name)
    except TensorRTUnavailable as e:
        others = {k: v for k, v in available().items() if k != name}
        if others:
            raise TensorRTUnavailable(
                f"{e}; installed instead: {', '.join(f'{k} {v}' for k, v in others.items())} "
                f"(pass --trt-module {next(iter(others))})"
            ) from None
        raise
    info = TrtModuleInfo(name, str(module.__version__))
    binder: Any = trt
    binder._bind(module, info)
    return info


def selected() -> TrtModuleInfo:
    """The bound module's name and version, selecting the preferred one if none is bound yet."""
    binder: Any = trt
    if binder._info is None:
        return select(None)
    info: TrtModuleInfo = binder._info
    return info


def preferred_module(compute_capability: str | None) -> str | None:
    """The module to use when --trt-module is not given: RTX for ahead-of-time builds, else PREFERENCE."""
    found = available()
    if compute_capability is not None and "tensorrt_rtx" in found:
        return "tensorrt_rtx"
    return next(iter(found), None)
