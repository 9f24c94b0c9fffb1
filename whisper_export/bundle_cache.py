"""Bundles exported on demand: ``transcribe --model M`` (or no model: the packaged tiny.en) exports once into a
user cache and reuses it, so the onnxruntime path never needs a manual export step."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

from whisper_export import __version__, graph_io
from whisper_export.bundle import MANIFEST, cache_dir

DEFAULT_MODEL = "tiny.en"  # kept equal to reference_model.sources.DEFAULT_MODEL (tests check it)


def _key(model: str, precision: str) -> str:
    """Changes with the checkpoint (path, size, mtime), the precision and the exporter."""
    path = Path(model)
    stamp = model
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        stamp = str(path.absolute()) + "".join(f"|{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    raw = f"{stamp}|{precision}|{__version__}|{graph_io.GRAPH_IO_VERSION}"
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def cached_bundle_dir(model: str | None, precision: str = "fp32") -> Path:
    model = model or DEFAULT_MODEL
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name or model)
    return cache_dir() / "bundles" / f"{name}-{precision}-{_key(model, precision)}"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_bundle(model: str | None, precision: str = "fp32", progress=_stderr) -> Path:
    """The cached bundle of model, exported now if absent (needs the ``export`` extra: torch, onnx)."""
    directory = cached_bundle_dir(model, precision)
    if (directory / MANIFEST).is_file():
        return directory
    try:
        from reference_model import load_checkpoint
        from whisper_export.export import ExportError, ExportOptions, export_bundle
    except ImportError as e:
        raise ValueError(
            f"model {model or DEFAULT_MODEL!r}: exporting it needs the export extra ({e.name} is missing): "
            "pip install 'whisper-export[export]', or pass --bundle DIR of an exported bundle"
        ) from None
    progress(f"[bundle] exporting {model or DEFAULT_MODEL} ({precision}) once into {directory}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        export_bundle(load_checkpoint(model), directory, ExportOptions(precision=precision), progress)
    except ExportError:
        if not (directory / MANIFEST).is_file():  # not a concurrent export that won the rename
            raise
    return directory
