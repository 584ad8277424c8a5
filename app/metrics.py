"""Prometheus metrics, all under the `mvit_` prefix, on a registry owned by one app instance.

With several workers (`mvit serve --workers N`), every process writes its values under
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, chosen when it is first imported), and
/metrics, whichever worker answers it, sums them: counts and histograms add up, gauges of requests add up
over the live workers, and a model is ready only when it is in every live worker.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

# 1 ms .. 10 s, roughly three buckets per decade.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._add_request_metrics(self.registry)
        self._add_model_metrics(self.registry)

    def _add_request_metrics(self, r: CollectorRegistry) -> None:
        self.request_duration = Histogram(
            "mvit_request_duration_seconds",
            "Time from request received to response sent, by route, model and HTTP status.",
            ("endpoint", "model", "status"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.phase_duration = Histogram(
            "mvit_phase_duration_seconds",
            "Time one request spends in each phase: decode, preprocess, queue (wait for a batch to start: "
            "the queue wait histogram), inference (the batch it ran in), postprocess (task output and JSON) "
            "or render (the annotated image).",
            ("model", "phase"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "mvit_requests_in_flight",
            "Requests being handled right now.",
            ("endpoint",),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pending = Gauge(
            "mvit_requests_pending",
            "Requests a model holds right now, from admission to answer (bounded by max_queue_size).",
            ("model",),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "mvit_requests_rejected",
            "Requests refused or abandoned before an answer, by reason: queue_full (429), timeout (504), "
            "body_timeout (408), shutting_down (503), unavailable (503: the model's batcher has died), "
            "client_disconnected (the caller went away; its queued work is dropped).",
            ("model", "reason"),
            registry=r,
        )

    def _add_model_metrics(self, r: CollectorRegistry) -> None:
        self.batch_size = Histogram(
            "mvit_batch_size",
            "Requests per inference call.",
            ("model",),
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.batcher_failures = Counter(
            "mvit_batcher_failures",
            "Batching loops that died of an internal error. The model answers 503 from then on, and /health "
            "and /ready fail until the service restarts.",
            ("model",),
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "mvit_model_load_seconds",
            "Time to load and warm up each model.",
            ("model",),
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_info = Gauge(
            "mvit_model_info",
            "Always 1; labels describe each served model.",
            ("model", "task", "backend", "device", "width", "input_size", "random_weights"),
            registry=r,
            multiprocess_mode="livemax",
        )
        self.models_ready = Gauge(
            "mvit_models_ready",
            "1 once every configured model is loaded and warmed up.",
            registry=r,
            multiprocess_mode="livemin",
        )

    def exposition(self) -> bytes:
        """What /metrics answers: this process's metrics, or, with several workers, all of theirs."""
        if os.environ.get(MULTIPROCESS_DIR):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
