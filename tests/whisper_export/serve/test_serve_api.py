"""OpenAI's audio API through the official `openai` client against a server on 127.0.0.1: every response format
holds what the runtime (the CLI's code) gives for the same audio and options, and the form fields reach it."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from serve_helpers import client, metric, running

from whisper_export.languages import LANGUAGES
from whisper_export.runtime.audio import load_audio
from whisper_export.runtime.options import DEFAULT_TEMPERATURES
from whisper_export.runtime.writers import to_srt, to_vtt
from whisper_export.serve.errors import APIError
from whisper_export.serve.params import request_params
from whisper_export.serve.settings import ServeSettings

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


def transcribe(url: str, path, **fields):
    with open(path, "rb") as f:
        return client(url).audio.transcriptions.create(file=(path.name, f), model="whisper-1", **fields)


def test_every_response_format_is_the_runtimes_result(runtime, clips):
    """The five formats, asked for at once (decoded together), each equal to runtime.transcribe alone."""
    path = clips["en_weather.wav"]["path"]
    want = runtime.transcribe(path)
    with running(runtime) as url, ThreadPoolExecutor(len(FORMATS)) as pool:
        answers = dict(zip(FORMATS, pool.map(lambda f: transcribe(url, path, response_format=f), FORMATS)))
    assert "sunny and warm" in want.text  # the clip's words (tests/data/clips.json), so the comparison means something
    assert answers["json"].text == want.text.strip()
    assert answers["text"] == want.text.strip() + "\n"
    assert answers["srt"] == to_srt(want) and answers["srt"].startswith("1\n00:00:00,000 --> ")
    assert answers["vtt"] == to_vtt(want) and answers["vtt"].startswith("WEBVTT\n\n00:00:00.000 --> ")
    verbose = answers["verbose_json"]
    assert (verbose.task, verbose.language, verbose.text) == ("transcribe", "english", want.text.strip())
    assert verbose.duration == pytest.approx(len(load_audio(path)) / 16000)
    got = [s.model_dump() for s in verbose.segments]
    assert got == [{k: v for k, v in dataclasses.asdict(s).items() if k in got[0]} for s in want.segments]
    assert set(got[0]) >= {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                           "compression_ratio", "no_speech_prob"}


def test_prompt_language_and_temperature_reach_the_runtime(runtime, clips):
    path = clips["en_stella.wav"]["path"]
    prompt = "Stella's shopping list."
    want = runtime.transcribe(path, initial_prompt=prompt, language="en")
    with running(runtime) as url:
        prompted = transcribe(url, path, prompt=prompt, language="en", response_format="verbose_json")
        hot = transcribe(url, path, temperature=0.6, response_format="verbose_json")
    assert [s.tokens for s in prompted.segments] == [s.tokens for s in want.segments]
    # temperature 0.6 is the schedule 0.6, 0.8, 1.0: every window was sampled at one of them
    assert hot.segments and {s.temperature for s in hot.segments} <= {0.6, 0.8, 1.0}


def test_temperature_is_openais_fallback_schedule():
    """OpenAI: temperature 0 lets the model raise it until the thresholds pass; t > 0 starts the schedule at t."""
    settings = ServeSettings(model_id="m")
    form = lambda **f: _Form(file="x", **f)  # noqa: E731
    assert request_params(form(), "transcribe", settings).options["temperature"] == DEFAULT_TEMPERATURES
    assert request_params(form(temperature="0"), "transcribe", settings).options["temperature"] == DEFAULT_TEMPERATURES
    assert request_params(form(temperature="0.5"), "transcribe", settings).options["temperature"] == (0.5, 0.7, 0.9)
    alone = ServeSettings(model_id="m", temperature_increment=None)
    assert request_params(form(temperature="0.5"), "transcribe", alone).options["temperature"] == (0.5,)


class _Form(dict):
    """A form's get/getlist (starlette's FormData) for request_params on its own."""

    def getlist(self, key):
        value = self.get(key)
        return [] if value is None else value if isinstance(value, list) else [value]


def test_translation_on_an_english_only_model_is_a_400(runtime, clips):
    with running(runtime) as url, open(clips["en_fox.wav"]["path"], "rb") as f:
        with pytest.raises(openai.APIStatusError) as caught:
            client(url).audio.translations.create(file=("fox.wav", f), model="whisper-1")
        assert caught.value.status_code == 400 and "multilingual" in caught.value.body["message"]
        assert transcribe(url, clips["en_fox.wav"]["path"]).text  # still serving


def test_translation_equals_the_runtimes(base_bundle, clips):
    from whisper_export.runtime import WhisperRuntime

    path = clips["es_parque.wav"]["path"]
    with WhisperRuntime.load(base_bundle) as rt:
        want = rt.transcribe(path, task="translate")
        with running(rt) as url, open(path, "rb") as f:
            got = client(url).audio.translations.create(file=("parque.wav", f), model="whisper-1",
                                                        response_format="verbose_json")
    assert got.task == "translate" and got.language == LANGUAGES["es"] == "spanish"
    assert got.text == want.text.strip() and "park" in got.text.lower()


def test_word_granularity(runtime, clips):
    """timestamp_granularities[]=word: OpenAI's top-level `words` ({word, start, end}, the word without its leading
    space) are the runtime's word timestamps; segments come too only when asked for."""
    path = clips["en_fox.wav"]["path"]
    want = runtime.transcribe(path, word_timestamps=True)
    with running(runtime) as url:
        both = transcribe(url, path, response_format="verbose_json", timestamp_granularities=["word", "segment"])
        words_only = transcribe(url, path, response_format="verbose_json", timestamp_granularities=["word"])
    expected = [(w.word.strip(), w.start, w.end) for s in want.segments for w in s.words]
    assert [(w.word, w.start, w.end) for w in both.words] == expected and len(expected) >= 8
    assert "lazy dog" in " ".join(w for w, _, _ in expected)  # the clip's words (tests/data/clips.json)
    assert [s.text for s in both.segments] == [s.text for s in want.segments]
    assert set(both.words[0].model_dump()) == {"word", "start", "end"}
    assert words_only.words == both.words and not words_only.segments


