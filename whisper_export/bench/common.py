"""Constants and timing helpers shared by the bench systems, reports and benchmarks/gpu_bench.py."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable

import typer

SYSTEMS = ("ours", "torch", "transformers", "faster-whisper")
BASELINES = ("torch", "transformers", "faster-whisper")
BATCH = 16




def _now() -> float:
    return time.perf_counter()


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "n": len(samples)}


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[dict[str, float], Any]:
    """Median/min seconds of fn() over repeats runs after warmup runs; and fn's last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    samples = []
    for _ in range(repeats):
        t = _now()
        result = fn()
        samples.append(_now() - t)
    return summary(samples), result


def _log(message: str) -> None:
    typer.echo(f"[bench] {message}", err=True)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    for name in ("numpy", "onnxruntime", "torch", "transformers", "faster_whisper", "ctranslate2"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except Exception:  # noqa: BLE001 - absent or broken: recorded as such
            info[name] = None
    return info
