"""`whisper-export serve --ray ADDRESS` (a driver of its own on the session's local cluster) deploys the server's app
on Ray Serve: it answers the official OpenAI client as the single server does (the transcript of
WhisperRuntime.transcribe, the API key enforced, the model listed), and SIGTERM deletes the deployment, exit 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from whisper_export.runtime import WhisperRuntime

REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_serve_on_ray_answers_the_openai_client_and_stops_on_sigterm(ray_cluster, tiny_bundle, clips):
    from ray import serve

    clip = clips["en_weather.wav"]["path"]
    with WhisperRuntime.load(tiny_bundle) as runtime:
        expected = runtime.transcribe(clip).text.strip()  # the server's defaults are transcribe()'s
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--ray", ray_cluster, "--replicas", "1", "--bundle", str(tiny_bundle),
         "--threads", "1", "--port", str(port), "--api-key", "sesame", "--model-id", "tiny-on-ray"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("via Ray Serve" in line for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        client = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0, timeout=300)
        with open(clip, "rb") as f:
            answer = client.audio.transcriptions.create(model="tiny-on-ray", file=f, response_format="verbose_json")
        assert answer.text == expected
        assert answer.language == "english"
        assert [m.id for m in client.models.list().data] == ["tiny-on-ray"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0, "".join(lines)
        reader.join(10)
        assert "[serve] stopped" in "".join(lines)
        assert "whisper-export" not in serve.status().applications  # the deployment is gone
    finally:
        if process.poll() is None:
            process.kill()
        serve.shutdown()  # the controller and proxy: the CPUs go back to the other tests


@pytest.mark.parametrize("args, message", [
    (["--replicas", "2"], "error: --replicas: received 2, expected it only with --ray"),
    (["--ray", "local", "--replicas", "0"], "error: --replicas: received 0, expected an int >= 1"),
    (["--ray", "local", "--port", "0"], "error: --port: received 0 with --ray, expected the port Ray Serve's proxy"),
])
def test_serve_ray_options_fail_in_one_line_before_anything_starts(args, message):
    from typer.testing import CliRunner

    import cli

    result = CliRunner().invoke(cli.app, ["serve", *args])
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
