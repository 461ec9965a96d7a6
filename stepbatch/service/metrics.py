"""The service's Prometheus metrics, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000)


class ServiceMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.proofs = Counter("stepbatch_proofs", "Proofs validated and committed, by verdict code",
                              ["code"], registry=r)
        self.batch_rows = Histogram("stepbatch_batch_rows", "Proofs per batch", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.queue_wait = Histogram("stepbatch_queue_wait_seconds", "Time a request waited for its batch "
                                    "to close", buckets=_LATENCY_BUCKETS_S, registry=r)
        self.validate = Histogram("stepbatch_validate_seconds", "Time to validate a batch",
                                  buckets=_LATENCY_BUCKETS_S, registry=r)
        self.commit = Histogram("stepbatch_commit_seconds", "Time to commit a batch (one transaction)",
                                buckets=_LATENCY_BUCKETS_S, registry=r)
        self.answered = Histogram("stepbatch_answer_seconds", "From a request's arrival in the batcher to its "
                                  "answer with committed verdicts", buckets=_LATENCY_BUCKETS_S, registry=r)
        self.queue_depth = Gauge("stepbatch_queue_depth", "Proofs waiting for a batch", registry=r)
        self.db_errors = Counter("stepbatch_db_errors", "Batches that failed in the database", registry=r)
        self.refused = Counter("stepbatch_http_refused", "Requests refused before validation, by reason",
                               ["reason"], registry=r)
