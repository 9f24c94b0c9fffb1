"""TensorRT's messages collected for our reports: a log file, warnings and errors to stderr, errors in memory.

Used by the engine build (engines/) and by the runner, whose deserialization errors it reports.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from whisper_export.backends.tensorrt.trt_api import selected, trt

# a warning TensorRT prints for every int64 network input; the runner binds int64, so it is only logged
BENIGN_WARNINGS = ("has Int64 binding",)



# -- logging -----------------------------------------------------------------------------------------


_LOGGER_CLASSES: dict[str, type] = {}


class BuildLog:
    """Collects one engine build's TensorRT messages: all of them to a log file, warnings and errors to
    stderr, errors and selected messages in memory (for error reports and the checks that read the log)."""

    def __init__(self, path: Path | None, stderr: IO[str] | None = None, prefix: str = "") -> None:
        self.path = path
        self.stderr = stderr if stderr is not None else sys.stderr
        self.prefix = prefix
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.layer_dumps: list[str] = []
        self.notes: list[str] = []
        self._quiet = False
        self._lock = threading.Lock()
        self._file: IO[str] | None = open(path, "a", encoding="utf-8") if path else None

    def write(self, severity: str, message: str) -> None:
        with self._lock:
            if self._file:
                self._file.write(f"[{severity}] {message}\n")
            if severity in ("ERROR", "INTERNAL_ERROR"):
                self.errors.append(message)
            elif severity == "WARNING":
                self.warnings.append(message)
            if "LayerType: " in message and "Name: " in message:
                self.layer_dumps.append(message)
            if not self._quiet and (severity in ("ERROR", "INTERNAL_ERROR") or (
                severity == "WARNING" and not any(b in message for b in BENIGN_WARNINGS)
            )):
                print(f"{self.prefix}[TensorRT {severity.lower()}] {message}", file=self.stderr, flush=True)

    def note(self, message: str) -> None:
        """A line of ours in the same log (e.g. what the timing cache did)."""
        self.notes.append(message)
        with self._lock:
            if self._file:
                self._file.write(f"[whisper-export] {message}\n")

    @contextmanager
    def capture(self, quiet: bool = False) -> Iterator[list[str]]:
        """Messages (any severity) logged inside the block; quiet: none of them reach stderr (the caller
        reports the outcome itself). Errors logged inside the block are not kept in ``errors``."""
        seen: list[str] = []
        original = self.write
        n_errors = len(self.errors)

        def tee(severity: str, message: str) -> None:
            seen.append(message)
            original(severity, message)

        self.write = tee  # type: ignore[method-assign]
        self._quiet = quiet
        try:
            yield seen
        finally:
            self.write = original  # type: ignore[method-assign]
            self._quiet = False
            del self.errors[n_errors:]

    def close(self) -> None:
        with self._lock:
            if self._file:
                self._file.close()
                self._file = None

    def trt_logger(self) -> trt.ILogger:
        """An ILogger of the selected module that forwards to this log (VERBOSE: the layer dump needs it)."""
        module = selected().name
        cls = _LOGGER_CLASSES.get(module)
        if cls is None:

            class _Logger(trt.ILogger):
                def __init__(self, sink: BuildLog) -> None:
                    trt.ILogger.__init__(self)
                    self.sink = sink

                def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
                    self.sink.write(severity.name, msg)

            cls = _LOGGER_CLASSES[module] = _Logger
        logger: trt.ILogger = cls(self)
        return logger
