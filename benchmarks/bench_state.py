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
    the proofs committed so far;
(d) the same work at two sizes of the history: two probe traffics of `--probe` proofs, built alike
    (same walkers' count, density and attacks, each in an area of its own, 20 km from the main one
    and from each other), one committed into the empty database before the main traffic and one
    after it. The main traffic's first batches are cheaper than its last whatever the history (its
    walkers first click a few large triangles many times, later a small new one at almost every
    step); the probes compare like with like.

`--servers rust,python` runs (b)-(d) once on each embedded server (each its own `stepbatch db serve`
on a fresh data directory, one after the other) against the same validate-only figure (a), and ends
with one line per server. With `--cache-only`, no database: every validated batch is written through
a `StateCache` as a commit would, and the cache's size is reported (its content does not depend on
the database).

    .venv/bin/python benchmarks/bench_state.py [--proofs 1000000] [--walkers 600] [--batch 6000]
                                                [--servers rust,python]
                                                [--plot benchmarks/results/state-history.png]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from stepbatch import MemoryStore, Validator
from stepbatch.config import Config
from stepbatch.mesh.regions import IdRegion
from stepbatch.pipeline import finalize_all
from stepbatch.store import layout
from stepbatch.store.cache import StateCache
from stepbatch.store.mongo import MongoStore
from stepbatch.tools import gen


