"""The state layer on one served database: committed against validate-only throughput on the same
batches, cost as the history grows, and the memory of the state cache.

Starts `stepbatch db serve` as its own process on a fresh data directory (unless MONGODB_URI is set),
generates realistic traffic (walkers that come back in every batch, attacks, subdivisions on the way),
cuts it into batches and measures, in one run on the same cores:

(a) validate-only: each batch validated and applied to a MemoryStore, so the state evolves exactly as
    it does in the database; proofs/s over all batches;
(b) committed: each batch finalized against the served database through `stepbatch.pipeline` (batch
    N+1 validates while N commits); proofs/s over all batches, and per batch as the history grows;
(c) ratio b/a, the first tenth of the batches against the last tenth (proofs/s, and batch time per
    document written), the cache's figures and the process's peak RSS. `--plot` draws both against
    the proofs committed so far.

With `--cache-only`, no database: every validated batch is written through a `StateCache` as a
commit would, and the cache's size is reported (its content does not depend on the database).

    .venv/bin/python benchmarks/bench_state.py [--proofs 1000000] [--walkers 600] [--batch 6000]
                                                [--plot benchmarks/results/state-history.png]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from stepbatch import MemoryStore, Validator
from stepbatch.config import Config
from stepbatch.mesh.regions import IdRegion
from stepbatch.pipeline import finalize_all
from stepbatch.store.cache import StateCache
from stepbatch.store.mongo import MongoStore
from stepbatch.tools import gen


def serve_database(data_dir: str) -> tuple[subprocess.Popen, str]:
    """`stepbatch db serve` in the background; its process and MONGODB_URI."""
    process = subprocess.Popen([sys.executable, "-m", "stepbatch", "db", "serve", "--data-dir", data_dir],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("MONGODB_URI="):
            return process, line.strip().split("=", 1)[1]
    raise SystemExit(f"stepbatch db serve did not start: {process.stderr.read()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proofs", type=int, default=1_000_000)
    parser.add_argument("--walkers", type=int, default=600)
    parser.add_argument("--batch", type=int, default=6_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--cache-only", action="store_true")
    args = parser.parse_args()
    config = Config.from_env(signature_threads=os.cpu_count())

    started = time.perf_counter()
    traffic = gen.generate(walkers=args.walkers, proofs=args.proofs, seed=args.seed)
    proofs = traffic.proofs.drop_columns(["expected_code", "attack"])
    cuts = list(range(0, proofs.num_rows, args.batch))
    print(f"generated {proofs.num_rows:,} proofs of {args.walkers:,} walkers in {time.perf_counter() - started:.0f} s; "
          f"{len(cuts)} batches of {args.batch:,}", flush=True)

    memory = MemoryStore(traffic.triangles, keep_verdicts=False)
    cache = StateCache() if args.cache_only else None
    started = time.perf_counter()
    with Validator(memory, config) as validator:
        for first in cuts:
            result = validator.validate(proofs.slice(first, args.batch), f"b{first}")
            memory.commit(result.outcome)
            if cache is not None:
                cache.apply(result.outcome)
    validate_s = time.perf_counter() - started
    if cache is not None:
        figures = cache.figures()
        print(f"cache after {proofs.num_rows:,} proofs: {figures['accounts']:,} accounts, "
              f"{figures['triangles']:,} triangles, {figures['nonces']:,} nonces, "
              f"{figures['bytes'] / 2**20:.1f} MiB; process peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
        return
    validate_rate = proofs.num_rows / validate_s
    print(f"(a) validate-only: {validate_rate:,.0f} proofs/s ({validate_s:.1f} s)", flush=True)

    server = None
    uri = os.environ.get("MONGODB_URI")
    data_dir = None
    if not uri:
        data_dir = tempfile.mkdtemp(prefix="stepbatch-bench-state-")
        server, uri = serve_database(data_dir)
    try:
        with MongoStore(uri, "bench_state", config=config) as store:
            store.client.drop_database("bench_state")
        with MongoStore(uri, "bench_state", config=config) as store, Validator(store, config) as validator:
            store.declare(IdRegion.of_ids(traffic.triangles))
            per_batch, stages, committed = [], {}, 0
            started = last = time.perf_counter()
            batches = ((proofs.slice(first, args.batch), f"b{first}", None) for first in cuts)
            written, kinds = 0, []
            for _batch_id, result in finalize_all(validator, batches):
                now = time.perf_counter()
                writes = sum(store.writes.values()) - written
                written += writes
                per_batch.append((result.verdicts.num_rows, now - last, writes))
                kinds.append(dict(store.writes))
                last = now
                committed += result.counts.get("ACCEPTED", 0)
                for stage, seconds in result.timings.items():
                    stages[stage] = stages.get(stage, 0.0) + seconds
                if len(per_batch) % max(len(cuts) // 20, 1) == 0:
                    rows, seconds, writes = per_batch[-1]
                    print(f"  {sum(r for r, _, _ in per_batch):,} proofs: {rows / seconds:,.0f} proofs/s, "
                          f"{writes:,} documents written, {seconds / max(writes, 1) * 1e6:,.0f} µs each "
                          f"in the last batch", flush=True)
            commit_s = time.perf_counter() - started
            cache = store.cache.figures()
            writes_by_kind = dict(store.writes)
            assert committed == store.accepted_count()
            stats = store.db.command("dbStats")
            documents = {name: store.db[name].estimated_document_count() for name in
                         ("triangles", "accounts", "nonces", "verdicts", "batches")}
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    on_disk = sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(data_dir)
                  for name in names) if data_dir else None

    commit_rate = proofs.num_rows / commit_s
    rates = np.array([rows / seconds for rows, seconds, _ in per_batch])
    write_us = np.array([seconds / max(writes, 1) * 1e6 for _, seconds, writes in per_batch])
    tenth = max(len(rates) // 10, 1)
    first, last_tenth = rates[:tenth].mean(), rates[-tenth:].mean()
    first_us, last_us = write_us[:tenth].mean(), write_us[-tenth:].mean()
    # Batch time ≈ inserts · a + updates · b: fitted on each half, a and b say whether a document
    # costs more as the history grows, whatever the mix of inserts and updates in the batches.
    inserted = np.diff([0] + [sum(v for k, v in w.items() if k.endswith(("inserts", "nonces", "chunks")))
                              for w in kinds])
    updated = np.diff([0] + [w.get("account_updates", 0) + w.get("triangle_updates", 0) for w in kinds])
    seconds = np.array([s for _, s, _ in per_batch])
    half = len(seconds) // 2
    fits = [np.linalg.lstsq(np.column_stack([inserted[part], updated[part]]), seconds[part], rcond=None)[0] * 1e6
            for part in (slice(0, half), slice(half, None))]
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(b) committed through the pipeline: {commit_rate:,.0f} proofs/s ({commit_s:.1f} s, "
          f"{committed:,} accepted proofs committed)")
    print("    stages summed over batches (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    print(f"(c) ratio committed / validate-only: {commit_rate / validate_rate:.3f}   (goal >= 0.2)")
    print(f"    database: dataSize {stats.get('dataSize', 0) / 2**20:,.1f} MiB, storageSize "
          f"{stats.get('storageSize', 0) / 2**20:,.1f} MiB, indexSize {stats.get('indexSize', 0) / 2**20:,.1f} MiB"
          + (f", data directory {on_disk / 2**20:,.1f} MiB on disk" if on_disk else "") + "; documents "
          + ", ".join(f"{name} {n:,}" for name, n in documents.items()))
    print(f"    history: first tenth {first:,.0f} proofs/s, last tenth {last_tenth:,.0f} proofs/s, "
          f"ratio {last_tenth / first:.2f}   (goal >= 0.8)")
    print(f"    per document written: first tenth {first_us:,.0f} µs, last tenth {last_us:,.0f} µs, "
          f"ratio {first_us / last_us:.2f}; documents written: {writes_by_kind}")
    print(f"    fitted cost per insert / per update: first half {fits[0][0]:,.0f} / {fits[0][1]:,.0f} µs, "
          f"second half {fits[1][0]:,.0f} / {fits[1][1]:,.0f} µs")
    print(f"    cache: {cache['accounts']:,} accounts, {cache['triangles']:,} triangles, {cache['nonces']:,} nonces, "
          f"~{cache['bytes'] / 2**20:.0f} MiB; process peak RSS {peak_rss_mb:,.0f} MiB")
    report = {"proofs": proofs.num_rows, "walkers": args.walkers, "batch": args.batch,
              "validate_per_s": validate_rate, "commit_per_s": commit_rate,
              "ratio": commit_rate / validate_rate, "first_tenth_per_s": first, "last_tenth_per_s": last_tenth,
              "cache": cache, "peak_rss_mb": peak_rss_mb, "stages_s": stages, "writes": writes_by_kind,
              "first_tenth_us_per_write": first_us, "last_tenth_us_per_write": last_us,
              "fitted_us_insert_update": [list(f) for f in fits],
              "per_batch": per_batch}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        done = np.cumsum([rows for rows, _, _ in per_batch])
        fig, (ax, cost) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        ax.plot(done / 1e6, rates, lw=0.8, label="committed, per batch")
        ax.set_ylabel("proofs/s")
        ax.set_ylim(0, None)
        ax.set_title(f"stepbatch on SecantusDB as the history grows ({args.batch:,}-proof batches)")
        ax.legend(loc="lower left")
        cost.plot(done / 1e6, write_us, lw=0.8, color="C1", label="batch time per document written")
        cost.set_ylabel("µs per document")
        cost.set_ylim(0, None)
        cost.set_xlabel("proofs committed so far (millions)")
        cost.legend(loc="lower left")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
