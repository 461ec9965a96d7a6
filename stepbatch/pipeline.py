"""Finalizing a stream of batches with each commit overlapped by the next batch's validation.

`submit` validates a batch at once, against the state after every batch submitted before it (their
effects are staged in the store's cache ahead of their commits), and queues its commit for one
committer thread; its future resolves to the committed `BatchResult`. Commits happen in submission
order, so the one-by-one semantics are those of calling `Validator.finalize` on each batch in turn.

If a commit fails because another writer moved the state, that batch and every batch queued after it
(all validated against state that never became durable) are finalized again in order, one at a time,
against fresh state, while `submit` waits. If a commit fails for any other reason, nothing after it is
committed: every later future fails and `submit` raises.

A store without `stage` (the MemoryStore, whose commit costs nothing) is finalized in the caller's
thread, one batch after another.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time

from stepbatch.store.base import StaleStateError, StoreError
from stepbatch.validator import BatchResult, Validator


class PipelineError(StoreError):
    """A batch before this one failed to commit, so this one was not committed."""


class Pipeline:
    def __init__(self, validator: Validator, depth: int = 1):
        self.validator = validator
        self.overlaps = hasattr(validator.store, "stage")
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._gate = threading.Lock()  # held while a batch is validated and staged, or while recovering
        self._error: BaseException | None = None
        self._epoch = 0  # advanced by every recovery: what was validated before it is re-done
        self._committer = None
        if self.overlaps:
            self._committer = threading.Thread(target=self._commit_loop, name="stepbatch-commit", daemon=True)
            self._committer.start()

    def submit(self, batch, batch_id: str, batch_time=None, stateless=None) -> concurrent.futures.Future:
        """Validate `batch` now and commit it after the batches before it; a future of its result.
        `stateless` is the batch's stateless stage when it was computed elsewhere (`Validator.validate`)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if not self.overlaps:
            try:
                if stateless is None:
                    future.set_result(self.validator.finalize(batch, batch_id, batch_time))
                else:
                    future.set_result(self._finalize_with(batch, batch_id, batch_time, stateless))
            except BaseException as err:
                future.set_exception(err)
            return future
        self._check()
        with self._gate:
            self._check()
            stored = self.validator.store.committed(batch_id)
            if stored is not None:
                # A batch committed before (a resumed run): finalize answers from the store.
                future.set_result(self.validator.finalize(batch, batch_id, batch_time))
                return future
            result = self.validator.validate(batch, batch_id, batch_time, stateless=stateless)
            self.validator.store.stage(result.outcome)
            epoch = self._epoch
        self._queue.put((epoch, result, future, batch, batch_id, batch_time))
        return future

    def _finalize_with(self, batch, batch_id: str, batch_time, stateless):
        """Finalize on a store without staging (MemoryStore), using a stateless stage computed elsewhere;
        a conflict is finalized again from scratch."""
        if self.validator.store.committed(batch_id) is not None:
            return self.validator.finalize(batch, batch_id, batch_time)
        result = self.validator.validate(batch, batch_id, batch_time, stateless=stateless)
        try:
            self.validator.store.commit(result.outcome)
        except StaleStateError:
            return self.validator.finalize(batch, batch_id, batch_time)
        result.committed = True
        return result

    @property
    def failed(self) -> bool:
        """Whether a commit failed (then nothing after it commits, and `submit` raises)."""
        return self._error is not None

    def drain(self) -> None:
        """Wait until every submitted batch is committed (or has failed)."""
        if self.overlaps:
            self._queue.join()
        self._check()

    def close(self) -> None:
        """Commit what is queued, then stop the committer."""
        if self._committer is not None:
            self._queue.join()
            self._queue.put(None)
            self._committer.join()
            self._committer = None

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self) -> None:
        if self._error is not None:
            raise PipelineError(f"an earlier batch failed to commit: {self._error}") from self._error

    def _commit_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            epoch, result, future, batch, batch_id, batch_time = item
            try:
                if self._error is not None:
                    future.set_exception(PipelineError(f"batch {batch_id} was not committed: an earlier "
                                                       f"batch failed ({self._error})"))
                    continue
                if epoch != self._epoch:
                    # Validated against staged state that a recovery since has thrown away.
                    self._recover(item)
                    continue
                try:
                    started = time.perf_counter()
                    self.validator.store.commit(result.outcome)
                    result.timings["commit"] = time.perf_counter() - started
                    result.committed = True
                    future.set_result(result)
                except StaleStateError:
                    self._recover(item)
                except BaseException as err:
                    self._fail(future, err)
            finally:
                self._queue.task_done()

    def _recover(self, failed: tuple) -> None:
        """Finalize the failed batch and every queued one again, in order, against fresh state."""
        with self._gate:
            self._epoch += 1
            self.validator.store.discard_staged()
            redo = [failed]
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                self._queue.task_done()
                if item is None:
                    self._queue.put(None)
                    break
                redo.append(item)
            for _epoch, _result, future, batch, batch_id, batch_time in redo:
                if self._error is not None:
                    future.set_exception(PipelineError(f"batch {batch_id} was not committed: an earlier "
                                                       f"batch failed ({self._error})"))
                    continue
                try:
                    future.set_result(self.validator.finalize(batch, batch_id, batch_time))
                except BaseException as err:
                    self._fail(future, err)

    def _fail(self, future: concurrent.futures.Future, err: BaseException) -> None:
        self._error = err
        future.set_exception(err)


def finalize_all(validator: Validator, batches, depth: int = 1):
    """(batch id, BatchResult) for each (batch, batch_id, batch_time) in order, commits overlapped."""
    with Pipeline(validator, depth) as pipeline:
        pending: list[tuple[str, concurrent.futures.Future]] = []
        for batch, batch_id, batch_time in batches:
            pending.append((batch_id, pipeline.submit(batch, batch_id, batch_time)))
            while pending and pending[0][1].done():
                done_id, future = pending.pop(0)
                yield done_id, future.result()
        for done_id, future in pending:
            yield done_id, future.result()


__all__ = ["Pipeline", "PipelineError", "finalize_all", "BatchResult"]
