"""The original STEP server's design on stepbatch's own engine: one proof per request, one transaction each.

The original validated each HTTP request's proof alone and committed it in its own MongoDB
transaction. Here every proof is `Validator.finalize`d as a batch of one, so the rules, the checks
and the documents are exactly the engine's: what the load test compares (`stepbatch bench`,
configuration d against c) is the design — a transaction and a round of state reads per proof against
one per batch — and nothing else.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pyarrow as pa

from stepbatch.config import Config
from stepbatch.protocol import Code
from stepbatch.store.base import Store
from stepbatch.validator import Validator


@dataclasses.dataclass
class BaselineRun:
    """Per-proof codes and service times of a run through the one-proof-per-request design."""

    codes: np.ndarray  # uint8 Code per proof
    latency_s: np.ndarray  # request start → transaction done, per proof
    elapsed_s: float
    stage_s: dict[str, float]  # "checks" (everything before the commit) and "transaction"

    @property
    def throughput_per_s(self) -> float:
        return len(self.codes) / self.elapsed_s if self.elapsed_s > 0 else float("inf")

    def counts(self) -> dict[str, int]:
        values, counts = np.unique(self.codes, return_counts=True)
        return {Code(int(v)).name: int(c) for v, c in zip(values, counts)}


class OriginalServer:
    """Validates and commits one proof per call against `store`."""

    def __init__(self, store: Store, config: Config | None = None, run_id: str = "baseline"):
        self.config = config or Config()
        self.store = store
        self.run_id = run_id

    def run(self, proofs: pa.Table) -> BaselineRun:
        """Handle the rows of a proof table one after another, each as its own request."""
        n = proofs.num_rows
        codes = np.zeros(n, np.uint8)
        latency_s = np.zeros(n)
        stage_s = {"checks": 0.0, "transaction": 0.0}
        started = time.perf_counter()
        with Validator(self.store, dataclasses.replace(self.config, signature_threads=1)) as validator:
            for i in range(n):
                request_s = time.perf_counter()
                result = validator.finalize(proofs.slice(i, 1), f"{self.run_id}:{i}")
                latency_s[i] = time.perf_counter() - request_s
                codes[i] = Code[result.verdicts.column("code")[0].as_py()]
                commit_s = result.timings.get("commit", 0.0)
                stage_s["transaction"] += commit_s
                stage_s["checks"] += latency_s[i] - commit_s
        return BaselineRun(codes, latency_s, time.perf_counter() - started, stage_s)
