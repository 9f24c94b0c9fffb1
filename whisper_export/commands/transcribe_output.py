"""What `whisper-export transcribe` shows and writes: output names that never collide, one attributable line per
file on stdout, segments as they are decoded (--verbose), and progress on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer

from whisper_export.runtime.audio import FRAMES_PER_SECOND

# progress in a log (stderr not a terminal): a line for a file each time it is this much further along, or this
# many seconds after its last line, whichever comes first
LOG_EVERY_FRACTION = 0.1
LOG_EVERY_SECONDS = 30.0


def error(message: str) -> None:
    # one line per error: easy to grep, never a traceback for a user mistake
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)


def output_names(paths: Sequence[Path]) -> list[str]:
    """Each input's name under --output-dir, without the format's extension: its file stem, or, when an earlier
    input already has that stem, the stem + "-N" with the smallest N >= 2 that is neither another input's stem
    nor a name already given. Compared ignoring case (one file on case-insensitive file systems), so no two
    inputs ever share an output: a/x.wav, b/x.wav, x-2.wav -> x, x-3, x-2."""
    stems = {p.stem.casefold() for p in paths}
    used: set[str] = set()
    names = []
    for path in paths:
        name = path.stem
        if name.casefold() in used:
            n = 2
            while f"{path.stem}-{n}".casefold() in used | stems:
                n += 1
            name = f"{path.stem}-{n}"
        used.add(name.casefold())
        names.append(name)
    return names


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ").replace("\t", " ")


def _label(path: Path) -> str:
    """The path as given, a tab or newline in it written as \\t, \\n: a line's first tab ends the path."""
    return str(path).replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _clock(seconds: float) -> str:
    """12:30, or 1:02:03 from an hour on."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _segment_time(seconds: float) -> str:
    """openai-whisper's verbose times: 00:07.000, with hours (01:02:03.000) only when there are any."""
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return (f"{hours:02d}:" if hours else "") + f"{minutes:02d}:{secs:02d}.{ms:03d}"


class Reporter:
    """Delivers each finished file: its text to stdout (one input: the text; several: `path<TAB>text`, so every
    line names its file whatever fails) or its files under output_dir; errors to stderr, counted."""

    def __init__(self, paths: Sequence[Path], names: Sequence[str], output_dir: Path | None,
                 formats: Sequence[str], writer_kwargs: dict[str, Any]):
        self.paths, self.names, self.output_dir = list(paths), list(names), output_dir
        self.formats, self.writer_kwargs = tuple(formats), writer_kwargs
        self.labelled = len(self.paths) > 1
        self.delivered = 0
        self.failed = 0

    def deliver(self, index: int, item) -> None:
        """item: the runtime's FileResult for input index."""
        path = self.paths[index]
        if not item.ok:
            self.failed += 1
            error(f"{path}: {item.error}")
            return
        result = item.unwrap()
        if self.output_dir is None:
            text = _one_line(result.text)
            typer.echo(f"{_label(path)}\t{text}" if self.labelled else text)
        else:
            from whisper_export.runtime.writers import write_result

            try:
                write_result(result, self.output_dir, self.names[index], self.formats, **self.writer_kwargs)
            except OSError as e:
                self.failed += 1
                error(f"{path}: cannot write output ({e})")
                return
        self.delivered += 1

    def segment(self, index: int, segment) -> None:
        """--verbose: openai-whisper's line for a segment with text, on stderr (stdout carries the transcripts)."""
        if not segment.text.strip():
            return
        line = f"[{_segment_time(segment.start)} --> {_segment_time(segment.end)}] {_one_line(segment.text)}"
        typer.echo(f"{_label(self.paths[index])}\t{line}" if self.labelled else line, err=True)


class Progress:
    """Progress over files and their windows on stderr. On a terminal: one redrawn line. In a log: a line per file
    each time it is another tenth further or 30 s after its last line (`[transcribe] file 1/3: 12:30 / 45:00`),
    so a log shows a long file is alive, and a line when a file is finished."""

    def __init__(self, paths: Sequence[Path], *, tty: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.paths = list(paths)
        self.done = [0] * len(paths)
        self.total = [0] * len(paths)
        self.finished: set[int] = set()
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.clock = clock
        self._logged: dict[int, tuple[int, float]] = {}  # file -> (frames, time) at its last line

    def __call__(self, index: int, done: int, total: int) -> None:
        self.done[index], self.total[index] = done, total
        if done >= total and total and index not in self.finished:
            self.finished.add(index)
            if not self.tty:
                typer.echo(f"[transcribe] {len(self.finished)}/{len(self.paths)} {self.paths[index]}", err=True)
        elif not self.tty and index not in self.finished:
            self._log(index, done, total)
        if self.tty:
            pct = 100.0 * sum(self.done) / max(sum(self.total), 1)
            sys.stderr.write(f"\r[transcribe] {len(self.finished)}/{len(self.paths)} files, {pct:5.1f}% of audio")
            sys.stderr.flush()

    def _log(self, index: int, done: int, total: int) -> None:
        now = self.clock()
        last_done, last_time = self._logged.setdefault(index, (0, now))
        if done > last_done and (done - last_done >= LOG_EVERY_FRACTION * total or now - last_time >= LOG_EVERY_SECONDS):
            position, length = _clock(done / FRAMES_PER_SECOND), _clock(total / FRAMES_PER_SECOND)
            typer.echo(f"[transcribe] file {index + 1}/{len(self.paths)}: {position} / {length}", err=True)
            self._logged[index] = (done, now)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
