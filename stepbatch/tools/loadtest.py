"""The load-test micro-batcher: proofs arrive one at a time, batches close on size or on a maximum wait.

Arrivals follow a schedule on a monotonic clock (open loop: a fixed offered rate, uniform or Poisson,
whatever the validator does) or come as fast as the validator takes them (closed loop: the next batch
is taken the moment the previous one is done). Every proof gets two latencies: arrival → verdict
(validation done) and arrival → committed (its batch's transaction done). Arrival schedules and the
per-proof bookkeeping are arrays; nothing loops over proofs in Python.

A validate-only batch goes through `Validator.validate`. A committing batch goes through
`stepbatch.pipeline.Pipeline`: it is validated at once (its verdict time) and committed while the next
batch validates (its commit time); a commit that finds its state moved is redone in order.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pyarrow as pa

from stepbatch.batching import SIZE, WAIT, BatchPolicy
from stepbatch.pipeline import Pipeline
from stepbatch.schema import SIGNED_FIELDS
from stepbatch.validator import Validator

# What a phone sends, as the validator is fed it; a traffic table's labels (expected_code, attack)
# stay with the load generator.
INPUT_COLUMNS = (*SIGNED_FIELDS, "signature", "received_at")
OPEN, CLOSED = "open", "closed"


class MonotonicClock:
    """Seconds on `time.monotonic`; waits by sleeping."""

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, moment_s: float) -> None:
        delay_s = moment_s - time.monotonic()
        if delay_s > 0:
            time.sleep(delay_s)


class VirtualClock:
    """A clock that moves only by waiting: batches are processed in zero time on it, so a run is an
    exact, instant simulation of the batching policy (what the tests check)."""

    def __init__(self, start_s: float = 0.0):
        self._now_s = start_s

    def now(self) -> float:
        return self._now_s

    def sleep_until(self, moment_s: float) -> None:
        self._now_s = max(self._now_s, moment_s)


def arrival_offsets_s(n: int, rate_per_s: float, process: str = "uniform", seed: int = 0) -> np.ndarray:
    """Arrival time of each of `n` proofs in seconds after the start, at `rate_per_s` on average:
    evenly spaced ("uniform") or with exponential gaps ("poisson")."""
    if rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
    if process == "uniform":
        return np.arange(n, dtype=np.float64) / rate_per_s
    if process == "poisson":
        gaps_s = np.random.default_rng(seed).exponential(1.0 / rate_per_s, n)
        return np.cumsum(gaps_s) - gaps_s[0] if n else gaps_s
    raise ValueError(f"process must be 'uniform' or 'poisson', got {process!r}")


@dataclasses.dataclass
class BatchRecord:
    first_row: int
    rows: int
    closed_on: str  # "size", "wait" (the oldest proof waited max_wait) or "closed" (closed loop)
    accepted: int


@dataclasses.dataclass
class LoadRun:
    """One load run; times are seconds from its start, one entry per proof in arrival order."""

    mode: str
    offered_per_s: float | None  # None in closed loop
    batch_size: int
    max_wait_ms: float
    arrival_s: np.ndarray
    verdict_s: np.ndarray
    committed_s: np.ndarray  # NaN where nothing was committed (validate-only runs)
    verdict_rows: int  # verdict rows the validator returned, summed over batches
    accepted: int
    counts: dict[str, int]
    batches: list[BatchRecord]
    stage_s: dict[str, float]  # BatchResult.timings summed over batches, plus "commit"
    elapsed_s: float
    committed_clicks: int | None = None  # click events in the store after a committing run

    @property
    def proofs(self) -> int:
        return len(self.arrival_s)

    @property
    def throughput_per_s(self) -> float:
        return self.proofs / self.elapsed_s if self.elapsed_s > 0 else float("inf")

    @property
    def lost(self) -> int:
        """Arrivals without a verdict, plus accepted proofs the store does not hold (when counted)."""
        missing_verdicts = self.proofs - self.verdict_rows
        uncommitted = self.accepted - self.committed_clicks if self.committed_clicks is not None else 0
        return missing_verdicts + max(uncommitted, 0)

    def latency_ms(self, until: str = "verdict") -> np.ndarray:
        done_s = self.verdict_s if until == "verdict" else self.committed_s
        return (done_s - self.arrival_s) * 1000.0

    def percentiles_ms(self, until: str = "verdict", qs=(50, 95, 99)) -> dict[str, float]:
        latency = self.latency_ms(until)
        if not len(latency) or np.isnan(latency).all():
            return {f"p{q}": float("nan") for q in qs}
        return {f"p{q}": float(v) for q, v in zip(qs, np.nanpercentile(latency, qs))}

    def summary(self) -> dict:
        """JSON-ready figures of the run."""
        closed_on = [b.closed_on for b in self.batches]
        return {
            "mode": self.mode, "offered_per_s": self.offered_per_s, "batch_size": self.batch_size,
            "max_wait_ms": self.max_wait_ms, "proofs": self.proofs, "elapsed_s": self.elapsed_s,
            "throughput_per_s": self.throughput_per_s, "accepted": self.accepted,
            "committed_clicks": self.committed_clicks, "lost": self.lost, "counts": self.counts,
            "batches": len(self.batches),
            "batches_closed_on": {kind: closed_on.count(kind) for kind in sorted(set(closed_on))},
            "mean_batch_rows": float(np.mean([b.rows for b in self.batches])) if self.batches else 0.0,
            "verdict_latency_ms": self.percentiles_ms("verdict"),
            "commit_latency_ms": self.percentiles_ms("committed"),
            "stage_s": self.stage_s,
        }


class MicroBatcher:
    """Feeds proofs to a validator in batches that close on `batch_size` proofs or when the oldest
    waiting proof has waited `max_wait_ms`, whichever comes first; commits each batch when `commit`.

    A committing run counts the click events in the validator's store at its end to prove that every
    accepted proof was committed, so give each committing run a store (database) of its own.
    """

    def __init__(self, validator: Validator, batch_size: int, max_wait_ms: float, commit: bool = True,
                 clock=None, run_id: str = "load"):
        self.policy = BatchPolicy.of(batch_size, max_wait_ms)
        self.validator = validator
        self.batch_size = batch_size
        self.max_wait_s = self.policy.max_wait_s
        self.commit = commit
        self.clock = clock or MonotonicClock()
        self.run_id = run_id

    def run_open(self, proofs: pa.Table, offsets_s: np.ndarray, offered_per_s: float | None = None) -> LoadRun:
        """Proof i arrives `offsets_s[i]` (non-decreasing) seconds after the start, whether or not
        the validator keeps up; a backlog shows as latency, never as a dropped proof.
        `offered_per_s` is the nominal rate to report (default: the rate the offsets realise)."""
        offsets_s = np.asarray(offsets_s, np.float64)
        if len(offsets_s) != proofs.num_rows:
            raise ValueError(f"{len(offsets_s)} arrival times for {proofs.num_rows} proofs")
        if len(offsets_s) > 1 and (np.diff(offsets_s) < 0).any():
            raise ValueError("arrival times must be non-decreasing")
        tracker = _Tracker(self, proofs, OPEN)
        start_s = self.clock.now()
        arrival_s = start_s + offsets_s
        n, next_row = proofs.num_rows, 0
        while next_row < n:
            now_s = self.clock.now()
            arrived = int(np.searchsorted(arrival_s, now_s, side="right"))
            if arrived == next_row:
                self.clock.sleep_until(arrival_s[next_row])
                continue
            full_row = next_row + self.batch_size
            closed_on = self.policy.closes(arrived - next_row, arrival_s[next_row], now_s)
            if closed_on == SIZE:
                tracker.process(next_row, full_row, SIZE, arrival_s[next_row:full_row])
                next_row = full_row
            elif closed_on == WAIT:
                tracker.process(next_row, arrived, WAIT, arrival_s[next_row:arrived])
                next_row = arrived
            else:
                # Wake when the batch would fill or when its oldest proof has waited long enough.
                fills_at_s = arrival_s[full_row - 1] if full_row <= n else np.inf
                self.clock.sleep_until(min(fills_at_s, self.policy.deadline_s(arrival_s[next_row])))
        return tracker.finish(start_s, offered_per_s=offered_per_s or _offered_rate(offsets_s))

    def run_closed(self, proofs: pa.Table) -> LoadRun:
        """As fast as it goes: each batch of `batch_size` proofs arrives when the previous is done."""
        tracker = _Tracker(self, proofs, CLOSED)
        start_s = self.clock.now()
        for first_row in range(0, proofs.num_rows, self.batch_size):
            last_row = min(first_row + self.batch_size, proofs.num_rows)
            tracker.process(first_row, last_row, "closed", np.full(last_row - first_row, self.clock.now()))
        return tracker.finish(start_s, offered_per_s=None)


class _Tracker:
    """Runs batches for one load run and records, per proof, when it arrived, got its verdict and
    was committed."""

    def __init__(self, batcher: MicroBatcher, proofs: pa.Table, mode: str):
        self.batcher = batcher
        self.proofs = proofs.select([name for name in INPUT_COLUMNS if name in proofs.column_names])
        self.mode = mode
        n = proofs.num_rows
        self.arrival_s = np.full(n, np.nan)
        self.verdict_s = np.full(n, np.nan)
        self.committed_s = np.full(n, np.nan)
        self.verdict_rows = 0
        self.accepted = 0
        self.counts: dict[str, int] = {}
        self.batches: list[BatchRecord] = []
        self.stage_s: dict[str, float] = {}
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self.pipeline = Pipeline(batcher.validator) if batcher.commit else None

    def process(self, first_row: int, last_row: int, closed_on: str, arrival_s: np.ndarray) -> None:
        batcher, clock = self.batcher, self.batcher.clock
        batch = self.proofs.slice(first_row, last_row - first_row)
        batch_id = f"{batcher.run_id}-{len(self.batches):06d}"
        record = BatchRecord(first_row, last_row - first_row, closed_on, 0)
        self.batches.append(record)
        self.arrival_s[first_row:last_row] = arrival_s
        if self.pipeline is None:
            result = batcher.validator.validate(batch, batch_id)
            self.verdict_s[first_row:last_row] = clock.now()
            self._record(result, first_row, last_row, record)
            return
        future = self.pipeline.submit(batch, batch_id)
        self.verdict_s[first_row:last_row] = clock.now()
        future.add_done_callback(lambda done: self._committed(done, first_row, last_row, record))

    def _committed(self, future, first_row: int, last_row: int, record: BatchRecord) -> None:
        with self._lock:
            if future.exception() is not None:
                self.errors.append(future.exception())
                return
            self.committed_s[first_row:last_row] = self.batcher.clock.now()
            self._record(future.result(), first_row, last_row, record)

    def _record(self, result, first_row: int, last_row: int, record: BatchRecord) -> None:
        # A verdict table with one row per proof, indexed 0..n-1, is what "no proof lost" means here.
        indices = result.verdicts.column("index").to_numpy()
        if len(indices) == last_row - first_row and (indices == np.arange(len(indices))).all():
            self.verdict_rows += len(indices)
        record.accepted = result.counts.get("ACCEPTED", 0)
        self.accepted += record.accepted
        for code, count in result.counts.items():
            self.counts[code] = self.counts.get(code, 0) + count
        for stage, seconds in result.timings.items():
            self.stage_s[stage] = self.stage_s.get(stage, 0.0) + seconds

    def finish(self, start_s: float, offered_per_s: float | None) -> LoadRun:
        batcher = self.batcher
        if self.pipeline is not None:
            self.pipeline.close()
            if self.errors:
                raise self.errors[0]
        done_s = self.committed_s if batcher.commit else self.verdict_s
        elapsed_s = float(np.nanmax(done_s) - start_s) if len(done_s) else 0.0
        # The store is the run's own, so every click event it holds came from this run.
        committed_clicks = count_committed_clicks(batcher.validator.store) if batcher.commit else None
        return LoadRun(
            mode=self.mode, offered_per_s=offered_per_s, batch_size=batcher.batch_size,
            max_wait_ms=batcher.max_wait_s * 1000.0, arrival_s=self.arrival_s - start_s,
            verdict_s=self.verdict_s - start_s, committed_s=self.committed_s - start_s,
            verdict_rows=self.verdict_rows, accepted=self.accepted, counts=self.counts,
            batches=self.batches, stage_s=self.stage_s, elapsed_s=elapsed_s,
            committed_clicks=committed_clicks)


def _offered_rate(offsets_s: np.ndarray) -> float | None:
    span_s = float(offsets_s[-1] - offsets_s[0]) if len(offsets_s) > 1 else 0.0
    return (len(offsets_s) - 1) / span_s if span_s > 0 else None


def count_committed_clicks(store) -> int:
    """Accepted proofs (click events) the store holds."""
    return store.accepted_count()
