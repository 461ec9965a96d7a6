"""Offline replay: re-validate an archive of proofs in bounded memory, resumable after a crash.

Input is streamed in chunks of `batch_size` rows; each chunk is one batch with the deterministic id
`{run}@{first_row}+{rows}`, where `run` names the inputs. A committed batch is durable, so a resumed
replay asks the store which batches of its run exist and starts after the last one; the verdicts of
batches committed before the crash are read back from the store so that `--out` is whole.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import pathlib
import re
import sys
import time
from collections import Counter
from typing import Sequence, TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from stepbatch.ingest import ProofSourceError, iter_proofs
from stepbatch.pipeline import Pipeline
from stepbatch.schema import VERDICT_SCHEMA
from stepbatch.validator import Validator

_BATCH_ID = re.compile(r"@(\d+)\+(\d+)$")


@dataclasses.dataclass
class ReplaySummary:
    run_id: str
    rows: int = 0
    batches: int = 0
    resumed_from_row: int = 0
    counts: Counter = dataclasses.field(default_factory=Counter)
    reward_micro: int = 0
    seconds: float = 0.0
    validate_seconds: float = 0.0
    stage_seconds: Counter = dataclasses.field(default_factory=Counter)  # BatchResult.timings summed
    workers: Counter = dataclasses.field(default_factory=Counter)  # cluster worker → rows it checked
    worker_seconds: Counter = dataclasses.field(default_factory=Counter)  # cluster worker → seconds of work

    @property
    def proofs_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


class ReplayError(RuntimeError):
    """The replay cannot go on as asked (e.g. a resume that does not match the interrupted run)."""


def run_id_of(inputs: Sequence[str]) -> str:
    """A name for a replay of these files, from their content in order: two runs share it only when
    they read the same bytes, so `--resume` can never skip rows of another input."""
    sha = hashlib.sha256(f"STEP-REPLAY-v2:{len(inputs)}\n".encode())
    for name in inputs:
        file_sha = hashlib.sha256()
        with open(name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                file_sha.update(block)
        sha.update(file_sha.digest())
    return "replay-" + sha.hexdigest()[:24]


def resume_row(validator: Validator, run_id: str) -> int:
    """The first input row after the batches of `run_id` the store already holds."""
    end = 0
    for batch_id in validator.store.batch_ids(run_id + "@"):
        match = _BATCH_ID.search(batch_id)
        if match:
            end = max(end, int(match.group(1)) + int(match.group(2)))
    return end


def replay(inputs: Sequence[str], validator: Validator, *, out: str | None = None, commit: bool = True,
           resume: bool = False, batch_size: int = 10_000, progress=None, cluster=None) -> ReplaySummary:
    """Validate (and commit) every proof of `inputs` in order; `progress(rows_done, summary)` is
    called after each batch. With `cluster` (`stepbatch.tools.cluster.DaskCluster`) the stateless
    stage of each batch runs on the cluster, at most `cluster.in_flight` batches ahead of the one
    being applied, and the results are applied in input order here."""
    if not inputs:
        raise ProofSourceError("no input files given")
    for name in inputs:
        path = pathlib.Path(name)
        if not path.is_file():
            raise ProofSourceError(f"{name}: {'is a directory' if path.is_dir() else 'no such file'}")
    summary = ReplaySummary(run_id=run_id_of(inputs))
    start = resume_row(validator, summary.run_id) if resume else 0
    summary.resumed_from_row = start
    started = time.perf_counter()
    writer = _VerdictWriter(out) if out else None
    pending: collections.deque = collections.deque()  # (future, chunk, batch id, submitted), in order

    def record(result, chunk, batch_id: str, submitted: float) -> None:
        batch_seconds = time.perf_counter() - submitted
        summary.validate_seconds += batch_seconds
        summary.rows += chunk.table.num_rows
        summary.batches += 1
        summary.counts.update(result.counts)
        summary.stage_seconds.update(result.timings)
        summary.reward_micro += int(pa.compute.sum(result.verdicts.column("reward_micro")).as_py() or 0)
        if writer is not None:
            writer.write(result.verdicts, batch_id, chunk.first_row, chunk.table, batch_seconds)
        summary.seconds = time.perf_counter() - started
        if progress is not None:
            progress(chunk.table.num_rows, summary)

    def settle(wait: bool) -> None:
        while pending and (wait or pending[0][0].done()):
            future, chunk, batch_id, submitted = pending.popleft()
            record(future.result(), chunk, batch_id, submitted)

    def apply(chunk, batch_id: str, stateless=None) -> None:
        submitted = time.perf_counter()
        if pipeline is not None:
            pending.append((pipeline.submit(chunk.table, batch_id, stateless=stateless), chunk, batch_id, submitted))
            settle(wait=False)
        else:
            result = validator.validate(chunk.table, batch_id, stateless=stateless)
            validator.store.commit(result.outcome)
            record(result, chunk, batch_id, submitted)

    remote: collections.deque = collections.deque()  # (chunk, batch id, future of its stateless stage)

    def apply_remote(wait: bool) -> None:
        while remote and (wait or len(remote) >= cluster.in_flight):
            chunk, batch_id, future = remote.popleft()
            task = cluster.result(future, chunk.table, f"stateless-{batch_id}")
            summary.workers[task.worker] += task.rows
            summary.worker_seconds[task.worker] += task.seconds
            apply(chunk, batch_id, task.stateless)

    finished = False
    # Committed, batch N+1 validates while batch N commits (stepbatch.pipeline).
    pipeline = Pipeline(validator) if commit else None
    try:
        # With --out, a resumed run re-reads the rows before `start` to carry their columns next to
        # the verdicts the store kept for them.
        skip = 0 if writer is not None else start
        for chunk in iter_proofs(list(inputs), batch_size=batch_size, skip_rows=skip):
            batch_id = f"{summary.run_id}@{chunk.first_row}+{chunk.table.num_rows}"
            if chunk.first_row < start:
                stored = validator.store.committed(batch_id)
                if stored is None:
                    raise ReplayError(f"cannot resume: batch {batch_id} is not in the store (resume "
                                      f"with the --batch-size of the interrupted run)")
                writer.write(stored.verdicts, batch_id, chunk.first_row, chunk.table, None)
                continue
            if cluster is None:
                apply(chunk, batch_id)
                continue
            remote.append((chunk, batch_id, cluster.submit(chunk.table, None, key=f"stateless-{batch_id}")))
            apply_remote(wait=False)
        if cluster is not None:
            apply_remote(wait=True)
        settle(wait=True)
        finished = True
    finally:
        if pipeline is not None:
            pipeline.close()
        if writer is not None:
            writer.close(keep=finished)
    summary.seconds = time.perf_counter() - started
    return summary


class _VerdictWriter:
    """Verdicts of a replay in one Parquet file, written next to it and moved into place at the end
    so that a crash never leaves a truncated file under the final name."""

    _CARRIED = ("expected_code", "attack")
    SCHEMA = VERDICT_SCHEMA.append(pa.field("batch_id", pa.string())).append(
        pa.field("row", pa.int64())).append(pa.field("batch_seconds", pa.float64())).append(
        pa.field("expected_code", pa.string())).append(pa.field("attack", pa.string()))

    def __init__(self, path: str):
        self.path = pathlib.Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._writer: pq.ParquetWriter | None = None

    def write(self, verdicts: pa.Table, batch_id: str, first_row: int, proofs: pa.Table,
              batch_seconds: float | None):
        n = verdicts.num_rows
        table = verdicts.append_column("batch_id", pa.array([batch_id] * n, pa.string()))
        table = table.append_column("row", pa.compute.add(verdicts.column("index"), first_row))
        table = table.append_column("batch_seconds", pa.array([batch_seconds] * n, pa.float64()))
        for name in self._CARRIED:
            column = (proofs.column(name).cast(pa.string()) if name in proofs.column_names
                      else pa.nulls(n, pa.string()))
            table = table.append_column(name, column)
        self._open().write_table(table.cast(self.SCHEMA))

    def _open(self) -> pq.ParquetWriter:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.partial, self.SCHEMA)
        return self._writer

    def close(self, keep: bool = True) -> None:
        """Move the file into place (with the schema and no rows when nothing was replayed), or
        (`keep=False`, a replay that failed) delete it."""
        if keep:
            self._open()
        if self._writer is not None:
            self._writer.close()
            if keep:
                os.replace(self.partial, self.path)
            else:
                self.partial.unlink(missing_ok=True)


class ProgressBar:
    """A progress bar that appears with the first batch done, so that a run failing before it
    leaves nothing on stderr but its error line."""

    def __init__(self, total: int | None):
        self._total = total
        self._bar = None

    def update(self, rows: int, summary) -> None:
        if self._bar is None:
            from tqdm import tqdm
            self._bar = tqdm(total=self._total, unit=" proofs", unit_scale=True,
                             dynamic_ncols=True, file=sys.stderr)
        self._bar.set_postfix_str(f"{summary.counts.get('ACCEPTED', 0):,} accepted")
        self._bar.update(rows)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def print_summary(summary: ReplaySummary, committed: bool, out_path: str | None, out: TextIO) -> None:
    """The replay's closing report: rows, rate, stage timings, counts by code, rewards."""
    print(f"replayed {summary.rows:,} proofs in {summary.batches:,} batches "
          f"({summary.seconds:.1f} s, {summary.proofs_per_second:,.0f} proofs/s)", file=out)
    if summary.stage_seconds:
        stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in summary.stage_seconds.items())
        print(f"stages: {stages}", file=out)
    for worker, rows in sorted(summary.workers.items()):
        seconds = summary.worker_seconds[worker]
        print(f"worker {worker}: {rows:,} proofs checked, {rows / seconds if seconds else 0:,.0f} proofs/s "
              f"while busy", file=out)
    if summary.resumed_from_row:
        print(f"resumed after row {summary.resumed_from_row:,}", file=out)
    for code, n in sorted(summary.counts.items(), key=lambda item: -item[1]):
        share = n / summary.rows if summary.rows else 0
        print(f"  {code:<20} {n:>10,}  {share:6.1%}", file=out)
    print(f"rewards paid: {summary.reward_micro / 1e6:,.6f} STEP", file=out)
    print("committed to the database" if committed
          else "state kept in memory only (--no-commit)", file=out)
    if out_path:
        print(f"verdicts: {out_path}", file=out)
