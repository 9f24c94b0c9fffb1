"""The server's app deployed on Ray Serve (the session's local cluster) answers the official OpenAI client as the
single server does: the transcript of WhisperRuntime.transcribe, the API key enforced, the model listed."""

from __future__ import annotations

import socket

import openai
import pytest

from whisper_export.runtime import WhisperRuntime
from whisper_export.serve.settings import ServeSettings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_the_ray_serve_deployment_answers_the_openai_client(ray_cluster, tiny_bundle, clips):
    from ray import serve

    from whisper_export.serve.ray_serve import deploy, undeploy

    clip = clips["en_weather.wav"]["path"]
    with WhisperRuntime.load(tiny_bundle) as runtime:
        expected = runtime.transcribe(clip).text.strip()  # the server's defaults are transcribe()'s
    settings = ServeSettings(model_id="tiny-on-ray", host="127.0.0.1", port=_free_port(), api_key="sesame")
    url = deploy({"bundle_dir": tiny_bundle, "threads": 1}, settings, replicas=1)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0, timeout=300)
        with open(clip, "rb") as f:
            answer = client.audio.transcriptions.create(model="tiny-on-ray", file=f, response_format="verbose_json")
        assert answer.text == expected
        assert answer.language == "english"
        assert [m.id for m in client.models.list().data] == ["tiny-on-ray"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        undeploy()
        serve.shutdown()
