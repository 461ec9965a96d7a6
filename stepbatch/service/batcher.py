"""The service's micro-batcher: requests join the open batch, which closes on size or wait
(`stepbatch.batching.BatchPolicy`, the load test's policy), is validated on a worker thread and
committed through `stepbatch.pipeline.Pipeline` while the next batch validates. Every request is
answered when its batch's transaction is done, with its own verdict rows.

A request is a group of rows (one for `POST /proof/submit`, many for `POST /proofs`); a group never
spans two batches, and a group larger than the batch size is a batch of its own. The queue is
bounded in rows: `submit` raises `Overloaded` when a request would exceed it, before anything is
queued, even into an empty queue (so one request never holds more rows than the queue may). `stop` closes the open batch, answers everything that was accepted and waits for the last
commit: nothing accepted is left half done.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import itertools
import logging
import time
import uuid

import numpy as np
import pyarrow as pa

from stepbatch import logs
from stepbatch.batching import BatchPolicy
from stepbatch.ingest.sources import read_proofs
from stepbatch.pipeline import Pipeline
from stepbatch.protocol import Code
from stepbatch.schema import PROOF_COLUMNS
from stepbatch.store.archive import BatchArchive
from stepbatch.validator import BatchResult, Validator
from stepbatch.verdicts import balances_after

log = logging.getLogger("stepbatch.service")


class Overloaded(RuntimeError):
    """The queue is full: the request was not accepted (answer 503 with Retry-After)."""


class ShuttingDown(RuntimeError):
    """The service is stopping and accepts no new proofs."""


@dataclasses.dataclass
class Answer:
    """What one request gets back: its rows of the batch's verdicts and what a caller shows of them."""

    verdicts: pa.Table  # VERDICT_SCHEMA rows of this request, `index` renumbered from 0
    balance_micro: np.ndarray  # int64 per row: the account's balance after the row; -1 when rejected
    batch_id: str
    committed_at: dt.datetime
    height: np.ndarray | None = None  # int64 per row, behind a gateway: the block that holds the row


@dataclasses.dataclass
class _Request:
    rows: list | pa.Table  # API- or flat-shape dicts, or PROOF_SCHEMA rows already read
    arrival_s: float
    future: asyncio.Future

    @property
    def count(self) -> int:
        return len(self.rows) if isinstance(self.rows, list) else self.rows.num_rows


