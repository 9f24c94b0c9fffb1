"""A request's form fields as runtime options, by OpenAI's definitions of /v1/audio/transcriptions and /translations.

- `file` (required): the audio; `model` (any value: one model is served, /v1/models names it);
- `language` (transcriptions only; ISO-639-1 such as `en`, or a name): DecodingOptions.language; none: detected;
- `prompt`: TranscribeOptions.initial_prompt (text before the first window; later windows are prompted with the
  text so far, as openai-whisper's transcribe() does);
- `response_format`: json (default), text, srt, vtt, verbose_json;
- `temperature` in [0, 1], default 0. OpenAI documents 0 as "use the log probability to increase the
  temperature automatically until certain thresholds are hit": openai-whisper's fallback schedule. So a
  request's t is the schedule t, t + 0.2, ... up to 1.0 (the increment is the server's
  --temperature-increment-on-fallback), the same as `whisper-export transcribe --temperature t`: 0 gives
  (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), each window retried hotter while it fails the compression-ratio and
  log-probability thresholds;
- `timestamp_granularities[]`: segment (default) and/or word, with response_format verbose_json only (OpenAI's
  rule); word asks for TranscribeOptions.word_timestamps (a 400 word_timestamps_unavailable where the bundle
  has no align.onnx or the backend no align()).
Every other field (OpenAI's newer ones: stream, include, chunking_strategy, ...) is ignored, as OpenAI ignores
fields a model does not support.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from whisper_export.runtime.options import fallback_temperatures
from whisper_export.serve.errors import APIError
from whisper_export.serve.settings import ServeSettings

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")


@dataclass(frozen=True)
class RequestParams:
    """What one request asks for: the runtime options, and how to answer."""

    task: str
    options: dict[str, Any]  # TranscriptionService.submit keywords
    response_format: str
    granularities: tuple[str, ...]


def _text(form: Mapping[str, Any], name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise APIError(400, f"{name}: received a file, expected a text field", param=name, code="invalid_value")
    return value


def _temperature(form: Mapping[str, Any]) -> float:
    text = _text(form, "temperature")
    if text is None or not text.strip():
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # nan fails too
        raise APIError(400, f"temperature: received {text!r}, expected a number from 0 to 1",
                       param="temperature", code="invalid_value")
    return value


def _granularities(form: Any, response_format: str, words_error: str | None) -> tuple[str, ...]:
    given = [*form.getlist("timestamp_granularities[]"), *form.getlist("timestamp_granularities")]
    for value in given:
        if value not in GRANULARITIES:
            raise APIError(400, f"timestamp_granularities[]: received {value!r}, expected segment or word",
                           param="timestamp_granularities", code="invalid_value")
    if given and response_format != "verbose_json":
        raise APIError(400, f"timestamp_granularities[]: received {given} with response_format "
                            f"{response_format!r}, expected response_format 'verbose_json'",
                       param="timestamp_granularities", code="invalid_value")
    if "word" in given and words_error is not None:
        raise APIError(400, f"timestamp_granularities[]: received 'word', but this server cannot give word "
                            f"timestamps ({words_error}), expected 'segment'", param="timestamp_granularities",
                       code="word_timestamps_unavailable")
    return tuple(g for g in GRANULARITIES if g in given) or ("segment",)


def request_params(form: Any, task: str, settings: ServeSettings, words_error: str | None = None) -> RequestParams:
    """The options of a transcription (task 'transcribe') or translation (task 'translate') from its form (a
    starlette FormData: get and getlist); APIError 400 for a field that is not what OpenAI defines. words_error:
    why the served model cannot give word timestamps (TranscriptionLoop.words_unavailable), None when it can."""
    response_format = _text(form, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise APIError(400, f"response_format: received {response_format!r}, expected one of "
                            f"{', '.join(RESPONSE_FORMATS)}", param="response_format", code="invalid_value")
    granularities = _granularities(form, response_format, words_error)
    options: dict[str, Any] = dict(settings.defaults)
    options["task"] = task
    language = _text(form, "language") if task == "transcribe" else None
    if language and language.strip():
        options["language"] = language.strip()
    prompt = _text(form, "prompt")
    if prompt and prompt.strip():
        options["initial_prompt"] = prompt
    options["temperature"] = fallback_temperatures(_temperature(form), settings.temperature_increment)
    options["max_duration"] = settings.max_duration
    if "word" in granularities:
        options["word_timestamps"] = True
    return RequestParams(task, options, response_format, granularities)
