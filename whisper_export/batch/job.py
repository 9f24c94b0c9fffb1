"""A batch run: what it is given (BatchJob), the sink that turns rows into part files with progress on stderr, and
the run itself, in-process or on Ray (ray_job.py, imported only then).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from whisper_export.batch.rows import inspect_input, transcribe_rows
from whisper_export.batch.store import PartStore


def _positive_int(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: received {value!r}, expected {'None or ' if optional else ''}an int >= 1")


@dataclass(frozen=True)
class BatchJob:
    """out: the output directory; load: WhisperRuntime.load keywords (bundle_dir, model, backend, device, threads);
    options: the runtime's keyword options (checked); words: a `words` column (word timestamps asked for);
    files_per_batch: files handed to a runtime at once (their windows share its batch); rows_per_part: rows per
    part file at most (also written every part_seconds); ray: None (in-process), "local" (a Ray cluster on this
    machine) or a cluster address; actors: runtimes in the pool (None: one per GPU with device cuda, else the
    cluster's CPUs less one over cpus_per_actor); cpus_per_actor: CPUs (and threads) of each CPU actor."""

    out: Path
    load: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    words: bool = False
    files_per_batch: int = 16
    rows_per_part: int = 256
    part_seconds: float = 60.0
    ray: str | None = None
    actors: int | None = None
    cpus_per_actor: int = 4

    def __post_init__(self) -> None:
        self._verify()

    def _verify(self) -> None:
        _positive_int("files_per_batch", self.files_per_batch)
        _positive_int("rows_per_part", self.rows_per_part)
        _positive_int("actors", self.actors, optional=True)
        _positive_int("cpus_per_actor", self.cpus_per_actor)
        if not (isinstance(self.part_seconds, (int, float)) and math.isfinite(self.part_seconds)
                and self.part_seconds > 0):
            raise ValueError(f"part_seconds: received {self.part_seconds!r}, expected seconds > 0")
        if self.ray is not None and (not isinstance(self.ray, str) or not self.ray.strip()):
            raise ValueError(f"ray: received {self.ray!r}, expected 'local', 'auto' or an address such as "
                             "10.0.0.1:6379")

    @property
    def max_duration(self) -> float | None:
        return self.options.get("max_duration", 86400.0)


@dataclass
class Summary:
    total: int  # inputs
    skipped: int  # already written by an earlier run
    written: int = 0  # rows this run
    errors: int = 0  # of which error rows
    audio_seconds: float = 0.0  # transcribed by this run


class RowSink:
    """Rows in, part files out: each path once (a retried batch's repeat is dropped), a part every rows_per_part
    rows or part_seconds, and a progress line on stderr at most every progress_seconds."""

    def __init__(self, store: PartStore, job: BatchJob, summary: Summary, *, stream: TextIO | None = None,
                 progress_seconds: float = 5.0):
        self.store, self.job, self.summary = store, job, summary
        self.stream = stream if stream is not None else sys.stderr
        self.progress_seconds = progress_seconds
        self.seen: set[str] = set()
        self.pending: list[dict[str, Any]] = []
        self.started = self.flushed = self.shown = time.monotonic()

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row["path"] in self.seen:
                continue
            self.seen.add(row["path"])
            self.pending.append(row)
            self.summary.written += 1
            self.summary.errors += row["error"] is not None
            self.summary.audio_seconds += row["duration"] or 0.0
        while len(self.pending) >= self.job.rows_per_part:
            rows, self.pending = self.pending[:self.job.rows_per_part], self.pending[self.job.rows_per_part:]
            self.store.write(rows)
        now = time.monotonic()
        if now - self.flushed >= self.job.part_seconds:
            self.flush()
        if now - self.shown >= self.progress_seconds:
            self.progress()

    def flush(self) -> None:
        while self.pending:
            rows, self.pending = self.pending[:self.job.rows_per_part], self.pending[self.job.rows_per_part:]
            self.store.write(rows)
        self.flushed = time.monotonic()

    def progress(self, final: bool = False) -> None:
        s = self.summary
        elapsed = max(time.monotonic() - self.started, 1e-9)
        hours = s.audio_seconds / 3600
        line = (f"[batch] {s.skipped + s.written}/{s.total} rows ({s.errors} errors), {hours:.3f} h of audio in "
                f"{elapsed:.0f} s: {hours / (elapsed / 3600):.1f} audio h/h")
        try:
            print(line + (" (done)" if final else ""), file=self.stream, flush=True)
        except OSError:
            pass
        self.shown = time.monotonic()


def run_batch(paths: list[str], job: BatchJob, *, stream: TextIO | None = None,
              on_start: Callable[[Summary], None] | None = None) -> Summary:
    """Every path not already under job.out transcribed into part files there; the Summary of this run.
    A failing file is its row's error; an interruption keeps the parts written (rerun to resume)."""
    with PartStore(job.out, words=job.words) as store:
        done = store.written()
        todo = [p for p in paths if p not in done]
        summary = Summary(total=len(paths), skipped=len(paths) - len(todo))
        if on_start is not None:
            on_start(summary)
        sink = RowSink(store, job, summary, stream=stream)
        try:
            if todo and job.ray is None:
                run_in_process(todo, job, sink)
            elif todo:
                from whisper_export.batch.ray_job import run_on_ray

                run_on_ray(todo, job, sink)
        finally:
            sink.flush()  # what is done is kept, whatever stopped the run
        sink.progress(final=True)
    return summary


def run_in_process(todo: list[str], job: BatchJob, sink: RowSink) -> None:
    """The files files_per_batch at a time through one runtime in this process (Ray not imported)."""
    from whisper_export.runtime.api import WhisperRuntime

    load = dict(job.load)
    with WhisperRuntime.load(load.pop("bundle_dir", None), **load) as runtime:
        for start in range(0, len(todo), job.files_per_batch):
            # headers only: the runtime streams each file from disk, so memory does not grow with the audio
            decoded = [inspect_input(p, job.max_duration) for p in todo[start:start + job.files_per_batch]]
            sink.add(transcribe_rows(runtime, decoded, job.options, job.words))
