"""One input as one output row, in two steps that the in-process run and the Ray pipeline share.

decode_input: a path as its 16 kHz float32 samples (bytes, so that Ray moves it as one binary value) or the error
that stops it. transcribe_rows: decoded inputs through one runtime (windows of all of them decoded together) as
rows of OUTPUT_FIELDS. Whatever goes wrong with one file (missing, corrupt, too long) is that file's row's
`error`; the other files go on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from whisper_export.runtime.audio import SAMPLE_RATE

# the columns, in order; "words" only in a run that asks for word timestamps
OUTPUT_FIELDS = ("path", "text", "language", "duration", "segments", "words", "error")


def output_fields(words: bool) -> tuple[str, ...]:
    return OUTPUT_FIELDS if words else tuple(f for f in OUTPUT_FIELDS if f != "words")


def one_line(error: BaseException | str) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, str) else f"{type(error).__name__}: {text}"


def decode_input(path: str, max_duration: float | None) -> dict[str, Any]:
    """{"path", "audio": float32 samples as bytes (b"" on error), "error": None or one line}. The header's
    duration is checked against max_duration before anything is decoded, as transcribe does."""
    from whisper_export.runtime.audio_files import check_header, pcm_blocks, probe

    try:
        header = probe(path, pipes=False)
        check_header(header, max_duration)
        blocks = list(pcm_blocks(header, None if max_duration is None else int(max_duration * SAMPLE_RATE)))
        if not blocks:
            raise ValueError(f"{path!r} contains no audio: received 0 samples, expected at least 1")
        audio = np.concatenate(blocks)
    except Exception as e:  # noqa: BLE001 - any failure of one file is its row's error, never the job's
        return {"path": path, "audio": b"", "error": one_line(e)}
    return {"path": path, "audio": np.ascontiguousarray(audio, np.float32).tobytes(), "error": None}


def inspect_input(path: str, max_duration: float | None) -> dict[str, Any]:
    """decode_input's dict without the samples, for a runtime in this process: the header checked (a regular file,
    its duration within max_duration) and "audio" None, so that the runtime streams the file from disk (bounded
    memory whatever its length) and "duration" is the header's. A file whose header has no duration is decoded."""
    from whisper_export.runtime.audio_files import check_header, probe

    try:
        header = probe(path, pipes=False)
        check_header(header, max_duration)
    except Exception as e:  # noqa: BLE001 - any failure of one file is its row's error, never the job's
        return {"path": path, "audio": b"", "error": one_line(e)}
    if header.duration is None:
        return decode_input(path, max_duration)
    return {"path": path, "audio": None, "duration": header.duration, "error": None}


def transcribe_rows(runtime: Any, decoded: Sequence[dict[str, Any]], options: dict[str, Any],
                    words: bool) -> list[dict[str, Any]]:
    """Rows for decoded or inspected inputs (decode_input's / inspect_input's dicts), in their order. options:
    runtime keyword options (checked already: an option error here is every file's, so it is raised, not written)."""
    rows: list[dict[str, Any] | None] = [None] * len(decoded)
    audios: list[Any] = []
    durations, where = [], []
    for i, item in enumerate(decoded):
        if item["error"] is not None:
            rows[i] = error_row(item["path"], item["error"], None, words)
        elif item["audio"] is None:  # inspect_input's: the runtime reads the file itself
            audios.append(item["path"])
            durations.append(item["duration"])
            where.append(i)
        else:
            audios.append(np.frombuffer(item["audio"], np.float32))
            durations.append(len(audios[-1]) / SAMPLE_RATE)
            where.append(i)
    if audios:
        for index, outcome in runtime.transcribe_iter(audios, **options):
            i = where[index]
            duration = durations[index]
            if outcome.ok:
                rows[i] = result_row(decoded[i]["path"], outcome.result, duration, words)
            else:
                rows[i] = error_row(decoded[i]["path"], one_line(outcome.error), duration, words)
    return rows  # type: ignore[return-value]


def error_row(path: str, error: str, duration: float | None, words: bool) -> dict[str, Any]:
    row = dict.fromkeys(output_fields(words))
    row.update(path=path, duration=duration, error=error)
    return row


def result_row(path: str, result: Any, duration: float, words: bool) -> dict[str, Any]:
    """segments: openai-whisper's segment fields as a JSON list (words left out: they have their own column);
    words: every word of every segment, in order, as a JSON list."""
    segments = [asdict(segment) for segment in result.segments]
    found = [word for segment in segments for word in (segment.pop("words", None) or [])]
    row = {"path": path, "text": result.text, "language": result.language, "duration": duration,
           "segments": json.dumps(segments, ensure_ascii=False), "error": None}
    if words:
        row["words"] = json.dumps(found, ensure_ascii=False)
    return {name: row[name] for name in output_fields(words)}
