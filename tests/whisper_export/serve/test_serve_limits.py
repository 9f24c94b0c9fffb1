"""Bad requests and limits through the official OpenAI client: 401, 400, 413, 429 in OpenAI's error shape, each
followed by a good request (the server keeps serving); a client that disconnects has its transcription
cancelled."""

from __future__ import annotations

import io
import json
import socket
import threading

import httpx
import numpy as np
import openai
import pytest
import soundfile
from serve_helpers import client, metric, running, wait_for

KEY = "sk-test-0123456789"


def ask(url: str, data: bytes, name: str = "clip.wav", key: str = KEY, **fields):
    return client(url, api_key=key).audio.transcriptions.create(file=(name, data), model="whisper-1", **fields)


def refused(url: str, data: bytes, status: int, name: str = "clip.wav", key: str = KEY, **fields) -> dict:
    """The error object of a request that must fail with this status."""
    with pytest.raises(openai.APIStatusError) as caught:
        ask(url, data, name, key, **fields)
    assert caught.value.status_code == status, caught.value
    error = caught.value.body
    assert set(error) == {"message", "type", "param", "code"} and "\n" not in error["message"]
    return error


def wav(seconds: float, container: str = "WAV") -> bytes:
    """Silence (a FLAC of it is a few KB whatever its length)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(int(seconds * 16000), np.float32), 16000, format=container, subtype="PCM_16")
    return buffer.getvalue()


def test_bad_requests_get_openais_errors_and_the_server_keeps_serving(runtime, clips):
    good = clips["en_fox.wav"]["path"].read_bytes()
    with running(runtime, api_key=KEY, max_upload_mb=0.5, max_duration=30.0) as url:
        expected = ask(url, good).text
        assert "lazy dog" in expected

        cases = [
            (dict(data=good, key="sk-wrong"), 401, None, "invalid_api_key"),
            (dict(data=b"this is not audio at all" * 40, name="notes.txt"), 400, "file", "invalid_audio"),
            (dict(data=b""), 400, "file", "invalid_audio"),
            (dict(data=wav(31.0, "FLAC"), name="quiet.flac"), 400, "file", "audio_too_long"),  # 31 s in 4 KB
            (dict(data=wav(16.0)), 413, "file", "file_too_large"),  # 0.51 MB
            (dict(data=good, response_format="docx"), 400, "response_format", "invalid_value"),
            (dict(data=good, language="xx"), 400, "language", "invalid_value"),
            (dict(data=good, temperature=1.5), 400, "temperature", "invalid_value"),
            (dict(data=good, timestamp_granularities=["segment"]), 400, "timestamp_granularities", "invalid_value"),
        ]
        for fields, status, param, code in cases:
            error = refused(url, **fields, status=status)
            assert error["param"] == param, (fields.get("name"), error)
            if code is not None:
                assert error["code"] == code, error
            assert ask(url, good).text == expected  # still serving, and the same

        no_key = httpx.post(url + "/v1/audio/transcriptions", files={"file": ("clip.wav", good)})
        assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
        assert "no API key" in no_key.json()["error"]["message"]
        wrong_key = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong_key.status_code == 401 and wrong_key.json()["error"]["code"] == "invalid_api_key"
        assert ask(url, good).text == expected
        assert httpx.get(url + "/health").status_code == 200  # health and metrics need no key
        assert metric(url, "whisper_export_requests_total", endpoint="transcriptions", status="413") == 1


def test_an_upload_without_a_length_is_cut_at_the_limit(runtime, clips):
    """A chunked body (no Content-Length to check first) is refused once it passes --max-upload-mb."""
    good = clips["en_fox.wav"]["path"].read_bytes()
    with running(runtime, max_upload_mb=0.2) as url:
        request = httpx.Request("POST", url + "/v1/audio/transcriptions",
                                files={"file": ("big.wav", wav(10.0))}, data={"model": "whisper-1"})
        body, content_type = request.read(), request.headers["content-type"]
        chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
        answer = httpx.post(url + "/v1/audio/transcriptions", content=chunks, headers={"content-type": content_type})
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "file_too_large"
        assert ask(url, good, key="unused").text


def test_a_full_queue_answers_429_with_retry_after(runtime, clips, medium_wav):
    good = clips["en_fox.wav"]["path"].read_bytes()
    with running(runtime, max_queue=1) as url:
        first: dict = {}
        thread = threading.Thread(target=lambda: first.update(answer=ask(url, medium_wav.read_bytes(), key="x")))
        thread.start()
        wait_for(lambda: metric(url, "whisper_export_requests_in_flight") == 1, what="the long request")
        with pytest.raises(openai.RateLimitError) as caught:
            ask(url, good, key="x")
        assert caught.value.status_code == 429 and caught.value.body["code"] == "queue_full"
        assert int(caught.value.response.headers["retry-after"]) >= 1
        thread.join(600)
        assert "sunny and warm" in first["answer"].text
        assert "lazy dog" in ask(url, good, key="x").text.lower()  # room again


def test_a_client_that_disconnects_has_its_transcription_cancelled(runtime, long_wav, clips):
    with running(runtime) as url:
        request = httpx.Request("POST", url + "/v1/audio/transcriptions",
                                files={"file": ("long.wav", long_wav.read_bytes())}, data={"model": "whisper-1"})
        host, port = url.removeprefix("http://").split(":")
        raw = b"".join([f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\n".encode(),
                        *(f"{k}: {v}\r\n".encode() for k, v in request.headers.items() if k != "host"),
                        b"\r\n", request.read()])
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(raw)
            wait_for(lambda: metric(url, "whisper_export_batch_windows") >= 1, what="its windows in the batcher")
        # the client is gone while its audio is being decoded: its windows leave the batcher
        wait_for(lambda: metric(url, "whisper_export_requests_total", status="499") == 1, timeout=30,
                 what="the request to be counted as abandoned")
        assert metric(url, "whisper_export_requests_total", status="200") == 0
        assert metric(url, "whisper_export_transcriptions_cancelled_total") == 1  # before its result was in
        wait_for(lambda: metric(url, "whisper_export_transcriptions_pending") == 0
                 and metric(url, "whisper_export_batch_windows") == 0, timeout=30, what="the batcher to empty")
        good = clips["en_fox.wav"]["path"].read_bytes()
        assert "lazy dog" in ask(url, good, key="x").text.lower()


def _raw_request(url: str, path, cut: float) -> tuple[str, int, bytes]:
    """(host, port, the first `cut` of a whole multipart request for the audio at path, as bytes)."""
    request = httpx.Request("POST", url + "/v1/audio/transcriptions", files={"file": ("clip.wav", path.read_bytes())},
                            data={"model": "whisper-1"})
    host, port = url.removeprefix("http://").split(":")
    raw = b"".join([f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\n".encode(),
                    *(f"{k}: {v}\r\n".encode() for k, v in request.headers.items() if k != "host"),
                    b"\r\n", request.read()])
    return host, int(port), raw[: int(len(raw) * cut)]


def test_an_upload_that_stalls_is_answered_408_and_gives_its_place_back(runtime, clips):
    """A client that sends half its body and stops holds a place of --max-queue only until --upload-timeout:
    then it reads a 408 in OpenAI's shape and the connection closes; the place is free again."""
    clip = clips["en_fox.wav"]["path"]
    with running(runtime, max_queue=1, upload_timeout=1.0) as url:
        host, port, half = _raw_request(url, clip, 0.5)
        with socket.create_connection((host, port)) as stalled:
            stalled.sendall(half)
            wait_for(lambda: metric(url, "whisper_export_requests_in_flight") == 1, what="the stalled upload taken")
            with pytest.raises(openai.RateLimitError):  # its place is held while it may still arrive
                ask(url, clip.read_bytes(), key="x")
            stalled.settimeout(30)
            answer = b""
            while chunk := stalled.recv(65536):  # the server closes the connection after its answer
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), head
        assert json.loads(body)["error"]["code"] == "upload_timeout"
        assert metric(url, "whisper_export_requests_total", status="408") == 1
        assert "lazy dog" in ask(url, clip.read_bytes(), key="x").text.lower()
