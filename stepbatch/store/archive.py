"""The archive of committed batches: what a restored backup lacks, kept apart from the database.

A service started with `--archive DIR` writes every batch it commits, before it answers the batch's
requests, as one Parquet file: the batch's proofs in PROOF_SCHEMA (their `received_at` included,
which CLOCK_DRIFT is measured against) and, in the file's metadata, its batch id, its batch time and
the commit sequence number it was committed at. Replaying the archived batches after a backup's
sequence number, in sequence order, with their own ids and times, gives each the verdicts it had,
so a restored database reaches the state the lost one had (the same `state_digest`).

Put the archive on another disk (or ship it off the machine) than the database: it is what makes
the recovery point the last answered request instead of the last backup.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import re
import time

import pyarrow as pa
import pyarrow.parquet as pq

_NAME = re.compile(r"^(\d{12})\.(.+)\.parquet$")
_BATCH_ID, _BATCH_TIME, _SEQ = b"stepbatch.batch_id", b"stepbatch.batch_time_ms", b"stepbatch.seq"


@dataclasses.dataclass(frozen=True)
class ArchivedBatch:
    seq: int  # the commit sequence number the batch was committed at
    batch_id: str
    path: pathlib.Path

    def read(self) -> tuple[pa.Table, int]:
        """The batch's proofs and its batch time in epoch milliseconds."""
        table = pq.read_table(self.path)
        return table.replace_schema_metadata(None), int(table.schema.metadata[_BATCH_TIME])


@dataclasses.dataclass
class ArchiveReplay:
    batches: int = 0
    rows: int = 0
    skipped: int = 0  # archived batches the database already held
    seconds: float = 0.0


class BatchArchive:
    """Writes committed batches into `directory`, one durable file each."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, seq: int, batch_id: str, batch_time_ms: int, proofs: pa.Table) -> pathlib.Path:
        metadata = {_BATCH_ID: batch_id.encode(), _BATCH_TIME: str(int(batch_time_ms)).encode(),
                    _SEQ: str(int(seq)).encode()}
        path = self.directory / f"{seq:012d}.{_file_safe(batch_id)}.parquet"
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as out:
            pq.write_table(proofs.replace_schema_metadata(metadata), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
        return path


def archived_batches(directory: str | os.PathLike, after_seq: int = 0) -> list[ArchivedBatch]:
    """The archived batches committed after `after_seq`, in commit order."""
    batches = []
    for path in pathlib.Path(directory).iterdir():
        match = _NAME.match(path.name)
        if match and int(match.group(1)) > after_seq:
            metadata = pq.read_schema(path).metadata or {}
            batches.append(ArchivedBatch(int(match.group(1)), metadata[_BATCH_ID].decode(), path))
    return sorted(batches, key=lambda batch: batch.seq)


def replay_archive(validator, directory: str | os.PathLike, after_seq: int, progress=None) -> ArchiveReplay:
    """Finalize every archived batch after `after_seq` with its own id and batch time, in commit order;
    a batch the store already holds is left as it is. `progress(report)` after each batch."""
    from stepbatch.pipeline import Pipeline

    report = ArchiveReplay()
    started = time.perf_counter()
    pending: collections.deque = collections.deque()
    with Pipeline(validator) as pipeline:
        for batch in archived_batches(directory, after_seq):
            if validator.store.committed(batch.batch_id) is not None:
                report.skipped += 1
                continue
            proofs, batch_time_ms = batch.read()
            pending.append(pipeline.submit(proofs, batch.batch_id, batch_time_ms))
            while pending and pending[0].done():
                pending.popleft().result()
            report.batches += 1
            report.rows += proofs.num_rows
            if progress is not None:
                progress(report)
        for future in pending:
            future.result()
    report.seconds = time.perf_counter() - started
    return report


def _file_safe(batch_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:@+-]", "_", batch_id)
