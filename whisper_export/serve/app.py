"""The ASGI app: OpenAI's audio endpoints on one TranscriptionService (runtime/service.py), so every request's
windows share the continuous batcher's slots with every other request's, and the runtime's code decodes them
(no second decoding path).

The event loop never waits on work: the upload is decoded to 16 kHz float32 in a thread pool, submitted to the
service (which decodes on its own thread) and its future awaited. A client that disconnects first has its
transcription cancelled (its windows leave the batcher at the next tick). Errors are OpenAI's shape (errors.py).
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from whisper_export.runtime.audio import SAMPLE_RATE
from whisper_export.runtime.service import QueueFull, TranscriptionService
from whisper_export.serve.errors import APIError, option_error
from whisper_export.serve.metrics import CONTENT_TYPE_LATEST, Metrics
from whisper_export.serve.params import request_params
from whisper_export.serve.responses import render
from whisper_export.serve.settings import ServeSettings
from whisper_export.serve.uploads import (
    FORM_OVERHEAD_BYTES,
    BodyTooLarge,
    LimitedReceive,
    UploadStalled,
    decode_upload,
    too_large,
)

# threads decoding uploads (file reads, resampling, ffmpeg) beside the service's decoding thread
AUDIO_THREADS = 2
# a refused request's body is read (and dropped) for at most this long, so that the client reads the answer
DISCARD_SECONDS = 10.0
# answered 499 (nginx's "client closed request") in the metrics: the client left before its answer
CLIENT_GONE = 499
# a body that stopped arriving (--upload-timeout): 408 Request Timeout, and the connection closed
STALLED = 408


class ClientGone(Exception):
    """The client disconnected before its answer."""


class _Endpoints:
    def __init__(self, service: TranscriptionService, settings: ServeSettings):
        self.service, self.settings = service, settings
        self.words_error = service.loop.words_unavailable()  # None: timestamp_granularities[]=word can be served
        self.metrics = Metrics(service)
        self.audio_pool = ThreadPoolExecutor(AUDIO_THREADS, thread_name_prefix="whisper-export-upload")
        self.in_flight = 0
        # whether the server is stopping at once (uvicorn's force exit; serve/server.py sets it): only then is a
        # cancelled request answered 503 here; any other cancel (Ray Serve's on a disconnect) goes on up
        self.stopping_at_once: Callable[[], bool] = lambda: False
        self.recent_seconds = 1.0  # a running mean of answered requests' latency: the Retry-After of a 429

    async def transcriptions(self, request: Request) -> Response:
        return await self._answer(request, "transcribe", "transcriptions")

    async def translations(self, request: Request) -> Response:
        return await self._answer(request, "translate", "translations")

    async def _answer(self, request: Request, task: str, endpoint: str) -> Response:
        started, status, audio_seconds = time.perf_counter(), 500, 0.0
        receive = LimitedReceive(request.receive, self.settings.max_upload_bytes + FORM_OVERHEAD_BYTES,
                                 self.settings.upload_timeout)
        try:
            self._authorize(request)
            with self._admitted():
                form = await self._form(request, receive)
                try:
                    params = request_params(form, task, self.settings, self.words_error)
                    upload = self._upload(form)
                    audio = await asyncio.get_running_loop().run_in_executor(
                        self.audio_pool, decode_upload, upload.file, upload.filename, self.settings.max_duration)
                finally:
                    await form.close()
                audio_seconds = len(audio) / SAMPLE_RATE
                result = await self._outcome(request, self._submit(audio, params.options))
            response = render(result, params, audio_seconds)
            status = 200
            return response
        except APIError as e:
            status = e.status
            # a client still sending reads the answer only once its body is taken (a stalled one never will)
            if not receive.complete and e.status != STALLED:
                await _discard_body(receive, self.settings.max_upload_bytes + FORM_OVERHEAD_BYTES)
            return e.response()
        except ClientGone:
            status = CLIENT_GONE
            return Response(status_code=CLIENT_GONE)
        except asyncio.CancelledError:
            if not self.stopping_at_once():
                raise
            status = 503
            return self._stopped_at_once().response()
        finally:
            seconds = time.perf_counter() - started
            if status == 200:
                self.recent_seconds = 0.9 * self.recent_seconds + 0.1 * seconds
            self.metrics.answered(endpoint, status, seconds, audio_seconds)

    @staticmethod
    def _stopped_at_once() -> APIError:
        """The server stopping at once (a second Ctrl-C; uvicorn then leaves requests to the loop's end, which
        cancels them) wherever a request was (its form being read, its audio decoded, its transcription awaited):
        the client gets an answer in OpenAI's shape rather than a bare 500."""
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return APIError(503, "the server was stopped before this request was answered (a second interrupt stops "
                             "it at once)", code="shutting_down", headers={"Connection": "close"})

    def _authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            what = "no API key" if not given.strip() else "an incorrect API key"
            raise APIError(401, f"received {what}, expected the server's key as 'Authorization: Bearer KEY' "
                                "(--api-key or WHISPER_EXPORT_API_KEY)", code="invalid_api_key")

    @contextmanager
    def _admitted(self) -> Iterator[None]:
        if self.in_flight >= self.settings.max_queue:
            retry = max(1, math.ceil(self.recent_seconds))
            raise APIError(429, f"received a request with {self.in_flight} in progress, expected at most "
                                f"{self.settings.max_queue} (the server's --max-queue); retry after {retry} s",
                           code="queue_full", headers={"Retry-After": str(retry)})
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    async def _form(self, request: Request, receive: LimitedReceive) -> Any:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > receive.limit:
            raise too_large(self.settings.max_upload_mb, f"a {int(declared) / 1e6:.1f} MB request")
        try:
            return await Request(request.scope, receive).form(max_files=1, max_fields=64)
        except BodyTooLarge:
            raise too_large(self.settings.max_upload_mb, "a larger request") from None
        except UploadStalled:
            raise APIError(STALLED, f"received no bytes of the request body for {self.settings.upload_timeout:g} s, "
                                    "expected the upload to keep arriving (the server's --upload-timeout)",
                           code="upload_timeout", headers={"Connection": "close"}) from None
        except ClientDisconnect:
            raise ClientGone from None
        except HTTPException as e:  # starlette's multipart errors
            raise APIError(400, f"received a malformed form ({e.detail}), expected multipart/form-data",
                           code="invalid_form") from None

    def _upload(self, form: Any) -> UploadFile:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise APIError(400, "file: received no file, expected multipart/form-data with the audio in a part "
                                "named 'file'", param="file", code="invalid_value")
        if upload.size is not None and upload.size > self.settings.max_upload_bytes:
            raise too_large(self.settings.max_upload_mb, f"a {upload.size / 1e6:.1f} MB file")
        return upload

    def _submit(self, audio: Any, options: dict[str, Any]) -> Future:
        try:
            return self.service.submit(audio, **options)
        except QueueFull as e:
            raise APIError(429, str(e), code="queue_full",
                           headers={"Retry-After": str(max(1, math.ceil(self.recent_seconds)))}) from None
        except (ValueError, TypeError) as e:
            raise option_error(e) from None
        except RuntimeError as e:  # the service closed: the server is shutting down
            raise APIError(503, f"the server is shutting down ({e})", code="shutting_down") from None

    async def _outcome(self, request: Request, future: Future) -> Any:
        """The future's result; if the client disconnects first, the transcription is cancelled."""
        waiting = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._cancel(future)
            raise
        finally:
            gone.cancel()
        if not waiting.done():
            self._cancel(future)
            raise ClientGone
        try:
            return waiting.result()
        except ValueError as e:  # AudioError, an option this audio cannot take (BundleError: no align.onnx)
            raise option_error(e) from None

    def _cancel(self, future: Future) -> None:
        if future.cancel():  # False once its result is in: nothing was left to stop
            self.metrics.cancelled.inc()

    def models(self, request: Request) -> JSONResponse:
        self._authorize(request)
        model = {"id": self.settings.model_id, "object": "model", "created": 0, "owned_by": "whisper-export"}
        return JSONResponse({"object": "list", "data": [model]})

    def health(self) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": self.settings.model_id, "pending": self.service.pending})

    def metrics_text(self) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was read already: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _discard_body(receive: LimitedReceive, limit: int) -> None:
    """Read and drop what is left of an unfinished body, up to limit bytes more or DISCARD_SECONDS."""

    async def discard() -> None:
        seen = 0
        while seen <= limit:
            message = await receive.receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            seen += len(message.get("body", b""))

    try:
        await asyncio.wait_for(discard(), DISCARD_SECONDS)
    except asyncio.TimeoutError:
        return


