"""The driver: ingest → stateless checks → resolve → (commit), one batch at a time.

`validate` never writes; `finalize` validates and commits in one store transaction, re-validating
against fresh state when another writer moved it (optimistic concurrency, bounded retries).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time

import numpy as np
import pyarrow as pa

from stepbatch.checks import StatelessResult, stateless_checks
from stepbatch.config import Config
from stepbatch.crypto import recovery
from stepbatch.ingest import read_proofs
from stepbatch.ingest.timestamps import epoch_ms
from stepbatch.resolve import index_batch, run_resolver
from stepbatch.store.base import BatchOutcome, StaleStateError, Store, StoreError
from stepbatch.verdicts import (
    build_verdicts,
    counts_by_code,
    input_digest,
    verdict_digest,
)

log = logging.getLogger("stepbatch")
_PATIENCE = 3  # conflicts in a row before the wait is announced


class BatchConflictError(StoreError):
    """A batch id that was committed with other content, or that gave another digest."""


@dataclasses.dataclass
class BatchResult:
    verdicts: pa.Table
    digest: str
    batch_id: str
    counts: dict[str, int]
    timings: dict[str, float]
    committed: bool = False
    outcome: BatchOutcome | None = dataclasses.field(default=None, repr=False)


class Validator:
    """Validates proof batches against a store; holds the signature thread pool for its lifetime.

    `store` defaults to `MongoStore()` (MONGODB_URI, else the embedded server); pass a `MemoryStore`
    to validate without a database. A store passed in stays the caller's to close. A `memo` (a
    `crypto.recovery.RecoveryMemo`) spares recovering a signature this validator recovered before.
    """

    def __init__(self, store: Store | None = None, config: Config | None = None,
                 memo: recovery.RecoveryMemo | None = None):
        self.config = config or Config.from_env()
        self._owns_store = store is None
        if store is None:
            from stepbatch.store.mongo import MongoStore
            store = MongoStore(self.config.mongodb_uri, self.config.db_name, config=self.config)
        self.store = store
        self._recoverer = recovery.SignatureRecoverer(self.config.threads, memo)

    def validate(self, batch, batch_id: str | None = None, batch_time=None,
                 stateless: StatelessResult | None = None, fresh: bool = False) -> BatchResult:
        """Verdicts for `batch` against the store's current state; writes nothing. `stateless` is the
        result of `self.stateless` on the same proofs and batch time, when it was computed before
        (the consensus app runs it while a block is proposed, and keeps it for the block's execution).
        `fresh`: `batch` is a PROOF_SCHEMA table its caller has just read (`read_proofs`, or
        `stepbatch.abci.transactions`), so it is not read again."""
        started = time.perf_counter()
        proofs = batch if fresh else read_proofs(batch)
        timings = {"ingest": time.perf_counter() - started}
        return self._validate(proofs, batch_id, _batch_time_ms(batch_time), timings, stateless=stateless)

    def stateless(self, proofs: pa.Table, batch_time=None, fresh: bool = False) -> StatelessResult:
        """Checks 1-5 of SPEC §4 (field rules, version, accuracy, clock drift, signature) on all cores;
        `fresh` as for `validate`."""
        return stateless_checks(proofs if fresh else read_proofs(proofs), self.config, _batch_time_ms(batch_time),
                                self._recoverer)

    def finalize(self, batch, batch_id: str, batch_time=None) -> BatchResult:
        """Validate and commit `batch` as `batch_id`: one transaction, no double spend under concurrency.

        Finalizing a committed batch id again returns the stored result if the proofs are the same,
        and raises BatchConflictError if they are not.
        """
        if not batch_id:
            raise ValueError("finalize needs a batch_id")
        started = time.perf_counter()
        proofs = read_proofs(batch)
        timings = {"ingest": time.perf_counter() - started}
        batch_time_ms = _batch_time_ms(batch_time)
        fingerprint = input_digest(proofs, batch_time_ms, self.config)
        deadline = time.monotonic() + self.config.commit_wait_s
        for attempt in itertools.count():
            stored = self.store.committed(batch_id)
            if stored is not None:
                if stored.input_digest != fingerprint:
                    raise BatchConflictError(
                        f"batch {batch_id} was already committed with other proofs, another batch "
                        f"time or other gates (stored digest {stored.digest})")
                if stored.verdicts is None:
                    raise BatchConflictError(f"batch {batch_id} was already committed (digest "
                                             f"{stored.digest}); this store keeps no verdicts to return")
                return BatchResult(verdicts=stored.verdicts, digest=stored.digest, batch_id=batch_id,
                                   counts=dict(stored.counts), timings=timings, committed=True)
            result = self._validate(proofs, batch_id, batch_time_ms, dict(timings), fingerprint)
            commit_started = time.perf_counter()
            try:
                self.store.commit(result.outcome)
            except StaleStateError as err:
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"batch {batch_id}: state kept changing under concurrent writers for "
                        f"{self.config.commit_wait_s:g} s (STEPBATCH_COMMIT_WAIT_S); last: {err}") from err
                if attempt == _PATIENCE:
                    log.warning("batch %s conflicts with another writer's transaction; re-validating "
                                "until it ends (a writer killed mid-commit leaves one open until the "
                                "server expires it, 60 s by default), for at most %g s",
                                batch_id, self.config.commit_wait_s)
                time.sleep(min(0.05 * 2 ** min(attempt, 5), max(deadline - time.monotonic(), 0)))
                continue
            result.timings["commit"] = time.perf_counter() - commit_started
            result.committed = True
            return result

    def _validate(self, proofs: pa.Table, batch_id: str | None, batch_time_ms: int | None,
                  timings: dict[str, float], fingerprint: str | None = None,
                  stateless: StatelessResult | None = None) -> BatchResult:
        fingerprint = fingerprint or input_digest(proofs, batch_time_ms, self.config)
        batch_id = batch_id if batch_id is not None else fingerprint[:32]

        if stateless is None or len(stateless.code) != proofs.num_rows:
            stateless = stateless_checks(proofs, self.config, batch_time_ms, self._recoverer)
        timings.update(stateless.timings)

        started = time.perf_counter()
        index = index_batch(proofs, stateless.code == 0)
        prior = self.store.load_state(index.keys)
        timings["state"] = time.perf_counter() - started

        started = time.perf_counter()
        resolution = run_resolver(proofs, stateless, index, prior, self.config)
        timings["resolve"] = time.perf_counter() - started

        started = time.perf_counter()
        verdicts = build_verdicts(proofs, stateless, resolution, self.config)
        digest = verdict_digest(batch_id, verdicts)
        counts = counts_by_code(resolution.code)
        timings["verdicts"] = time.perf_counter() - started

        outcome = BatchOutcome(
            batch_id=batch_id, batch_time_ms=batch_time_ms, digest=digest, input_digest=fingerprint,
            counts=counts, proofs=proofs, verdicts=verdicts, keys=index.keys,
            prior=prior, final=resolution.final, row_account=index.row_account,
            row_triangle=index.row_triangle, row_pair=index.row_pair,
            subdivided_rows=np.flatnonzero(resolution.subdivided))
        return BatchResult(verdicts=verdicts, digest=digest, batch_id=batch_id, counts=counts,
                           timings=timings, outcome=outcome)

    def close(self) -> None:
        self._recoverer.close()
        if self._owns_store:
            self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _batch_time_ms(batch_time) -> int | None:
    """A datetime (naive means UTC) or epoch milliseconds → epoch milliseconds; None stays None."""
    if batch_time is None:
        return None
    try:
        return epoch_ms(batch_time)
    except TypeError as err:
        raise TypeError(f"batch_time: {err}") from None
