"""What a server is started with: where it listens, its limits, its key, and the decoding defaults of every request."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from whisper_export.runtime.options import DEFAULT_TEMPERATURE_INCREMENT, split_options

# OpenAI's own upload limit for /v1/audio/* (25 MB)
DEFAULT_MAX_UPLOAD_MB = 25.0
# seconds of audio per request at most: an hour of speech holds one slot of the batcher for minutes on a GPU
DEFAULT_MAX_DURATION = 3600.0
# requests admitted (upload being decoded, or waiting for or in the batcher) at most; more get 429
DEFAULT_MAX_QUEUE = 64
# seconds a request's body may go without a byte arriving (nginx's client_body_timeout has the same sense): an
# admitted upload holds a place of --max-queue, so a client that stalls must not hold it, or stop a shutdown
DEFAULT_UPLOAD_TIMEOUT = 30.0
# fields a request sets itself (task: the endpoint; language, prompt, temperature: form fields; word timestamps:
# timestamp_granularities[]) or the server sets for all (batch_size, max_duration): never server-wide defaults
PER_REQUEST_FIELDS = frozenset({"task", "language", "initial_prompt", "temperature", "word_timestamps",
                                "batch_size", "max_duration", "clip_timestamps", "prompt"})


def _positive(name: str, value: Any, kind: type = float) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok or (kind is int and not isinstance(value, int)):
        expected = "an int >= 1" if kind is int else "a finite number > 0"
        raise ValueError(f"{name}: received {value!r}, expected {expected}")


@dataclass(frozen=True)
class ServeSettings:
    """host/port: where to listen (port 0: any free port); batch_size: windows decoded together;
    max_upload_mb: largest upload (413 beyond); max_duration: seconds of audio per request (400 beyond);
    max_queue: requests admitted at once (429 beyond); upload_timeout: seconds an upload may go without a byte
    (408 beyond); api_key: None (open) or the Bearer key every /v1 request
    must carry (401 otherwise); model_id: the name /v1/models lists; defaults: DecodingOptions and
    TranscribeOptions keywords every request starts from (the fields a request sets itself excluded);
    temperature_increment: a request's `temperature` t becomes the fallback schedule t, t + increment, ... 1.0
    (None: t alone)."""

    model_id: str
    host: str = "127.0.0.1"
    port: int = 8000
    batch_size: int = 8
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_duration: float = DEFAULT_MAX_DURATION
    max_queue: int = DEFAULT_MAX_QUEUE
    upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT
    api_key: str | None = field(default=None, repr=False)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    temperature_increment: float | None = DEFAULT_TEMPERATURE_INCREMENT

    def __post_init__(self) -> None:
        self._verify()

    def _verify(self) -> None:
        if not isinstance(self.model_id, str) or not self.model_id.strip():
            raise ValueError(f"model_id: received {self.model_id!r}, expected a non-empty name")
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host: received {self.host!r}, expected an address such as 127.0.0.1 or 0.0.0.0")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port: received {self.port!r}, expected an int from 0 (any free port) to 65535")
        _positive("batch_size", self.batch_size, int)
        _positive("max_upload_mb", self.max_upload_mb)
        _positive("max_duration", self.max_duration)
        _positive("max_queue", self.max_queue, int)
        _positive("upload_timeout", self.upload_timeout)
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise ValueError("api_key: received an empty key, expected a non-empty string or none at all")
        if self.temperature_increment is not None:
            _positive("temperature_increment_on_fallback", self.temperature_increment)
        clash = sorted(PER_REQUEST_FIELDS & set(self.defaults))
        if clash:
            raise ValueError(f"defaults: received {clash}, expected none of the fields a request or the server's "
                             "own settings decide")
        split_options(dict(self.defaults))  # unknown names and impossible values fail here, at startup

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)
