"""The stateless stage of a replay on a Dask distributed cluster (SPEC §9).

The driver reads the inputs in order and sends each batch's rows to the cluster, where a worker runs
checks 1-5 (field rules, version, accuracy, clock drift, signature recovery: ~90% of the work) and
returns them; the driver applies the results in input order with the sequential resolver and commits,
exactly as a single-process replay does. At most `in_flight` batches are out at once, which bounds
the driver's memory. A worker that dies has its batches recomputed by Dask on another worker; the
driver applies each batch once, when its turn in the input order comes.

`ClusterAddress` names the cluster: `local` or `local:N` (a local cluster of N worker processes,
started for the run and stopped after it), or `tcp://scheduler:8786` (an existing Dask cluster).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import pyarrow as pa

from stepbatch.checks import StatelessResult
from stepbatch.config import Config

_WORKER_STATE: dict = {}


class ClusterError(RuntimeError):
    """The cluster cannot be reached or started; the message says which and why."""


@dataclasses.dataclass
class StatelessTask:
    """What a worker sends back for one batch."""

    stateless: StatelessResult
    worker: str
    seconds: float
    rows: int


def stateless_on_worker(proofs: pa.Table, config: Config, batch_time_ms: int | None) -> StatelessTask:
    """Checks 1-5 of one batch, on a worker (its signature recoverer is kept for the worker's life)."""
    from stepbatch.checks import stateless_checks
    from stepbatch.crypto import recovery
    from stepbatch.ingest import read_proofs

    started = time.perf_counter()
    recoverer = _WORKER_STATE.get(config.threads)
    if recoverer is None:
        recoverer = _WORKER_STATE[config.threads] = recovery.SignatureRecoverer(config.threads)
    try:
        from distributed import get_worker
        worker = get_worker().address
    except (ImportError, ValueError):
        worker = f"pid {os.getpid()}"
    result = stateless_checks(read_proofs(proofs), config, batch_time_ms, recoverer)
    return StatelessTask(result, worker, time.perf_counter() - started, proofs.num_rows)


class DaskCluster:
    """A Dask client for the replay: a local cluster it starts, or an existing scheduler."""

    def __init__(self, address: str, config: Config, in_flight: int | None = None):
        try:
            from distributed import Client, LocalCluster
        except ImportError as err:
            raise ClusterError("replay --cluster needs Dask distributed: pip install -e '.[cluster]'") from err
        self.config = config
        self._local = None
        # Dask narrates every start and stop of its scheduler and workers at INFO; a replay's output
        # is its progress and summary.
        logging.getLogger("distributed").setLevel(logging.WARNING)
        kind, _, count = address.partition(":")
        try:
            if kind == "local":
                workers = int(count) if count else (os.cpu_count() or 1)
                if workers < 1:
                    raise ClusterError(f"--cluster {address}: need at least one worker")
                # One process per worker, each recovering signatures on one thread: the processes are
                # the parallelism, as they would be on separate machines.
                self._local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR,
                                           env={"NUMBA_NUM_THREADS": "1"})
                self.client = Client(self._local)
                self.worker_config = dataclasses.replace(config, signature_threads=1)
            elif address.startswith("tcp://"):
                self.client = Client(address, timeout="30s")
                self.worker_config = config
            else:
                raise ClusterError(f"--cluster {address}: give local, local:N or tcp://HOST:PORT of a Dask "
                                   f"scheduler (Ray addresses are not supported: stepbatch uses Dask)")
        except ClusterError:
            self.close()
            raise
        except (OSError, TimeoutError, RuntimeError) as err:
            self.close()
            raise ClusterError(f"cannot reach the Dask cluster at {address}: {err}") from err
        self.workers = max(len(self.client.scheduler_info()["workers"]), 1)
        self.in_flight = in_flight or 2 * self.workers + 2

    def submit(self, proofs: pa.Table, batch_time_ms: int | None, key: str):
        """A future of the batch's `StatelessTask`; a task whose worker dies is run again elsewhere."""
        data = self.client.scatter(proofs, hash=False)
        return self.client.submit(stateless_on_worker, data, self.worker_config, batch_time_ms, key=key,
                                  retries=3, pure=False)

    def result(self, future, proofs: pa.Table, key: str, attempts: int = 3) -> StatelessTask:
        """The batch's `StatelessTask`. A worker that dies holding the batch's rows (they are sent to one
        worker ahead of its task) takes them with it; the batch is then sent again from here."""
        attempt = 1
        while True:
            try:
                return future.result()
            except Exception as err:  # lost data, a cancelled task, a worker gone: all are re-sent
                if attempt == attempts:
                    raise ClusterError(f"batch {key} failed on the cluster {attempts} times: {err}") from err
                future = self.submit(proofs, None, key=f"{key}-again{attempt}")
                attempt += 1

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self._local is not None:
            self._local.close()
            self._local = None

    def __enter__(self) -> "DaskCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
