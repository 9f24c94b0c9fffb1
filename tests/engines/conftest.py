"""Shared fixtures for the TensorRT engine tests: one CLI build of tiny.en fp16 for sm_89, reused by all.

Everything that imports TensorRT is skipped when tensorrt_rtx is not installed (CI installs it: the
``tensorrt-rtx`` extra). Engine *execution* needs a GPU that TensorRT-RTX supports and is marked ``gpu``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine_helpers import HAVE_RTX, TARGET_CC, run_build_cli


@dataclass
class BuiltBundle:
    path: Path
    cache_dir: Path  # --timing-cache-dir (the timing cache is cache_dir/tensorrt/<module>-<version>-sm89...)
    exit_code: int
    stderr: str
    stdout: str
    seconds: float  # the whole CLI call: checkpoint, export and both engines


@pytest.fixture(scope="session")
def built_bundle(tmp_path_factory) -> BuiltBundle:
    """`whisper-export build --fp16 --compute-capability 8.9` on tiny.en, once per test session."""
    if not HAVE_RTX:
        pytest.skip("tensorrt_rtx is not installed")
    root = tmp_path_factory.mktemp("engines")
    out, cache = root / "bundle", root / "cache"
    t0 = time.perf_counter()
    result = run_build_cli(["--fp16", "--compute-capability", TARGET_CC, "--out", str(out),
                            "--timing-cache-dir", str(cache), "--trt-module", "tensorrt_rtx"])
    seconds = time.perf_counter() - t0
    return BuiltBundle(out, cache, result.exit_code, result.stderr, result.stdout, seconds)


@pytest.fixture(scope="session")
def matmul_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    """tiny.en fp16 exported with the MatMul/Softmax attention fallback (no opset-23 Attention)."""
    from whisper_export.export.exporter import ExportOptions, export_bundle

    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("matmul") / "bundle",
                         ExportOptions(precision="fp16", attention="matmul"), progress=lambda _: None)
