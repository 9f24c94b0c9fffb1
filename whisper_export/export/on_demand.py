"""Bundles exported on demand: ``transcribe --model M`` (or no model: the packaged tiny.en) exports once into a
user cache and reuses it, so the onnxruntime path never needs a manual export step."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import sys
import tempfile
from pathlib import Path

from whisper_export import __version__, graph_io
from whisper_export.bundle import MANIFEST
from whisper_export.hashing import cache_dir

DEFAULT_MODEL = "tiny.en"  # kept equal to reference_model.sources.DEFAULT_MODEL (tests check it)
# what an on-demand export is for each device: (precision, attention), the fastest measured there (NOTES.md,
# "Benchmarks", "Spinning threads"): onnxruntime's fused operators on both; fp32 on a CPU (contrib
# MultiHeadAttention ran the tiny encoder 5-6% faster than the standard Attention operator, same text on the
# 121-clip set), fp16 on a GPU, whose greedy steps stream (its tokens equal the CPU's fp32 tokens there)
ON_DEMAND = {"cpu": ("fp32", "onnxruntime"), "cuda": ("fp16", "onnxruntime")}


def _key(model: str, precision: str, attention: str = "onnx") -> str:
    """Changes with the checkpoint (path, size, mtime), the precision, the attention variant and the exporter."""
    path = Path(model)
    stamp = model
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        stamp = str(path.absolute()) + "".join(f"|{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    variant = "" if attention == "onnx" else f"|{attention}"  # no suffix for the default: bundles already in users' caches keep their keys
    raw = f"{stamp}|{precision}{variant}|{__version__}|{graph_io.GRAPH_IO_VERSION}"
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def cached_bundle_dir(model: str | None, precision: str = "fp32", attention: str = "onnx") -> Path:
    model = model or DEFAULT_MODEL
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name or model)
    variant = "" if attention == "onnx" else f"-{attention}"
    return cache_dir() / "bundles" / f"{name}-{precision}{variant}-{_key(model, precision, attention)}"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _unwritable(directory: Path) -> str | None:
    """None when bundles can be written into directory (made if absent); else why not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def _fallback_cache() -> Path:
    """Where bundles go when the cache cannot be written (a read-only home in a container, a shared account): one
    directory per user under the system's temporary directory, mode 0700, shared by that user's processes, so a
    bundle is exported once rather than once per process and nothing relies on a clean exit to remove it. One
    that is a link, another user's, or writable by others is refused: it could hold a planted bundle."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    root = Path(tempfile.gettempdir()) / f"whisper-export-{uid if uid is not None else 'user'}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(root)
    except OSError as e:
        raise ValueError(f"fallback cache {root}: {e.strerror or type(e).__name__}; set WHISPER_EXPORT_CACHE_DIR "
                         "to a writable directory") from None
    mode = stat.S_IMODE(info.st_mode)
    if uid is not None and (not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or mode & 0o077):
        kind = "a link" if stat.S_ISLNK(info.st_mode) else "a directory" if stat.S_ISDIR(info.st_mode) else "a file"
        raise ValueError(f"fallback cache {root}: received {kind} of uid {info.st_uid} with mode {mode:04o}, "
                         f"expected a directory of uid {uid} with mode 0700; set WHISPER_EXPORT_CACHE_DIR to a "
                         "writable directory")
    reason = _unwritable(root / "bundles")
    if reason is not None:
        raise ValueError(f"fallback cache {root / 'bundles'}: {reason}; set WHISPER_EXPORT_CACHE_DIR to a writable "
                         "directory")
    return root / "bundles"


def ensure_bundle(model: str | None, precision: str = "fp32", progress=_stderr, attention: str = "onnx") -> Path:
    """The cached bundle of model, exported now if absent (needs the ``export`` extra: torch, onnx)."""
    directory = cached_bundle_dir(model, precision, attention)
    if (directory / MANIFEST).is_file():
        return directory
    reason = _unwritable(directory.parent)
    cache = directory.parent
    if reason is not None:
        directory = _fallback_cache() / directory.name
        if (directory / MANIFEST).is_file():
            progress(f"[bundle] cannot write the cache {cache} ({reason}); using {directory}")
            return directory
    try:
        from reference_model import load_checkpoint
        from whisper_export.export.exporter import ExportError, ExportOptions, export_bundle
    except ImportError as e:
        raise ValueError(
            f"model {model or DEFAULT_MODEL!r}: exporting it needs the export extra ({e.name} is missing): "
            "pip install 'whisper-export[export]', or pass --bundle DIR of an exported bundle"
        ) from None
    if reason is not None:
        progress(f"[bundle] cannot write the cache {cache} ({reason}); exporting into {directory}, this user's "
                 "fallback (set WHISPER_EXPORT_CACHE_DIR to a writable directory to choose where)")
    else:
        progress(f"[bundle] exporting {model or DEFAULT_MODEL} ({precision}, attention={attention}) once into {directory}")
    try:
        export_bundle(load_checkpoint(model), directory, ExportOptions(precision=precision, attention=attention),
                      progress)
    except ExportError:
        if not (directory / MANIFEST).is_file():  # not a concurrent export that won the rename
            raise
    return directory
