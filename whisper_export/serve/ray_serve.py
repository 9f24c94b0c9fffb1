"""The server's app (app.py) on Ray Serve: N replicas, each one runtime and its TranscriptionService, behind Ray
Serve's HTTP proxy; the same HTTP API, limits and key as `whisper-export serve` on one machine.

Each replica builds the app after loading its runtime (serve.ingress with __serve_build_asgi_app__), and Ray Serve
runs the app's lifespan, so a replica that stops closes its service (answering what it took) as the single server
does. Ray Serve spreads requests over replicas; each replica's batcher decodes the windows of the requests it holds
together. With device cuda each replica takes one GPU.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from whisper_export.serve.settings import ServeSettings

APP_NAME = "whisper-export"


@serve.ingress()
class WhisperReplica:
    """One runtime, its service and the app over it."""

    def __init__(self, load: dict[str, Any], settings: ServeSettings):
        from whisper_export.runtime.api import WhisperRuntime

        load = dict(load)
        self.settings = settings
        self.runtime = WhisperRuntime.load(load.pop("bundle_dir", None), **load)
        self.service = self.runtime.service(batch_size=settings.batch_size, max_pending=settings.max_queue)

    def __serve_build_asgi_app__(self):
        from whisper_export.serve.app import create_app

        return create_app(self.service, self.settings)


def replica_options(load: dict[str, Any], settings: ServeSettings, replicas: int) -> dict[str, Any]:
    """Deployment options: replicas, and each replica's resources (one GPU, or threads CPUs)."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas: received {replicas!r}, expected an int >= 1")
    if load.get("device") == "cuda":
        actor = {"num_gpus": 1, "num_cpus": 1}
    else:
        actor = {"num_cpus": load.get("threads") or 1}
    # a replica takes as many requests as its app admits (--max-queue; the app answers 429 beyond), so that they
    # wait in its batcher, decoded together, rather than in Ray Serve's queue
    return {"num_replicas": replicas, "ray_actor_options": actor, "max_ongoing_requests": settings.max_queue + 1}


def deploy(load: dict[str, Any], settings: ServeSettings, replicas: int) -> str:
    """The app deployed on the Ray this process is connected to, its HTTP proxy on settings.host:port; the URL."""
    serve.start(http_options={"host": settings.host, "port": settings.port})
    deployment = serve.deployment(WhisperReplica, name="WhisperReplica").options(
        **replica_options(load, settings, replicas))
    serve.run(deployment.bind(load, settings), name=APP_NAME, route_prefix="/", blocking=False)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{host}:{settings.port}"


def undeploy() -> None:
    serve.delete(APP_NAME)


__all__ = ["WhisperReplica", "deploy", "undeploy", "replica_options", "APP_NAME"]
