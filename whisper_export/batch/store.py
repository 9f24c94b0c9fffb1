"""The output directory of a batch run: Parquet part files, each written atomically (atomic.py), so a run that is
killed leaves only complete parts, and a rerun with the same directory skips every path a part already holds.

Parts are named part-NNNNNN.parquet, numbered on from the highest present, by one run at a time (a lock file;
a second run on the same directory is refused). A path is written once per run and skipped by later runs, so it
has one row; read_output still keeps one row per path (the last part's) whatever else wrote there.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from whisper_export.atomic import atomic_writer
from whisper_export.batch.rows import output_fields

PART = re.compile(r"part-(\d{6,})\.parquet")
LOCK_NAME = ".whisper-export-batch.lock"
_TYPES = {"path": pa.string(), "text": pa.string(), "language": pa.string(), "duration": pa.float64(),
          "segments": pa.string(), "words": pa.string(), "error": pa.string()}


def schema(words: bool) -> pa.Schema:
    return pa.schema([pa.field(name, _TYPES[name], nullable=name != "path") for name in output_fields(words)])


def part_files(out: str | os.PathLike[str]) -> list[Path]:
    """The complete parts under out, in the order they were written."""
    found = [(int(m.group(1)), p) for p in Path(out).iterdir() if (m := PART.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def read_output(out: str | os.PathLike[str]) -> pa.Table:
    """Every row under out, one per path (the one written last), in the order written."""
    parts = part_files(out)
    if not parts:
        return schema(False).empty_table()
    table = pa.concat_tables([_read(p) for p in parts], promote_options="default")
    last = {path: i for i, path in enumerate(table.column("path").to_pylist())}
    return table.take(sorted(last.values()))


def _read(part: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(part, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(part, e) from None


def _unreadable(part: Path, error: Exception) -> ValueError:
    reason = " ".join(str(error).split())
    return ValueError(f"--out: received {str(part)!r}, which is not readable Parquet ({reason}); expected only this "
                      "command's part files there (move it away)")


class PartStore:
    """The part files of one run (open it with `with`: it holds the directory's lock)."""

    def __init__(self, out: str | os.PathLike[str], *, words: bool):
        self.out = Path(out)
        self.words = words
        self.schema = schema(words)
        self._lock_fd: int | None = None
        self._next = 0

    def __enter__(self) -> "PartStore":
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:  # a bad --out (exit 2, as transcribe's --output-dir), found before any work
            raise ValueError(f"--out {self.out}: cannot write there ({e.strerror or e}), expected a writable "
                             "directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(f"--out {self.out}: received a directory another batch run is writing to (its lock is "
                             "held), expected one run per output directory at a time") from None
        self._lock_fd = fd
        parts = part_files(self.out)
        self._next = int(PART.fullmatch(parts[-1].name).group(1)) + 1 if parts else 0  # type: ignore[union-attr]
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def written(self) -> set[str]:
        """The paths the parts already hold; ValueError when they were written with or without words unlike
        this run (one directory holds one kind of row)."""
        paths: set[str] = set()
        for part in part_files(self.out):
            try:
                names = pq.read_schema(part).names if part.stat().st_size else []
            except (OSError, pa.ArrowException) as e:
                raise _unreadable(part, e) from None
            if ("words" in names) != self.words:
                had = "with" if "words" in names else "without"
                raise ValueError(f"--out {self.out}: received a directory of rows written {had} word timestamps "
                                 f"({part.name}), expected the same as this run's; use another --out")
            paths.update(_read(part, ["path"]).column("path").to_pylist())
        return paths

    def write(self, rows: list[dict[str, Any]]) -> Path:
        """One new part holding rows, complete or not at all."""
        assert self._lock_fd is not None, "open the PartStore with `with` first"
        table = pa.Table.from_pylist(rows, schema=self.schema)
        path = self.out / f"part-{self._next:06d}.parquet"
        try:
            with atomic_writer(path, binary=True) as f:
                pq.write_table(table, f)
        except OSError as e:  # a full disk: the part is not written, the earlier ones are kept
            raise OSError(f"--out {self.out}: cannot write {path.name} ({e.strerror or e}); the parts written "
                          "before are kept: free space and rerun to resume") from None
        self._next += 1
        return path