class LiveBatcher:
    def __init__(self, validator: Validator, policy: BatchPolicy, queue_limit: int, metrics=None,
                 run_id: str | None = None, archive: BatchArchive | None = None, make_pipeline=None):
        self.validator = validator
        # What commits a closed batch: a Pipeline on the validator's store, or a gateway's
        # `stepbatch.service.chain.ChainPipeline` that broadcasts it to a CometBFT node.
        self.make_pipeline = make_pipeline or (lambda: Pipeline(validator))
        self.archive = archive
        self.policy = policy
        self.queue_limit = queue_limit
        self.metrics = metrics
        self.run_id = run_id or f"serve-{uuid.uuid4().hex[:12]}"
        self._numbers = itertools.count()
        self._waiting: collections.deque[_Request] = collections.deque()
        self._waiting_rows = 0
        self._in_flight: set[asyncio.Future] = set()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._pipeline: Pipeline | None = None
        self.last_batch: dict | None = None

    @property
    def depth(self) -> int:
        """Rows waiting for a batch."""
        return self._waiting_rows

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._pipeline = await asyncio.to_thread(self.make_pipeline)
        self._task = asyncio.create_task(self._run(), name="stepbatch-batcher")

    def submit(self, rows: list | pa.Table) -> asyncio.Future:
        """Queue a request's rows: dicts as `read_proofs` takes them (read together with the rest of
        the batch), or a PROOF_SCHEMA table. A future of the request's `Answer`."""
        if self._stopping:
            raise ShuttingDown("the service is shutting down")
        request = _Request(rows, time.monotonic(), asyncio.get_running_loop().create_future())
        if self._waiting_rows + request.count > self.queue_limit:
            raise Overloaded(f"{self._waiting_rows:,} proofs are waiting (queue limit {self.queue_limit:,})")
        self._waiting.append(request)
        self._waiting_rows += request.count
        self._gauge()
        self._arrived.set()
        return request.future

    def drain(self) -> None:
        """Stop accepting proofs and close the open batch now (on the event loop's thread)."""
        self._stopping = True
        if self._arrived is not None:
            self._arrived.set()

    def drain_soon(self) -> None:
        """`drain` from any thread or a signal handler."""
        self._stopping = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.drain)

    async def stop(self) -> None:
        """Close the open batch, answer every accepted request, wait for the last commit."""
        self.drain()
        if self._task is not None:
            await self._task
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._pipeline is not None:
            await asyncio.to_thread(self._pipeline.close)

    # ------------------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            if not self._waiting:
                if self._stopping:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            now_s = time.monotonic()
            if not self._stopping and self.policy.closes(self._waiting_rows, self._waiting[0].arrival_s,
                                                         now_s) is None:
                self._arrived.clear()
                timeout = self.policy.deadline_s(self._waiting[0].arrival_s) - now_s
                try:
                    await asyncio.wait_for(self._arrived.wait(), timeout=max(timeout, 0.0))
                except asyncio.TimeoutError:
                    pass
                continue
            await self._process(self._take())

    def _take(self) -> list[_Request]:
        """The requests of the next batch: in arrival order, up to the batch size in rows (a first
        request larger than that alone)."""
        taken = [self._waiting.popleft()]
        rows = taken[0].count
        while self._waiting and rows + self._waiting[0].count <= self.policy.batch_size:
            request = self._waiting.popleft()
            taken.append(request)
            rows += request.count
        self._waiting_rows -= rows
        self._gauge()
        return taken

    async def _process(self, requests: list[_Request]) -> None:
        batch_id = f"{self.run_id}-{next(self._numbers):08d}"
        closed_s = time.monotonic()
        if self.metrics is not None:
            for request in requests:
                self.metrics.queue_wait.observe(closed_s - request.arrival_s)
            self.metrics.batch_rows.observe(sum(request.count for request in requests))
        batch_time_ms = int(time.time() * 1000)
        try:
            future = await asyncio.to_thread(self._submit, requests, batch_id, batch_time_ms)
        except Exception as err:
            self._failed(requests, batch_id, err)
            return
        done = asyncio.wrap_future(future)
        self._in_flight.add(done)
        done.add_done_callback(lambda finished: self._answer(requests, batch_id, finished, closed_s))

    def _submit(self, requests: list[_Request], batch_id: str, batch_time_ms: int):
        table = _batch_table(requests)
        if self._pipeline.failed:
            # A failed commit stops a pipeline for good (nothing after it commits); the batches that
            # were waiting behind it have been answered with the error, and the service goes on.
            self._pipeline.close()
            self._pipeline = self.make_pipeline()
        future = self._pipeline.submit(table, batch_id, batch_time_ms)
        if self.archive is not None:
            # Added before the event loop's callback, so it runs first, on the committer's thread:
            # a batch is archived before any of its requests is answered.
            future.add_done_callback(lambda done: self._archived(done, table, batch_id, batch_time_ms))
        return future

    def _archived(self, done, table: pa.Table, batch_id: str, batch_time_ms: int) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        try:
            self.archive.write(done.result().outcome.prior.seq + 1, batch_id, batch_time_ms, table)
        except OSError as err:
            logs.event(log, "archive_failed", logging.ERROR, batch_id=batch_id, error=str(err)[:300])
            logs.report_batch_failure(err, batch_id, _proof_ids(table))

    def _answer(self, requests: list[_Request], batch_id: str, done: asyncio.Future, closed_s: float) -> None:
        self._in_flight.discard(done)
        if done.exception() is not None:
            self._failed(requests, batch_id, done.exception())
            return
        result: BatchResult = done.result()
        committed_at = dt.datetime.now(dt.timezone.utc)
        balances = getattr(result, "balance_micro", None)
        if balances is None:
            balances = balances_after(result.verdicts, result.outcome)
        heights = getattr(result, "height", None)
        first = 0
        answered_s = time.monotonic()
        for request in requests:
            if self.metrics is not None:
                self.metrics.answered.observe(answered_s - request.arrival_s)
            n = request.count
            verdicts = result.verdicts.slice(first, n)
            verdicts = verdicts.set_column(0, "index", pa.array(np.arange(n, dtype=np.int64)))
            if not request.future.done():
                request.future.set_result(Answer(verdicts, balances[first:first + n],
                                                 result.batch_id if heights is not None else batch_id, committed_at,
                                                 None if heights is None else heights[first:first + n]))
            first += n
        self._observe(result, batch_id, closed_s)

    def _failed(self, requests: list[_Request], batch_id: str, err: BaseException) -> None:
        logs.event(log, "batch_failed", logging.ERROR, batch_id=batch_id, error=str(err)[:300])
        logs.report_batch_failure(err, batch_id, _request_proof_ids(requests))
        if self.metrics is not None:
            self.metrics.db_errors.inc()
        for request in requests:
            if not request.future.done():
                request.future.set_exception(err)

    def _observe(self, result: BatchResult, batch_id: str, closed_s: float) -> None:
        timings = result.timings
        validate_s = sum(v for k, v in timings.items() if k != "commit")
        if self.metrics is not None:
            self.metrics.validate.observe(validate_s)
            self.metrics.commit.observe(timings.get("commit", 0.0))
            for code, count in result.counts.items():
                self.metrics.proofs.labels(code=code).inc(count)
        self.last_batch = {"batchId": batch_id, "rows": result.verdicts.num_rows,
                           "committedAt": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")}
        # In front of a chain the batch is committed as `{chain_id}:{height}` of its (last) block.
        block = {"block": result.batch_id} if result.batch_id != batch_id else {}
        logs.event(log, "batch", batch_id=batch_id, **block, rows=result.verdicts.num_rows, counts=result.counts,
                   validate_ms=round(validate_s * 1000, 1), commit_ms=round(timings.get("commit", 0.0) * 1000, 1),
                   total_ms=round((time.monotonic() - closed_s) * 1000, 1))

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._waiting_rows)


