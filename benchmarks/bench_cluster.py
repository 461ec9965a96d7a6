"""Replay beyond one machine: single-process replay and `--cluster local:N` against validate-only on
the same rows, and the stateless stage mapped by Dask or Ray (SPEC §9).

    python benchmarks/bench_cluster.py --proofs 200000 --workers 2
    python benchmarks/bench_cluster.py --engines-only --engine ray    # in a virtualenv with ray

Prints, measured in one run on the same cores: validate-only (every stage in process, all cores),
single-process replay (--no-commit), `--cluster local:N` replay, their ratios, the per-core rate of
the stateless stage and the resolver's rate, and a scaling estimate for 64 and 512 cores.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import pyarrow.parquet as pq  # noqa: E402

from stepbatch import MemoryStore, Validator  # noqa: E402
from stepbatch.config import Config  # noqa: E402
from stepbatch.tools import gen  # noqa: E402
from stepbatch.tools.replay import replay  # noqa: E402


def _files(folder: pathlib.Path, proofs: int, parts: int):
    traffic = gen.generate(walkers=max(proofs // 50, 100), proofs=proofs, seed=5)
    step = -(-traffic.proofs.num_rows // parts)
    paths = []
    for k in range(parts):
        path = folder / f"part-{k}.parquet"
        pq.write_table(traffic.proofs.slice(k * step, step), path)
        paths.append(str(path))
    return traffic, paths


def _validate_only(traffic, batch: int, config: Config) -> tuple[float, dict]:
    with Validator(MemoryStore(traffic.triangles), config) as validator:
        validator.validate(traffic.proofs.slice(0, 1000))
        stages: dict = {}
        started = time.perf_counter()
        for first in range(0, traffic.proofs.num_rows, batch):
            result = validator.validate(traffic.proofs.slice(first, batch), f"v{first}")
            validator.store.commit(result.outcome)
            for stage, seconds in result.timings.items():
                stages[stage] = stages.get(stage, 0.0) + seconds
        return traffic.proofs.num_rows / (time.perf_counter() - started), stages


def _replay(traffic, paths, batch: int, config: Config, cluster=None) -> float:
    with Validator(MemoryStore(traffic.triangles, keep_verdicts=False), config) as validator:
        summary = replay(paths, validator, commit=False, batch_size=batch, cluster=cluster)
    return summary.rows / summary.seconds


def _engine_map(engine: str, traffic, workers: int, batch: int) -> float:
    """The stateless stage of every batch mapped by the engine over `workers` processes: rows/s."""
    from stepbatch.tools.cluster import stateless_on_worker

    config = Config(signature_threads=1)
    tables = [traffic.proofs.slice(first, batch) for first in range(0, traffic.proofs.num_rows, batch)]
    if engine == "dask":
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          env={"NUMBA_NUM_THREADS": "1"}) as local, \
                Client(local) as client:
            client.gather(client.map(stateless_on_worker, client.scatter(tables[:workers]), [config] * workers,
                                     [None] * workers))
            started = time.perf_counter()
            client.gather(client.map(stateless_on_worker, client.scatter(tables), [config] * len(tables),
                                     [None] * len(tables), pure=False))
            return traffic.proofs.num_rows / (time.perf_counter() - started)
    import ray
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"NUMBA_NUM_THREADS": "1"}})
    try:
        remote = ray.remote(num_cpus=1)(stateless_on_worker)
        ray.get([remote.remote(t, config, None) for t in tables[:workers]])
        started = time.perf_counter()
        ray.get([remote.remote(t, config, None) for t in tables])
        return traffic.proofs.num_rows / (time.perf_counter() - started)
    finally:
        ray.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proofs", type=int, default=200_000)
    parser.add_argument("--parts", type=int, default=4, help="Parquet files the archive is split into")
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--engine", choices=("dask", "ray"), default="dask")
    parser.add_argument("--engines-only", action="store_true", help="only the engine map comparison")
    args = parser.parse_args()
    config = Config.from_env()
    with tempfile.TemporaryDirectory() as folder:
        traffic, paths = _files(pathlib.Path(folder), args.proofs, args.parts)
        rows = traffic.proofs.num_rows
        print(f"{rows:,} proofs in {args.parts} Parquet files, batches of {args.batch_size:,}, "
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
        mapped = _engine_map(args.engine, traffic, args.workers, args.batch_size)
        print(f"{args.engine}: stateless stage mapped over {args.workers} worker processes: {mapped:,.0f} proofs/s")
        if args.engines_only:
            return 0
        validate_rate, stages = _validate_only(traffic, args.batch_size, config)
        single = _replay(traffic, paths, args.batch_size, config)
        from stepbatch.tools.cluster import DaskCluster
        with DaskCluster(f"local:{args.workers}", config) as cluster:
            _replay(traffic, paths[:1], args.batch_size, config, cluster)  # workers warm (kernels loaded)
            clustered = _replay(traffic, paths, args.batch_size, config, cluster)
    stateless_s = sum(stages.get(k, 0.0) for k in ("ingest", "gates", "geometry", "signatures"))
    driver_s = sum(stages.get(k, 0.0) for k in ("state", "resolve", "verdicts"))
    per_core = rows / stateless_s / config.threads
    driver_rate = rows / driver_s
    resolver_rate = rows / stages["resolve"]
    print()
    print("| run | proofs/s | vs validate-only |")
    print("|---|---|---|")
    print(f"| validate-only, in process ({config.threads} threads) | {validate_rate:,.0f} | 1.00 |")
    print(f"| replay, single process (--no-commit) | {single:,.0f} | {single / validate_rate:.2f} |")
    print(f"| replay --cluster local:{args.workers} (--no-commit) | {clustered:,.0f} | "
          f"{clustered / validate_rate:.2f} |")
    print()
    print(f"stateless stage per core: {per_core:,.0f} proofs/s; driver's sequential part (state, resolve, "
          f"verdicts): {driver_rate:,.0f} proofs/s, of which the resolver kernel alone {resolver_rate:,.0f}/s")
    for cores in (64, 512):
        estimate = min(cores * per_core, driver_rate)
        limit = "the driver's sequential part" if cores * per_core > driver_rate else "the workers' cores"
        print(f"estimate for {cores} cores: {estimate:,.0f} proofs/s (limited by {limit})")
    print(f"the sequential part becomes the limit from about {driver_rate / per_core:,.0f} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
