"""`whisper-export serve`: OpenAI's audio API (/v1/audio/transcriptions, /v1/audio/translations, /v1/models) over
one model, every request's windows decoded together by the runtime's continuous batcher (runtime/service.py).

    settings.py   what a server is started with (limits, key, the decoding defaults of every request)
    params.py     a request's form fields as runtime options (OpenAI's definitions, temperature's mapping)
    uploads.py    the body within its size limit, the audio decoded off the event loop
    responses.py  json, text, srt, vtt, verbose_json
    errors.py     OpenAI's error shape
    metrics.py    Prometheus metrics
    app.py        the ASGI app (FastAPI)
    server.py     uvicorn, signals, draining

Needs the `serve` extra (FastAPI, uvicorn, python-multipart, prometheus-client); settings.py imports none of them.
"""
