"""`whisper-export serve` as a user runs it: a subprocess whose answers equal `whisper-export transcribe`'s files
for the same options, that drains and exits 0 on SIGTERM; bad options fail in one line before anything loads."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading

import httpx
import pytest
from serve_helpers import client, metric, refused, wait_for
from typer.testing import CliRunner

import cli

KEY = "sk-from-the-environment"

def _start(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, list[str]]:
    """The server process, its URL (read from its first line) and its stderr lines (collected by a thread)."""
    exe = shutil.which("whisper-export")
    assert exe, "the whisper-export console script is not installed (pip install -e .)"
    process = subprocess.Popen([exe, "serve", "--port", "0", *args], stderr=subprocess.PIPE, text=True,
                               stdout=subprocess.DEVNULL, env=env)
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            if "[serve]" in line and " on http://" in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(300):
        process.kill()
        pytest.fail("the server printed no address:\n" + "".join(lines))
    url = re.search(r" on (http://\S+)", next(line for line in lines if " on http://" in line)).group(1)
    wait_for(lambda: _healthy(url), timeout=300, what="the server's /health")
    return process, url, lines


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_answers_as_the_cli_and_drains_on_sigterm(tiny_bundle, clips, medium_wav, tmp_path):
    clip = clips["en_weather.wav"]["path"]
    cli_run = subprocess.Popen([shutil.which("whisper-export"), "transcribe", str(clip), "--bundle", str(tiny_bundle),
                                "-f", "srt", "-o", str(tmp_path)], stderr=subprocess.PIPE, text=True)
    # transcribe's command-line defaults (openai-whisper's CLI) given to the server, whose own are greedy
    process, url, lines = _start("--bundle", str(tiny_bundle), "--beam-size", "5", "--best-of", "5",
                                 env={**os.environ, "WHISPER_EXPORT_API_KEY": KEY})
    try:
        assert httpx.get(url + "/v1/models").status_code == 401  # the key from the environment is required
        assert [m.id for m in client(url, api_key=KEY).models.list().data] == [tiny_bundle.name]
        with open(clip, "rb") as f:
            srt = client(url, api_key=KEY).audio.transcriptions.create(file=("w.wav", f), model="whisper-1", response_format="srt")
        assert cli_run.wait(300) == 0, cli_run.stderr.read()
        assert srt == (tmp_path / "en_weather.srt").read_text() and "sunny and warm" in srt

        answer: dict = {}

        def long_request() -> None:
            with open(medium_wav, "rb") as f:
                answer["text"] = client(url, api_key=KEY).audio.transcriptions.create(file=("m.wav", f), model="whisper-1").text

        request = threading.Thread(target=long_request)
        request.start()
        wait_for(lambda: metric(url, "whisper_export_transcriptions_pending") == 1, what="the request in the service")
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(url), timeout=30, what="the server to stop listening")
        assert request.is_alive(), "the request was done before the stop: nothing was drained"
        assert process.wait(300) == 0, "".join(lines)
        request.join(60)
        assert "sunny and warm" in answer["text"]  # answered after the stop began
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in "".join(lines)


def _stalled_upload(url: str) -> socket.socket:
    """A connection that sent its headers and part of a multipart body, then nothing more."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=60)
    part = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n" + b"\0" * 1000)
    sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                 b"Content-Type: multipart/form-data; boundary=B\r\n\r\n" + part)
    return sock


def test_a_second_interrupt_stops_at_once_with_503s_and_exit_130(tiny_bundle, long_wav):
    """Ctrl-C drains; Ctrl-C again stops now: the request being transcribed and one whose upload is still being
    read both get a 503 in OpenAI's shape (not a bare 500), nothing is printed as a failure, and the exit status
    says it was interrupted."""
    process, url, lines = _start("--bundle", str(tiny_bundle), "--threads", "1")
    answer: dict = {}

    def long_request() -> None:
        response = httpx.post(url + "/v1/audio/transcriptions", files={"file": ("long.wav", long_wav.read_bytes())},
                              data={"model": "whisper-1"}, timeout=300)
        answer.update(status=response.status_code, body=response.json())

    request = threading.Thread(target=long_request)
    try:
        request.start()
        wait_for(lambda: metric(url, "whisper_export_transcriptions_pending") == 1, what="the request in the service")
        stalled = _stalled_upload(url)
        wait_for(lambda: metric(url, "whisper_export_requests_in_flight") == 2, what="the stalled upload in flight")
        process.send_signal(signal.SIGINT)
        wait_for(lambda: refused(url), timeout=30, what="the server to stop listening")
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 130, "".join(lines)
        request.join(60)
        head = stalled.recv(4096).decode()
    finally:
        if process.poll() is None:
            process.kill()
    assert answer["status"] == 503 and answer["body"]["error"]["code"] == "shutting_down", answer
    assert head.startswith("HTTP/1.1 503") and '"code":"shutting_down"' in head, head
    assert "Traceback" not in "".join(lines) and "stopped at once" in "".join(lines)


runner = CliRunner()


@pytest.mark.parametrize("args, fragment", [
    (["--max-queue", "0"], "--max-queue: received 0, expected an int >= 1"),
    (["--port", "http"], "--port: received 'http', expected an int"),
    (["--port", "70000"], "--port: received 70000, expected an int from 0"),
    (["--max-upload-mb", "-1"], "--max-upload-mb: received -1.0, expected a finite number > 0"),
    (["--upload-timeout", "0"], "--upload-timeout: received 0.0, expected a finite number > 0"),
    (["--beam-size", "99"], "--beam-size: received 99, expected at most 15"),
    (["--device", "tpu"], "--device: received 'tpu', expected cpu or cuda"),
    (["--api-key", " "], "--api-key: received an empty key"),
])
def test_bad_options_fail_in_one_line_before_loading(tmp_path, args, fragment):
    result = runner.invoke(cli.app, ["serve", "--bundle", str(tmp_path / "absent"), *args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and fragment in errors[0], result.stderr


def test_an_address_in_use_is_exit_1(tiny_bundle):
    from whisper_export.serve.server import bind

    with bind("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        result = runner.invoke(cli.app, ["serve", "--bundle", str(tiny_bundle), "--port", str(port)])
    assert result.exit_code == 1 and f"--port {port}: cannot listen there" in result.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--suppress-tokens", "999999"], "--suppress-tokens: received 999999, expected token ids below"),
    (["--prefix", " word" * 300], "--prefix: received 300 tokens, expected at most"),
])
def test_defaults_the_model_cannot_decode_with_fail_at_startup(tiny_bundle, args, fragment):
    """Values only the loaded model can judge stop the server before it listens (not a 500 on every request)."""
    result = runner.invoke(cli.app, ["serve", "--bundle", str(tiny_bundle), "--port", "0", *args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
