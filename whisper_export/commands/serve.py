"""`whisper-export serve`: OpenAI's audio API over one model (cli.py registers `serve` as a command).

The decoding options every request starts from are options of their own, made from the same dataclass fields as
the transcribe command's (field_options.py), so a request and `whisper-export transcribe` with the same options
give the same text; the fields a request sets itself (language, prompt, temperature, the task) and the server's
own settings (--batch-size, --max-duration) are left out. Their defaults are the dataclasses' (openai-whisper's
transcribe() defaults, as WhisperRuntime.transcribe: greedy decoding), not transcribe's command-line ones
(openai-whisper's CLI: --beam-size 5 --best-of 5): a request maps to a transcribe() call, and on a CPU the
continuous batcher gains from decoding greedy windows together (benchmarks/serve_load.py; NOTES.md).

With --ray the same app runs on Ray Serve (serve/ray_serve.py): --replicas runtimes behind Ray Serve's proxy on
--host/--port; SIGTERM or SIGINT deletes the deployment.

Exit codes: 0 stopped by SIGTERM or SIGINT after answering every request it took; 1 the bundle could not be loaded
or the address could not be bound (with --ray: the deployment failed); 2 invalid options (before anything is
loaded).
"""

from __future__ import annotations

import inspect
import signal
import sys
import threading
from dataclasses import fields, replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from whisper_export.commands.field_options import FieldOption, command_signature, field_options
from whisper_export.commands.transcribe import _checked_model, _load_runtime, _number
from whisper_export.commands.transcribe_output import error
from whisper_export.runtime.options import DEFAULT_TEMPERATURE_INCREMENT, DecodingOptions, TranscribeOptions
from whisper_export.serve.settings import (
    DEFAULT_MAX_DURATION,
    DEFAULT_MAX_QUEUE,
    DEFAULT_UPLOAD_TIMEOUT,
    DEFAULT_MAX_UPLOAD_MB,
    PER_REQUEST_FIELDS,
    ServeSettings,
)

_FIELDS = {f.name: f for cls in (DecodingOptions, TranscribeOptions) for f in fields(cls)}
OPTIONS: list[FieldOption] = [replace(o, default=_FIELDS[o.name].default)
                              for o in (*field_options(DecodingOptions), *field_options(TranscribeOptions))
                              if o.name not in PER_REQUEST_FIELDS]
API_KEY_ENV = "WHISPER_EXPORT_API_KEY"


def _explicit(
    bundle: Annotated[Optional[Path], typer.Option("--bundle", "-b", help="exported bundle directory")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="checkpoint (name or path) when no --bundle: exported once into ~/.cache/whisper-export; default tiny.en")] = None,
    backend: Annotated[str, typer.Option(help="onnxruntime, tensorrt (a bundle with engines) or torch (a checkpoint)")] = "onnxruntime",
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    threads: Annotated[Optional[str], typer.Option(metavar="INT", help="CPU threads, at most the logical CPUs (default: physical cores)")] = None,
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[str, typer.Option(metavar="INT", help="port to listen on (0: any free port, printed on start)")] = "8000",
    batch_size: Annotated[str, typer.Option("--batch-size", metavar="INT", help="30 s windows decoded together, from all requests")] = "8",
    max_upload_mb: Annotated[str, typer.Option("--max-upload-mb", metavar="FLOAT", help="largest upload in MB (10^6 bytes); larger: 413")] = f"{DEFAULT_MAX_UPLOAD_MB:g}",
    max_duration: Annotated[str, typer.Option("--max-duration", metavar="FLOAT", help="seconds of audio per request at most; longer: 400")] = f"{DEFAULT_MAX_DURATION:g}",
    max_queue: Annotated[str, typer.Option("--max-queue", metavar="INT", help="requests taken at once (decoding or waiting); more: 429 with Retry-After")] = str(DEFAULT_MAX_QUEUE),
    upload_timeout: Annotated[str, typer.Option("--upload-timeout", metavar="FLOAT", help="seconds an upload may go without a byte arriving; then 408 and the connection closed")] = f"{DEFAULT_UPLOAD_TIMEOUT:g}",
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar=API_KEY_ENV, show_envvar=True, help="the key every /v1 request must send as 'Authorization: Bearer KEY' (401 otherwise); default: none needed")] = None,
    model_id: Annotated[Optional[str], typer.Option("--model-id", help="the model's name in /v1/models (default: the bundle directory's or the model's name); requests may name any model")] = None,
    temperature_increment_on_fallback: Annotated[Optional[str], typer.Option(
        "--temperature-increment-on-fallback", metavar="FLOAT|None", show_default=True,
        help="a request's temperature t is the fallback schedule t, t + this, ... up to 1.0; None: t alone",
    )] = str(DEFAULT_TEMPERATURE_INCREMENT),
    ray: Annotated[Optional[str], typer.Option("--ray", metavar="ADDRESS|local", help="serve on a Ray cluster with Ray Serve (its address, auto, or local: start one here); --host/--port are then its HTTP proxy's")] = None,
    replicas: Annotated[Optional[str], typer.Option(metavar="INT", help="with --ray: replicas, each one runtime (one GPU each with --device cuda); default 1")] = None,
) -> None:
    """Only the signature is used: the options of `serve` that are not options-dataclass fields."""


