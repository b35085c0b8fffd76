"""The service's Prometheus metrics, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

#: 5 ms to 10 s, as the seed's bge_m3_vectorize_duration_seconds
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
SCORE_BUCKETS = (-0.5, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0, 1.5, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """Every metric `/metrics` shows. Request labels use the route's path template (never the
    raw URL), so random paths cannot grow the label set."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.vectorize_seconds = Histogram(
            "bge_m3_vectorize_duration_seconds", "Seconds per encoder call (one coalesced batch of texts).",
            buckets=DURATION_BUCKETS, registry=r)
        self.batch_size = Histogram("connector_encoder_batch_size", "Distinct texts per encoder call.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("connector_encoder_queue_depth", "Texts waiting for or in the encoder.", registry=r)
        self.cache_hits = Counter("connector_embedding_cache_hits", "Texts answered from the in-memory cache.",
                                  registry=r)
        self.cache_misses = Counter("connector_embedding_cache_misses", "Texts the encoder had to encode.",
                                    registry=r)
        self.similarity_score = Histogram("connector_similarity_score", "Scores returned by /v1/similarity.",
                                          ["mode"], buckets=SCORE_BUCKETS, registry=r)
        self.requests = Counter("connector_http_requests", "HTTP requests by endpoint and status code.",
                                ["endpoint", "method", "status"], registry=r)
        self.request_seconds = Histogram("connector_http_request_duration_seconds", "Seconds per HTTP request.",
                                         ["endpoint"], buckets=DURATION_BUCKETS, registry=r)
        self.model_info = Info("connector_model", "The model the service encodes with.", registry=r)
        self.ready = Gauge("connector_model_ready", "1 once the model is loaded and the service answers.",
                           registry=r)