def _batch_table(requests: list[_Request]) -> pa.Table:
    """The batch in PROOF_SCHEMA, request after request; consecutive dict rows are read together."""
    parts, documents = [], []
    for request in requests:
        if isinstance(request.rows, list):
            documents.extend(request.rows)
            continue
        if documents:
            parts.append(read_proofs(documents))
            documents = []
        parts.append(request.rows)
    if documents:
        parts.append(read_proofs(documents))
    return pa.concat_tables([part.select(PROOF_COLUMNS) for part in parts])


def _proof_ids(table: pa.Table) -> list[str]:
    """`account:nonce` of the batch's first proofs, for an error report."""
    head = table.slice(0, logs.PROOF_IDS_REPORTED)
    return [f"{account}:{nonce}" for account, nonce in zip(head.column("account").to_pylist(),
                                                           head.column("nonce").to_pylist())]


def _request_proof_ids(requests: list[_Request]) -> list[str]:
    ids: list[str] = []
    for request in requests:
        if isinstance(request.rows, pa.Table):
            ids += _proof_ids(request.rows)
        else:
            for row in request.rows:
                fields = row.get("payload", row) if isinstance(row, dict) else {}
                fields = fields if isinstance(fields, dict) else {}
                ids.append(f"{fields.get('account')}:{fields.get('nonce')}")
        if len(ids) >= logs.PROOF_IDS_REPORTED:
            break
    return ids[:logs.PROOF_IDS_REPORTED]