def serve(**params: Any) -> None:
    """Serve OpenAI's audio API (/v1/audio/transcriptions, /v1/audio/translations) with one model, requests
    decoded together; SIGTERM stops taking requests, answers those taken and exits 0 (a second Ctrl-C stops at
    once: 503 for the requests in progress, exit 130)."""
    try:
        settings = _settings(params)
    except (ValueError, TypeError) as e:
        error(_as_flag(str(e)))
        raise typer.Exit(2)
    if params["ray"] is not None:
        _serve_on_ray(params, settings)
        return
    try:
        from whisper_export.serve.server import bind, serve as run
    except ImportError as e:
        error(f"serve needs the serve extra ({e.name} is missing): pip install 'whisper-export[serve]'")
        raise typer.Exit(2)
    try:
        sock = bind(settings.host, settings.port)
    except OSError as e:
        error(f"--host {settings.host} --port {settings.port}: cannot listen there ({e.strerror or e})")
        raise typer.Exit(1)
    with sock, _load_runtime(params) as runtime:
        try:  # defaults this model cannot decode with (token ids past its vocabulary, ...) stop it here
            runtime.check_options(**settings.defaults)
        except (ValueError, TypeError) as e:
            error(_as_flag(str(e)))
            raise typer.Exit(2)
        forced = run(runtime, settings, sock)
    if forced:
        raise typer.Exit(130)


serve.__signature__ = command_signature(inspect.signature(_explicit, eval_str=True), OPTIONS)  # type: ignore[attr-defined]


def _serve_on_ray(params: dict[str, Any], settings: ServeSettings) -> None:
    """The app on Ray Serve until SIGTERM/SIGINT; then the deployment is deleted (its replicas drain) and this
    returns (exit 0)."""
    try:
        import ray

        from whisper_export.serve.ray_serve import deploy, undeploy
    except ImportError as e:
        error(f"serve --ray needs the ray and serve extras ({e.name} is missing): pip install 'whisper-export[ray,serve]'")
        raise typer.Exit(2)
    load = {"bundle_dir": params["bundle"], "model": params["model"], "backend": params["backend"],
            "device": params["device"], "threads": params["threads"]}
    ray.init(address=None if params["ray"] == "local" else params["ray"], logging_level="warning")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, whose own SIGTERM handler aborts the process
        signal.signal(sig, lambda *_: stop.set())
    try:
        url = deploy(load, settings, params["replicas"])
    except Exception as e:  # noqa: BLE001 - a replica that cannot load its runtime fails the deployment
        error(f"the deployment on Ray Serve failed: {' '.join(str(e).split())[:500]}")
        ray.shutdown()
        raise typer.Exit(1)
    print(f"[serve] {settings.model_id} on {url} via Ray Serve ({params['replicas']} replica(s))",
          file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        undeploy()
        ray.shutdown()
    print("[serve] stopped", file=sys.stderr, flush=True)


def _settings(params: dict[str, Any]) -> ServeSettings:
    """The server's settings from the command line's text; ValueError naming the option otherwise."""
    defaults = {o.name: o.parse(params.pop(o.name)) for o in OPTIONS}
    _checked_model(params)  # --threads, --backend, --device, --bundle/--model: transcribe's rules
    params["replicas"] = _number("--replicas", params["replicas"], int)
    if params["ray"] is None and params["replicas"] is not None:
        raise ValueError(f"--replicas: received {params['replicas']}, expected it only with --ray")
    params["replicas"] = 1 if params["replicas"] is None else params["replicas"]
    if params["replicas"] < 1:
        raise ValueError(f"--replicas: received {params['replicas']}, expected an int >= 1")
    if params["ray"] is not None and _number("--port", params["port"], int) == 0:
        raise ValueError("--port: received 0 with --ray, expected the port Ray Serve's proxy listens on")
    bundle = params["bundle"]
    model_id = params["model_id"] or (Path(bundle).resolve().name if bundle is not None else params["model"] or "tiny.en")
    return ServeSettings(
        model_id=model_id, host=params["host"], port=_number("--port", params["port"], int),
        batch_size=_number("--batch-size", params["batch_size"], int),
        max_upload_mb=_number("--max-upload-mb", params["max_upload_mb"]),
        max_duration=_number("--max-duration", params["max_duration"]),
        max_queue=_number("--max-queue", params["max_queue"], int),
        upload_timeout=_number("--upload-timeout", params["upload_timeout"]),
        api_key=params["api_key"], defaults=defaults,
        temperature_increment=_number("--temperature-increment-on-fallback",
                                      params["temperature_increment_on_fallback"], optional=True),
    )


def _as_flag(message: str) -> str:
    """A message about a setting or a field ("max_queue: received 0, ...") names the option typed (--max-queue)."""
    name, colon, rest = message.partition(":")
    if colon and (name in {o.name for o in OPTIONS} or name in _SETTING_FLAGS):
        return f"--{name.replace('_', '-')}:{rest}"
    return message


_SETTING_FLAGS = {"host", "port", "replicas", "batch_size", "max_upload_mb", "max_duration", "max_queue",
                  "upload_timeout", "api_key", "model_id", "temperature_increment_on_fallback"}

__all__ = ["serve", "OPTIONS"]
