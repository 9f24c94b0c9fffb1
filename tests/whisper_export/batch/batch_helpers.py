"""Inputs made of a few short committed clips under many names (symlinks), and a corrupt file."""

from __future__ import annotations

import os
from pathlib import Path

# the clips the inputs are made of: short English ones (each one 30 s window)
CLIPS = ("en_fox.wav", "en_breakfast.wav", "en_stella.wav")


def make_inputs(directory: Path, clips: dict, copies: int, corrupt: bool = True) -> list[Path]:
    """copies names of each of CLIPS (symlinks to the committed files) and, if corrupt, one file of noise with a
    .wav name; the paths made."""
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(copies):
        for name in CLIPS:
            link = directory / f"{Path(name).stem}-{i:03d}.wav"
            link.symlink_to(clips[name]["path"])
            made.append(link)
    if corrupt:
        bad = directory / "corrupt.wav"
        bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + os.urandom(2000))
        made.append(bad)
    return made


def clip_of(path: str) -> str:
    """The committed clip an input name stands for: 'en_fox-007.wav' -> 'en_fox.wav'."""
    return Path(path).name.rsplit("-", 1)[0] + ".wav"