def test_word_granularity_needs_words_from_the_model():
    """A server whose bundle cannot time words answers word granularity with a 400 naming why, segments as usual."""
    settings = ServeSettings(model_id="m")
    form = _Form(file="x", response_format="verbose_json", **{"timestamp_granularities[]": ["word"]})
    reason = "bundle 'b' has no align.onnx"
    with pytest.raises(APIError) as caught:
        request_params(form, "transcribe", settings, words_error=reason)
    assert caught.value.status == 400 and caught.value.code == "word_timestamps_unavailable"
    assert reason in caught.value.message
    form["timestamp_granularities[]"] = ["segment"]
    assert request_params(form, "transcribe", settings, words_error=reason).granularities == ("segment",)
    assert request_params(_Form(file="x", response_format="verbose_json", **{"timestamp_granularities[]": ["word"]}),
                          "transcribe", settings).options["word_timestamps"] is True


def test_models_health_and_metrics(runtime, clips):
    path = clips["en_fox.wav"]["path"]
    with running(runtime, batch_size=3) as url:
        models = client(url).models.list()
        assert [m.id for m in models.data] == ["tiny"]
        assert httpx.get(url + "/health").json()["status"] == "ok"
        transcribe(url, path)
        transcribe(url, path, response_format="text")
        with pytest.raises(openai.APIStatusError):
            transcribe(url, path, response_format="docx")
        done = {"endpoint": "transcriptions"}
        assert metric(url, "whisper_export_requests_total", status="200", **done) == 2
        assert metric(url, "whisper_export_requests_total", status="400", **done) == 1
        assert metric(url, "whisper_export_request_seconds_count", **done) == 3
        assert metric(url, "whisper_export_audio_seconds_total", **done) == pytest.approx(
            2 * len(load_audio(path)) / 16000)
        assert metric(url, "whisper_export_batch_max_windows") == 3
        assert metric(url, "whisper_export_requests_in_flight") == 0
        assert metric(url, "whisper_export_transcriptions_pending") == 0
        error = httpx.get(url + "/v1/nothing").json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert json.loads(httpx.post(url + "/v1/audio/transcriptions").text)["error"]["param"] == "file"


def test_a_huge_bad_field_is_not_echoed_back_whole():
    """A 1 MB language or response_format answers a 400 of at most a few hundred characters, still saying what
    was received and what is expected."""
    huge = "x" * (1 << 20)
    error = APIError(400, f"response_format: received {huge!r}, expected one of json, text, srt, verbose_json, vtt")
    body = json.loads(error.response().body)["error"]["message"]
    assert len(body) <= 600 and body.startswith("response_format: received 'xxx") and body.endswith("vtt")
