"""Servers for the serve tests: uvicorn in a thread on 127.0.0.1 (a free port) over a runtime, the official OpenAI
client pointed at them, and their /metrics."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from whisper_export.runtime import WhisperRuntime
from whisper_export.serve.server import bind, url_of, uvicorn_server
from whisper_export.serve.settings import ServeSettings


@contextmanager
def running(runtime: WhisperRuntime, **settings) -> Iterator[str]:
    """A server over runtime with these ServeSettings, in a thread; yields its base URL; stopped (drained) after."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn_server(runtime, ServeSettings(**{"model_id": "tiny", "port": 0, **settings}), log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(120)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def client(url: str, api_key: str = "unused", timeout: float = 300.0):
    """The official OpenAI client on the server, without retries (a 429 or 5xx must reach the test)."""
    return openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=timeout)


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0.0 when it has not been observed)."""
    text = httpx.get(url + "/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for(condition, timeout: float = 120.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def refused(url: str) -> bool:
    """Whether a new connection to the server's address is refused (it stopped listening)."""
    host, port = re.match(r"http://(.+):(\d+)", url).groups()
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return True
    return False