def create_app(service: TranscriptionService, settings: ServeSettings) -> FastAPI:
    """The app on a service (runtime.service(batch_size=..., max_pending=...)); its shutdown closes the service,
    draining what is left, after the server has answered every request it took."""
    endpoints = _Endpoints(service, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        try:
            yield
        except BaseException as error:
            # a forced stop (a second Ctrl-C): uvicorn skips the shutdown and the loop's end cancels this; what is
            # pending is cancelled, not drained, and the stop is not reported as the app's failure
            service.close(drain=False)
            endpoints.audio_pool.shutdown(wait=False)
            if not isinstance(error, asyncio.CancelledError):
                raise
        else:
            await asyncio.to_thread(service.close)
            endpoints.audio_pool.shutdown()

    app = FastAPI(title="whisper-export", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.endpoints = endpoints
    app.add_api_route("/v1/audio/transcriptions", endpoints.transcriptions, methods=["POST"])
    app.add_api_route("/v1/audio/translations", endpoints.translations, methods=["POST"])
    app.add_api_route("/v1/models", endpoints.models, methods=["GET"])
    app.add_api_route("/health", endpoints.health, methods=["GET"])
    app.add_api_route("/metrics", endpoints.metrics_text, methods=["GET"])
    app.add_exception_handler(APIError, lambda _r, e: e.response())
    app.add_exception_handler(HTTPException, lambda _r, e: APIError(e.status_code, str(e.detail)).response())
    app.add_exception_handler(RequestValidationError, lambda _r, e: APIError(400, str(e)).response())
    app.add_exception_handler(Exception, _server_error)
    return app


def _server_error(_request: Request, error: Exception) -> JSONResponse:
    return APIError(500, f"the server failed: {type(error).__name__}: {error}", code="server_error").response()
