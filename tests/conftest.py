"""Shared fixtures: real weights (tiny.en, base), exported bundles built once per session, committed clips."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session", autouse=True)
def _private_bundle_cache(tmp_path_factory):
    """Bundles exported on demand go to a temp dir, never the user's ~/.cache."""
    old = os.environ.get("WHISPER_EXPORT_CACHE_DIR")
    os.environ["WHISPER_EXPORT_CACHE_DIR"] = str(tmp_path_factory.mktemp("whisper-export-cache"))
    yield
    if old is None:
        os.environ.pop("WHISPER_EXPORT_CACHE_DIR", None)
    else:
        os.environ["WHISPER_EXPORT_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def clips() -> dict[str, dict]:
    """{file name: {"text", "language", "path"}} for the committed espeak-ng clips."""
    meta = json.loads((DATA / "clips.json").read_text())
    return {name: {**info, "path": DATA / name} for name, info in meta.items()}


@pytest.fixture(scope="session")
def english_clips(clips) -> list[Path]:
    return sorted(info["path"] for info in clips.values() if info["language"] == "en")


@pytest.fixture(scope="session")
def tiny_checkpoint():
    from reference_model import load_checkpoint

    return load_checkpoint("tiny.en")


@pytest.fixture(scope="session")
def base_checkpoint():
    from reference_model import load_checkpoint

    return load_checkpoint("base")


def _export(ckpt, root: Path, name: str, **options) -> Path:
    from whisper_export.export.exporter import ExportOptions, export_bundle

    return export_bundle(ckpt, root / name, ExportOptions(**options), progress=lambda _: None)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    return _export(tiny_checkpoint, tmp_path_factory.mktemp("bundles"), "tiny-fp32")


@pytest.fixture(scope="session")
def tiny_bundle_fp16(tmp_path_factory, tiny_checkpoint) -> Path:
    return _export(tiny_checkpoint, tmp_path_factory.mktemp("bundles"), "tiny-fp16", precision="fp16")


@pytest.fixture(scope="session")
def tiny_bundle_ort(tmp_path_factory, tiny_checkpoint) -> Path:
    """tiny.en fp32 on onnxruntime's fused contrib operators (attention="onnxruntime", graphs_ort.py)."""
    return _export(tiny_checkpoint, tmp_path_factory.mktemp("bundles"), "tiny-ort", attention="onnxruntime")


@pytest.fixture(scope="session")
def base_bundle(tmp_path_factory, base_checkpoint) -> Path:
    return _export(base_checkpoint, tmp_path_factory.mktemp("bundles"), "base-fp32")


def _wav_bytes(rate: int = 16000, channels: int = 1, bits: int = 16, data: bytes = b"\0" * 32000,
               claimed: int | None = None, tag: int = 1) -> bytes:
    """A RIFF/WAVE file with any header values, hostile ones included (soundfile refuses to write those)."""
    import struct

    block = max(channels * bits // 8, 0)
    size = len(data) if claimed is None else claimed
    fmt = struct.pack("<IHHIIHH", 16, tag, channels & 0xFFFF, rate & 0xFFFFFFFF, (rate * block) & 0xFFFFFFFF,
                      block & 0xFFFF, bits & 0xFFFF)
    return b"RIFF" + struct.pack("<I", (36 + size) & 0xFFFFFFFF) + b"WAVEfmt " + fmt + b"data" + \
        struct.pack("<I", size & 0xFFFFFFFF) + data


@pytest.fixture(scope="session")
def wav_bytes():
    """wav_bytes(rate=, channels=, bits=, data=, claimed=, tag=) -> the bytes of a WAV file with that header."""
    return _wav_bytes


@pytest.fixture
def ffmpeg_on_path(tmp_path_factory, monkeypatch) -> Path:
    """The ffmpeg executable of the imageio-ffmpeg wheel (test extra) as `ffmpeg` on PATH, for this test only."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    directory = tmp_path_factory.mktemp("ffmpeg-bin")
    (directory / "ffmpeg").symlink_to(imageio_ffmpeg.get_ffmpeg_exe())
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ.get('PATH', '')}")
    return directory / "ffmpeg"


@pytest.fixture
def no_ffmpeg(tmp_path_factory, monkeypatch) -> None:
    """PATH without any ffmpeg: only the Python interpreter's directory."""
    import sys

    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    import shutil

    if shutil.which("ffmpeg"):
        pytest.skip("ffmpeg sits beside the Python interpreter")
