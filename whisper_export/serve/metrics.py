"""Prometheus metrics of one server (its own registry, so several apps in one process do not collide).

whisper_export_requests_total{endpoint, status}      answers by HTTP status (499: the client left first)
whisper_export_request_seconds{endpoint}             latency histogram, upload received to answer ready
whisper_export_audio_seconds_total{endpoint}         seconds of audio transcribed (answered 200)
whisper_export_transcriptions_cancelled_total       transcriptions cancelled before their result (client gone)
whisper_export_requests_in_flight                    requests admitted and not answered (--max-queue bounds it)
whisper_export_transcriptions_pending                transcriptions in the service (waiting or decoding)
whisper_export_batch_windows                         30 s windows being decoded now (batch occupancy)
whisper_export_batch_max_windows                     windows the batcher decodes at most (--batch-size)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 - the /metrics content type, re-exported

from whisper_export.runtime.service import TranscriptionService

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class Metrics:
    def __init__(self, service: TranscriptionService):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("whisper_export_requests", "answers by endpoint and HTTP status",
                                ("endpoint", "status"), registry=registry)
        self.latency = Histogram("whisper_export_request_seconds", "seconds from a request's arrival to its answer",
                                 ("endpoint",), buckets=LATENCY_BUCKETS, registry=registry)
        self.audio = Counter("whisper_export_audio_seconds", "seconds of audio transcribed",
                             ("endpoint",), registry=registry)
        self.cancelled = Counter("whisper_export_transcriptions_cancelled",
                                 "transcriptions cancelled before their result, their windows dropped from the batch",
                                 registry=registry)
        self.in_flight = Gauge("whisper_export_requests_in_flight", "requests admitted and not answered",
                               registry=registry)
        Gauge("whisper_export_transcriptions_pending", "transcriptions waiting for or in the batcher",
              registry=registry).set_function(lambda: service.pending)
        Gauge("whisper_export_batch_windows", "30 s windows being decoded now",
              registry=registry).set_function(lambda: service.occupancy()[0])
        Gauge("whisper_export_batch_max_windows", "windows the batcher decodes at most",
              registry=registry).set_function(lambda: service.occupancy()[1])

    def answered(self, endpoint: str, status: int, seconds: float, audio_seconds: float = 0.0) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if status == 200:
            self.audio.labels(endpoint).inc(audio_seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
