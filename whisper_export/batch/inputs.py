"""The inputs of a batch run, as absolute paths (symlinks kept: each name is an input of its own), in a stable order.

INPUTS is one of:
- a directory: every file under it (recursively) whose extension is in AUDIO_EXTENSIONS, sorted;
- a JSONL file (extension .jsonl/.ndjson, or a first non-blank line starting with "{"): one JSON object per line
  with a "path" string;
- a text file: one path per line (blank lines and lines starting with "#" skipped).
Relative paths in a list are relative to the list file's directory, so a rerun from another directory names the
same inputs. A path listed twice is one input. A listed file that is missing is not an error here: it becomes its
own error row, as a corrupt file does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff",
                              ".wma", ".webm", ".mp4", ".mkv", ".mov"})
JSONL_EXTENSIONS = frozenset({".jsonl", ".ndjson"})


def list_inputs(inputs: str | os.PathLike[str]) -> list[str]:
    """The input paths; ValueError naming INPUTS (and the line) for anything that is not one of the three forms."""
    source = Path(inputs)
    if source.is_dir():
        return _unique(_audio_under(source))
    if not source.is_file():
        what = "which is neither a directory nor a regular file" if os.path.lexists(source) else "which does not exist"
        raise ValueError(f"INPUTS: received {str(source)!r}, {what}; expected a directory of audio, "
                         "a text file of paths or a JSONL file with a 'path' field")
    if source.suffix.lower() in AUDIO_EXTENSIONS:
        raise ValueError(f"INPUTS: received the audio file {str(source)!r}, expected a directory of audio, a text "
                         "file of paths or a JSONL file (for one file: whisper-export transcribe)")
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"INPUTS: received {str(source)!r}, which is not UTF-8 text; expected a text file of "
                         "paths or a JSONL file") from None
    base = source.resolve().parent
    jsonl = source.suffix.lower() in JSONL_EXTENSIONS or next(
        (line.lstrip().startswith("{") for line in lines if line.strip()), False)
    paths = _from_jsonl(source, lines) if jsonl else _from_text(lines)
    return _unique(os.path.abspath(base / p) for p in paths)


def _audio_under(directory: Path) -> list[str]:
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        found.extend(os.path.abspath(os.path.join(root, name)) for name in sorted(files)
                     if Path(name).suffix.lower() in AUDIO_EXTENSIONS)
    return found


def _from_text(lines: list[str]) -> list[str]:
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _from_jsonl(source: Path, lines: list[str]) -> list[str]:
    paths = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"INPUTS {source}, line {number}: received invalid JSON ({e.msg}), expected an object "
                             "with a 'path' string") from None
        path = record.get("path") if isinstance(record, dict) else None
        if not isinstance(path, str) or not path.strip():
            shown = line.strip() if len(line.strip()) <= 80 else line.strip()[:77] + "..."
            raise ValueError(f"INPUTS {source}, line {number}: received {shown}, expected an object with a "
                             "non-empty 'path' string")
        paths.append(path)
    return paths


def _unique(paths) -> list[str]:
    return list(dict.fromkeys(paths))