def serve_database(data_dir: str, server: str | None) -> tuple[subprocess.Popen, str, str]:
    """`stepbatch db serve` in the background on `server` (None: the default); its process,
    MONGODB_URI and the server it says it started."""
    env = {**os.environ, "STEPBATCH_DB_SERVER": server} if server else None
    process = subprocess.Popen([sys.executable, "-m", "stepbatch", "db", "serve", "--data-dir", data_dir],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    started = process.stdout.readline().split(" serving ")[0]
    for line in process.stdout:
        if line.startswith("MONGODB_URI="):
            return process, line.strip().split("=", 1)[1], started
    raise SystemExit(f"stepbatch db serve did not start: {process.stderr.read()}")


def _commit_probe(validator: Validator, probe, batch: int, name: str) -> tuple[float, int]:
    """Commit a probe traffic through the pipeline: (proofs/s, accepted proofs)."""
    proofs = probe.proofs.drop_columns(["expected_code", "attack"])
    batches = ((proofs.slice(first, batch), f"probe-{name}-{first}", None)
               for first in range(0, proofs.num_rows, batch))
    started, accepted = time.perf_counter(), 0
    for _batch_id, result in finalize_all(validator, batches):
        accepted += result.counts.get("ACCEPTED", 0)
    return proofs.num_rows / (time.perf_counter() - started), accepted


def main() -> None:
    # A terminated benchmark still stops the database server it started (its `finally` runs).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proofs", type=int, default=1_000_000)
    parser.add_argument("--walkers", type=int, default=600)
    parser.add_argument("--batch", type=int, default=6_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--cache-only", action="store_true")
    parser.add_argument("--probe", type=int, default=60_000, help="proofs per history probe (0: none)")
    parser.add_argument("--replot", metavar="JSON", help="only draw --plot again from a --json of an earlier run")
    parser.add_argument("--servers", default=None,
                        help="embedded servers to commit on, one after the other (rust,python; default: "
                             "the default one, or MONGODB_URI)")
    args = parser.parse_args()
    if args.replot:
        with open(args.replot) as handle:
            plot(json.load(handle), args.plot or "state-history.png")
        return
    config = Config.from_env(signature_threads=os.cpu_count())

    started = time.perf_counter()
    traffic = gen.generate(walkers=args.walkers, proofs=args.proofs, seed=args.seed)
    proofs = traffic.proofs.drop_columns(["expected_code", "attack"])
    cuts = list(range(0, proofs.num_rows, args.batch))
    print(f"generated {proofs.num_rows:,} proofs of {args.walkers:,} walkers in {time.perf_counter() - started:.0f} s; "
          f"{len(cuts)} batches of {args.batch:,}", flush=True)

    probes = [gen.generate(walkers=args.walkers, proofs=args.probe, seed=args.seed + 1 + k,
                           center=(gen.DEFAULT_CENTER[0] + 0.18 * (k + 1), gen.DEFAULT_CENTER[1]))
              for k in range(2)] if args.probe and not args.cache_only else []

    memory = MemoryStore(traffic.triangles, keep_verdicts=False)
    cache = StateCache() if args.cache_only else None
    started = time.perf_counter()
    with Validator(memory, config) as validator:
        for first in cuts:
            result = validator.validate(proofs.slice(first, args.batch), f"b{first}")
            memory.commit(result.outcome)
            if cache is not None:
                cache.apply(result.outcome, layout.stored_after(result.outcome))
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

    servers = args.servers.split(",") if args.servers else [None]
    reports = [commit_on(server, args, config, traffic, proofs, cuts, probes, validate_rate)
               for server in servers]
    if len(reports) > 1:
        print(f"\nvalidate-only: {validate_rate:,.0f} proofs/s\n"
              "server | committed proofs/s | committed / validate-only | batch time per document, first / "
              "last tenth (µs) | its first / last (flat: 1) | proofs/s, last / first tenth | probe after / "
              "before")
        for report in reports:
            probes_per_s = report["probes_per_s"]
            print(f"{report['server']} | {report['commit_per_s']:,.0f} | {report['ratio']:.3f} | "
                  f"{report['first_tenth_us_per_write']:,.0f} / {report['last_tenth_us_per_write']:,.0f} | "
                  f"{report['first_tenth_us_per_write'] / report['last_tenth_us_per_write']:.2f} | "
                  f"{report['last_tenth_per_s'] / report['first_tenth_per_s']:.2f} | "
                  + (f"{probes_per_s[1] / probes_per_s[0]:.2f}" if len(probes_per_s) == 2 else "-"))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(reports if len(reports) > 1 else reports[0], handle, indent=1)
    if args.plot:
        plot(reports[0], args.plot)


def commit_on(server_name: str | None, args, config: Config, traffic, proofs, cuts, probes,
              validate_rate: float) -> dict:
    """(b)-(d) on one server: `stepbatch db serve` of `server_name` (MONGODB_URI when None and set)."""
    server = None
    uri = os.environ.get("MONGODB_URI") if server_name is None else None
    data_dir, server_title = None, "MONGODB_URI"
    if not uri:
        data_dir = tempfile.mkdtemp(prefix="stepbatch-bench-state-")
        server, uri, server_title = serve_database(data_dir, server_name)
        print(f"\ncommitting on {server_title}", flush=True)
    try:
        with MongoStore(uri, "bench_state", config=config, recreate=True) as store, \
                Validator(store, config) as validator:
            store.declare(IdRegion.of_ids([*traffic.triangles, *(t for probe in probes for t in probe.triangles)]))
            probe_rates = []
            if probes:
                probe_rates.append(_commit_probe(validator, probes[0], args.batch, "before"))
                print(f"(d) probe into the empty database: {probe_rates[0][0]:,.0f} proofs/s", flush=True)
            per_batch, stages, committed = [], {}, 0
            started = last = time.perf_counter()
            batches = ((proofs.slice(first, args.batch), f"b{first}", None) for first in cuts)
            probe_writes = dict(store.writes)
            written, kinds = sum(probe_writes.values()), []
            for _batch_id, result in finalize_all(validator, batches):
                now = time.perf_counter()
                writes = sum(store.writes.values()) - written
                written += writes
                per_batch.append((result.verdicts.num_rows, now - last, writes))
                kinds.append({k: v - probe_writes.get(k, 0) for k, v in store.writes.items()})
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
            if probes:
                probe_rates.append(_commit_probe(validator, probes[1], args.batch, "after"))
            cache = store.cache.figures()
            writes_by_kind = kinds[-1]
            assert committed + sum(accepted for _, accepted in probe_rates) == store.accepted_count()
            stats = store.db.command("dbStats")
            documents = {name: store.db[name].estimated_document_count() for name in
                         ("triangles", "accounts", "nonces", "verdicts", "batches")}
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    on_disk = sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(data_dir)
                  for name in names) if data_dir else None
    if data_dir:
        shutil.rmtree(data_dir, ignore_errors=True)

    commit_rate = proofs.num_rows / commit_s
    # Over each tenth of the batches: its proofs over its time, its time over its documents. (The
    # pipeline can hand two batches over at once, so one batch's own figures may be 0 s or double.)
    rows, seconds, writes = (np.array(column, float) for column in zip(*per_batch))
    tenth = max(len(per_batch) // 10, 1)
    first, last_tenth = (rows[part].sum() / seconds[part].sum() for part in (slice(tenth), slice(-tenth, None)))
    first_us, last_us = (seconds[part].sum() / max(writes[part].sum(), 1) * 1e6
                         for part in (slice(tenth), slice(-tenth, None)))
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
    if probes:
        (before, _), (after, _) = probe_rates
        print(f"(d) the same work at history 0 and after {proofs.num_rows:,} proofs: {before:,.0f} and "
              f"{after:,.0f} proofs/s, ratio {after / before:.2f}")
    print(f"    per document written: first tenth {first_us:,.0f} µs, last tenth {last_us:,.0f} µs, "
          f"ratio {first_us / last_us:.2f}; documents written: {writes_by_kind}")
    print(f"    cache: {cache['accounts']:,} accounts, {cache['triangles']:,} triangles, {cache['nonces']:,} nonces, "
          f"~{cache['bytes'] / 2**20:.0f} MiB; process peak RSS {peak_rss_mb:,.0f} MiB")
    report = {"server": server_title, "proofs": proofs.num_rows, "walkers": args.walkers, "batch": args.batch,
              "validate_per_s": validate_rate, "commit_per_s": commit_rate,
              "ratio": commit_rate / validate_rate, "first_tenth_per_s": first, "last_tenth_per_s": last_tenth,
              "cache": cache, "peak_rss_mb": peak_rss_mb, "stages_s": stages, "writes": writes_by_kind,
              "first_tenth_us_per_write": first_us, "last_tenth_us_per_write": last_us,
              "probes_per_s": [rate for rate, _ in probe_rates],
              "writes_per_batch": [{k: v - before.get(k, 0) for k, v in now.items()}
                                   for before, now in zip([{}] + kinds, kinds)],
              "per_batch": per_batch}
    return report



def plot(report: dict, path: str) -> None:
    """Committed proofs/s and batch time per document written, per batch, against the proofs
    committed so far; the two probes as points at either end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_batch = report["per_batch"]
    done = np.cumsum([rows for rows, _, _ in per_batch]) / 1e6
    fig, (ax, cost) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax.plot(done, [rows / seconds for rows, seconds, _ in per_batch], lw=0.8, label="committed, per batch")
    if report.get("probes_per_s"):
        ax.plot([0, done[-1]], report["probes_per_s"], "o", color="C3",
                label="the same probe traffic into the empty and the grown database")
    ax.set_ylabel("proofs/s")
    ax.set_ylim(0, None)
    ax.set_title(f"stepbatch on SecantusDB as the history grows ({report['batch']:,}-proof batches)")
    ax.legend(loc="lower left")
    cost.plot(done, [seconds / max(writes, 1) * 1e6 for _, seconds, writes in per_batch], lw=0.8, color="C1",
              label="batch time per document written")
    cost.set_ylabel("µs per document")
    cost.set_ylim(0, None)
    cost.set_xlabel("proofs committed so far (millions)")
    cost.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
