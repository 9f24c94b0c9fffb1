"""A TranscriptionResult in each of OpenAI's response formats.

json: {"text", "usage"}; text: the text and a newline; srt and vtt: the CLI's renderers (runtime/writers.py), byte
for byte what `whisper-export transcribe -f srt|vtt` writes; verbose_json: OpenAI's {"task", "language" (a name,
such as "english"), "duration", "text", "segments" (openai-whisper's segment fields), "words", "usage"}, segments
and words as timestamp_granularities[] asks. `text` is the transcript without its leading space (openai-whisper's
result["text"] starts with one; OpenAI's API answers without).
"""

from __future__ import annotations

import math
from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse, Response

from whisper_export.languages import LANGUAGES
from whisper_export.runtime.transcribe import TranscriptionResult
from whisper_export.runtime.writers import to_srt, to_vtt
from whisper_export.serve.params import RequestParams

SEGMENT_FIELDS = ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                  "compression_ratio", "no_speech_prob")


def _usage(duration: float) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(duration)}


def _words(result: TranscriptionResult) -> list[dict[str, Any]]:
    """OpenAI's words: the word without openai-whisper's leading space, its start and end."""
    return [{"word": w.word.strip(), "start": w.start, "end": w.end}
            for s in result.segments for w in (getattr(s, "words", None) or [])]


def verbose_json(result: TranscriptionResult, params: RequestParams, duration: float) -> dict[str, Any]:
    body: dict[str, Any] = {"task": params.task, "language": LANGUAGES.get(result.language, result.language),
                            "duration": duration, "text": result.text.strip()}
    if "segment" in params.granularities:
        body["segments"] = [{name: getattr(s, name) for name in SEGMENT_FIELDS} for s in result.segments]
    if "word" in params.granularities:
        body["words"] = _words(result)
    body["usage"] = _usage(duration)
    return body


def render(result: TranscriptionResult, params: RequestParams, duration: float) -> Response:
    fmt = params.response_format
    if fmt == "json":
        return JSONResponse({"text": result.text.strip(), "usage": _usage(duration)})
    if fmt == "verbose_json":
        return JSONResponse(verbose_json(result, params, duration))
    if fmt == "text":
        return PlainTextResponse(result.text.strip() + "\n")
    return PlainTextResponse(to_srt(result) if fmt == "srt" else to_vtt(result))  # text/plain, as OpenAI's
