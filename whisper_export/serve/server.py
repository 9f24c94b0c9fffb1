"""Run the app with uvicorn until SIGTERM or SIGINT: then it stops accepting connections, answers every request it
took (uvicorn's graceful shutdown waits for them; an upload that stalls ends after --upload-timeout), closes the
service and returns normally (exit status 0). A second SIGINT stops it at once: the requests in progress are
answered 503 and the command exits 130.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from typing import Any

import uvicorn

from whisper_export.serve.app import create_app
from whisper_export.serve.settings import ServeSettings


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one, read back with getsockname()); OSError when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_server(runtime: Any, settings: ServeSettings, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server of the app on a new service over runtime (which the caller closes afterwards)."""
    service = runtime.service(batch_size=settings.batch_size, max_pending=settings.max_queue)
    app = create_app(service, settings)
    # timeout_graceful_shutdown None: a stop waits for every request taken, however long its audio
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=None, lifespan="on",
                            access_log=log_level == "debug")
    server = uvicorn.Server(config)
    app.state.endpoints.stopping_at_once = lambda: server.force_exit
    return server


def serve(runtime: Any, settings: ServeSettings, sock: socket.socket) -> bool:
    """Serve on sock until SIGTERM/SIGINT, then drain and return False; True when a second SIGINT stopped it at
    once (requests in progress answered 503, the service closed without draining). uvicorn raises the signal
    again once it has stopped (for a default handler to end the process); a handler that only asks the server
    to stop makes the stop a normal return (and covers a signal that comes before uvicorn installs its own)."""
    server = uvicorn_server(runtime, settings)

    def stop(*_: Any) -> None:
        server.should_exit = True

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)
    print(f"[serve] {settings.model_id} on {url_of(sock)} (batch {settings.batch_size} windows, "
          f"max queue {settings.max_queue}{', API key required' if settings.api_key else ''})",
          file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    if server.force_exit:  # the app's lifespan cancelled what was pending (app.py)
        print("[serve] stopped at once (a second interrupt): requests in progress were answered 503",
              file=sys.stderr, flush=True)
        return True
    print("[serve] stopped", file=sys.stderr, flush=True)
    return False
