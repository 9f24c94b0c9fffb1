"""Fixtures of the serve tests: one runtime per module, a long clip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from whisper_export.runtime import WhisperRuntime


@pytest.fixture(scope="module")
def runtime(tiny_bundle) -> Iterator[WhisperRuntime]:
    with WhisperRuntime.load(tiny_bundle) as rt:
        yield rt


def _concatenated(path: Path, clips: list[Path], repeats: int) -> Path:
    """The clips one after the other, repeats times over, with 1 s of silence between."""
    import soundfile

    from whisper_export.runtime.audio import load_audio

    gap = np.zeros(16000, np.float32)
    pieces = [piece for _ in range(repeats) for clip in clips for piece in (load_audio(clip), gap)]
    soundfile.write(path, np.concatenate(pieces), 16000, subtype="PCM_16")
    return path


@pytest.fixture(scope="session")
def medium_wav(tmp_path_factory, english_clips) -> Path:
    """The English clips one after the other (27 s: one window and a bit)."""
    return _concatenated(tmp_path_factory.mktemp("serve-audio") / "medium.wav", english_clips, 1)


@pytest.fixture(scope="session")
def long_wav(tmp_path_factory, english_clips) -> Path:
    """The English clips three times over (81 s: several windows, each after the one before)."""
    return _concatenated(tmp_path_factory.mktemp("serve-audio") / "long.wav", english_clips, 3)
