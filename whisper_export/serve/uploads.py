"""Uploads: the request body read within the size limit, and the audio decoded to 16 kHz float32 (in a worker
thread: it reads a file and may run ffmpeg).

The audio goes through the CLI's decoders (runtime/audio_files.py): the header is checked first (sample rate
bounds, channels, the duration against --max-duration before anything is decoded), then the file is decoded a
block at a time and stopped as soon as it runs past the limit (a header may understate the length).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from typing import IO, Any

import numpy as np

from whisper_export.runtime.audio import SAMPLE_RATE, AudioError
from whisper_export.runtime.audio_files import pcm_blocks, probe
from whisper_export.serve.errors import APIError

# the multipart framing and the text fields around the file: a body may exceed the file limit by this much
FORM_OVERHEAD_BYTES = 64 * 1024
Receive = Callable[[], Awaitable[dict[str, Any]]]


class BodyTooLarge(Exception):
    """The request body ran past its limit while being read."""


def too_large(max_upload_mb: float, received: str) -> APIError:
    return APIError(413, f"file: received {received}, expected at most {max_upload_mb:g} MB (the server's "
                         "--max-upload-mb)", param="file", code="file_too_large")


class UploadStalled(Exception):
    """No part of the request body arrived for the idle timeout."""


class LimitedReceive:
    """An ASGI receive() raising BodyTooLarge once the body passes limit bytes (a chunked upload has no length to
    check up front) and UploadStalled when nothing arrives for idle_timeout seconds; `complete` tells whether the
    body's last message was read."""

    def __init__(self, receive: Receive, limit: int, idle_timeout: float):
        self.receive, self.limit, self.idle_timeout = receive, limit, idle_timeout
        self.seen, self.complete = 0, False

    async def __call__(self) -> dict[str, Any]:
        try:
            message = await asyncio.wait_for(self.receive(), self.idle_timeout)
        except asyncio.TimeoutError:
            raise UploadStalled(f"no bytes for {self.idle_timeout:g} s") from None
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
            if self.seen > self.limit:
                raise BodyTooLarge(f"more than {self.limit} bytes")
        return message


def _suffix(filename: str | None) -> str:
    """The upload's extension, if it is a plain one (ffmpeg probes by content; this only helps it)."""
    match = re.search(r"(\.[A-Za-z0-9]{1,8})$", filename or "")
    return match.group(1).lower() if match else ""


def _named(error: AudioError, path: str, filename: str) -> AudioError:
    """The error with the upload's name where it names the server's temporary file."""
    return AudioError(str(error).replace(repr(path), repr(filename)).replace(path, filename))


def decode_upload(file: IO[bytes], filename: str | None, max_duration: float) -> np.ndarray:
    """(n_samples,) float32 at 16 kHz; APIError 400 for audio that cannot be read or is longer than max_duration."""
    name = filename or "upload"
    with tempfile.NamedTemporaryFile(prefix="whisper-export-upload-", suffix=_suffix(filename)) as copy:
        file.seek(0)
        shutil.copyfileobj(file, copy)
        copy.flush()
        try:
            return _decode(copy.name, name, max_duration)
        except AudioError as e:
            raise APIError(400, str(_named(e, copy.name, name)), param="file", code="invalid_audio") from None


def _decode(path: str, name: str, max_duration: float) -> np.ndarray:
    if os.path.getsize(path) == 0:
        raise APIError(400, f"file: received an empty file {name!r}, expected audio", param="file",
                       code="invalid_audio")
    header = probe(path)
    if header.duration is not None and header.duration > max_duration:
        raise _too_long(name, f"{header.duration:.1f} s (from its header)", max_duration)
    limit = int(max_duration * SAMPLE_RATE)
    blocks, samples = [], 0
    stream = pcm_blocks(header)
    try:
        for block in stream:
            samples += len(block)
            if samples > limit:
                raise _too_long(name, f"more than {max_duration:g} s", max_duration)
            blocks.append(block)
    finally:
        stream.close()
    if samples == 0:
        raise APIError(400, f"file: received {name!r} with no audio samples, expected at least one",
                       param="file", code="invalid_audio")
    return np.concatenate(blocks)


def _too_long(name: str, duration: str, max_duration: float) -> APIError:
    return APIError(400, f"file: received {name!r} with {duration} of audio, expected at most {max_duration:g} s "
                         "(the server's --max-duration)", param="file", code="audio_too_long")
