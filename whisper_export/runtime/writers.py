"""Transcript files: txt, json, srt, vtt, tsv (each a pure function result -> str, plus write_result)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

from whisper_export.atomic import write_text_atomic
from whisper_export.runtime.transcribe import TranscriptionResult

FORMATS = ("txt", "json", "srt", "vtt", "tsv")


def format_timestamp(seconds: float, decimal_marker: str = ".") -> str:
    """HH:MM:SS.mmm (SubRip uses ',' as the decimal marker)."""
    if seconds < 0:
        raise ValueError(f"timestamp: received {seconds} s, expected >= 0")
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def _cues(result: TranscriptionResult):
    # segments cleared by the transcriber (instantaneous or blank) have no cue
    return [s for s in result.segments if s.text.strip()]


def to_txt(result: TranscriptionResult) -> str:
    return "".join(s.text.strip() + "\n" for s in _cues(result))


def to_srt(result: TranscriptionResult) -> str:
    blocks = [
        f"{i}\n{format_timestamp(s.start, ',')} --> {format_timestamp(s.end, ',')}\n{s.text.strip().replace('-->', '->')}\n"
        for i, s in enumerate(_cues(result), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(result: TranscriptionResult) -> str:
    blocks = [
        f"{format_timestamp(s.start)} --> {format_timestamp(s.end)}\n{s.text.strip().replace('-->', '->')}\n"
        for s in _cues(result)
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_tsv(result: TranscriptionResult) -> str:
    """openai-whisper's columns: start and end in integer milliseconds, the text (tabs in it become spaces)."""
    rows = [f"{round(1000 * s.start)}\t{round(1000 * s.end)}\t{' '.join(s.text.strip().split(chr(9)))}\n"
            for s in _cues(result)]
    return "start\tend\ttext\n" + "".join(rows)


def to_json(result: TranscriptionResult) -> str:
    return json.dumps(asdict(result), ensure_ascii=False, indent=2) + "\n"


RENDERERS: dict[str, Callable[[TranscriptionResult], str]] = {
    "txt": to_txt,
    "json": to_json,
    "srt": to_srt,
    "vtt": to_vtt,
    "tsv": to_tsv,
}


def expand_formats(output_format: str) -> tuple[str, ...]:
    """'all' -> every format; otherwise one of FORMATS."""
    if output_format == "all":
        return FORMATS
    if output_format not in FORMATS:
        raise ValueError(f"output format: received {output_format!r}, expected one of {', '.join(FORMATS)} or 'all'")
    return (output_format,)


def write_result(result: TranscriptionResult, output_dir: str | Path, stem: str, formats: Iterable[str]) -> list[Path]:
    """Write <output_dir>/<stem>.<fmt> for each format, each atomically (a symlink there is replaced, not
    followed; a failed write leaves the old file); returns the paths written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        if fmt not in RENDERERS:
            raise ValueError(f"output format: received {fmt!r}, expected one of {', '.join(FORMATS)}")
        path = output_dir / f"{stem}.{fmt}"
        write_text_atomic(path, RENDERERS[fmt](result))
        written.append(path)
    return written
