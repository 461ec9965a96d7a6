"""Batch engine throughput against the libsecp256k1 ceiling, measured in one run on the same cores.

(a) ceiling: stepbatch.crypto.secp256k1.ceiling_seconds (bare coincurve recovery, one thread per core) over the
    signatures of the batch that parse;
(b) `Validator.validate` (read_proofs → stateless checks → resolve → verdicts, no writes) of one
    realistic `gen.generate` batch against a MemoryStore seeded with its triangles; ratio b/a compares
    proofs validated per second with signatures recovered per second;
(c) the resolver alone: `stepbatch.resolve.run_resolver` over the batch with its state already loaded and
    its keys factorized, and the whole stage (index_batch + load_state + run_resolver) beside it;
(d) per-batch latency, p50 and p99 of `validate` over consecutive 100-, 1,000- and 10,000-proof batches.

Each figure is the best of --repeats runs, min-max beside it; the load average is printed before and after.

    .venv/bin/python benchmarks/bench_engine.py [--proofs 100000] [--walkers 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pyarrow as pa
from bench_signatures import best_of

from stepbatch.checks import stateless_checks
from stepbatch.config import Config
from stepbatch.crypto import eip191, hexcodec, recovery, secp256k1
from stepbatch.ingest import read_proofs
from stepbatch.resolve import index_batch, run_resolver
from stepbatch.store.memory import MemoryStore
from stepbatch.tools import gen
from stepbatch.validator import Validator

LATENCY_BATCHES = {100: 200, 1_000: 60, 10_000: 10}  # batch rows → batches timed


def bench_ceiling(proofs: pa.Table, threads: int, repeats: int) -> tuple[int, tuple[float, float]]:
    parsed = hexcodec.parse_signatures(proofs.column("signature"))
    digests = eip191.eip191_digests(eip191.canonical_messages(proofs))[parsed.valid]
    digest_list = [row.tobytes() for row in digests]
    signature_list = [row.tobytes() for row in parsed.sig65[parsed.valid]]
    return len(digest_list), best_of(repeats, lambda: secp256k1.ceiling_seconds(digest_list, signature_list, threads))


def bench_validate(traffic: gen.Traffic, config: Config, repeats: int) -> tuple[tuple[float, float], dict]:
    seconds, timings = [], []
    with Validator(MemoryStore(traffic.triangles), config) as validator:
        for _ in range(repeats):
            started = time.perf_counter()
            result = validator.validate(traffic.proofs, "bench-engine")
            seconds.append(time.perf_counter() - started)
            timings.append(result.timings)
    expected = traffic.proofs.column("expected_code").to_pylist()
    if result.verdicts.column("code").to_pylist() != expected:
        raise SystemExit("validate gave verdicts that differ from the generator's expected codes")
    return (min(seconds), max(seconds)), timings[int(np.argmin(seconds))]


def bench_resolver(traffic: gen.Traffic, config: Config, repeats: int
                   ) -> tuple[tuple[float, float], tuple[float, float]]:
    """(kernel seconds min-max, whole resolve stage seconds min-max)."""
    store = MemoryStore(traffic.triangles)
    proofs = read_proofs(traffic.proofs)
    with recovery.SignatureRecoverer(config.threads) as recoverer:
        stateless = stateless_checks(proofs, config, None, recoverer)
    index = index_batch(proofs, stateless.code == 0)
    prior = store.load_state(index.keys)

    def kernel_run() -> float:
        started = time.perf_counter()
        run_resolver(proofs, stateless, index, prior, config)
        return time.perf_counter() - started

    def stage_run() -> float:
        started = time.perf_counter()
        stage_index = index_batch(proofs, stateless.code == 0)
        run_resolver(proofs, stateless, stage_index, store.load_state(stage_index.keys), config)
        return time.perf_counter() - started

    kernel_run()
    return best_of(repeats, kernel_run), best_of(repeats, stage_run)


def bench_latency(traffic: gen.Traffic, config: Config, repeats: int) -> dict[int, list[np.ndarray]]:
    """Per batch size, one array of per-batch validate seconds per repeat."""
    found: dict[int, list[np.ndarray]] = {}
    with Validator(MemoryStore(traffic.triangles), config) as validator:
        for rows, batches in LATENCY_BATCHES.items():
            batches = min(batches, traffic.proofs.num_rows // rows)
            found[rows] = []
            for _ in range(repeats):
                seconds = np.empty(batches)
                for b in range(batches):
                    batch = traffic.proofs.slice(b * rows, rows)
                    started = time.perf_counter()
                    validator.validate(batch, f"latency-{rows}-{b}")
                    seconds[b] = time.perf_counter() - started
                found[rows].append(seconds)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proofs", type=int, default=100_000)
    parser.add_argument("--walkers", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    config = Config(signature_threads=args.threads)
    load_before = os.getloadavg()

    started = time.perf_counter()
    traffic = gen.generate(walkers=args.walkers, proofs=args.proofs, seed=args.seed)
    print(f"generated {args.proofs:,} proofs of {args.walkers:,} walkers in {time.perf_counter() - started:.1f} s; "
          f"{len(traffic.triangles):,} base triangles seeded")
    with Validator(MemoryStore(traffic.triangles), config) as warm:
        warm.validate(traffic.proofs.slice(0, 1_000))  # compile and load every kernel first

    n = traffic.proofs.num_rows
    recoveries, ceiling = bench_ceiling(traffic.proofs, args.threads, args.repeats)
    validate, timings = bench_validate(traffic, config, args.repeats)
    kernel, stage = bench_resolver(traffic, config, args.repeats)
    latency = bench_latency(traffic, config, args.repeats)

    print(f"proofs: {n:,}   threads: {args.threads}   cores: {os.cpu_count()}   repeats: {args.repeats}   "
          f"load average before: {load_before[0]:.2f}")
    _report("(a) ceiling: bare coincurve recovery", recoveries, ceiling, "recoveries")
    _report("(b) validate-only, MemoryStore", n, validate, "proofs")
    print(f"ratio b/a, proofs validated per recovery-second (best vs best): "
          f"{(n / validate[0]) / (recoveries / ceiling[0]):.3f}   (target >= 0.80; "
          f"{recoveries / n:.1%} of the rows carry a signature that parses)")
    total = sum(timings.values())
    print("stages of the best (b) run: " + ", ".join(
        f"{stage_name} {seconds * 1e3:,.0f} ms ({seconds / total:.0%})" for stage_name, seconds in timings.items()))
    _report("(c) resolver kernel, state loaded", n, kernel, "proofs")
    print(f"    target >= 2,000,000 proofs/s: {'met' if n / kernel[0] >= 2e6 else 'NOT met'}")
    _report("    resolve stage: factorize + load_state + kernel", n, stage, "proofs")
    print("(d) per-batch validate latency, best repeat by p99 (min-max of p50 / p99 over repeats):")
    for rows, runs in latency.items():
        p50 = [float(np.percentile(r, 50)) * 1e3 for r in runs]
        p99 = [float(np.percentile(r, 99)) * 1e3 for r in runs]
        print(f"    {rows:>6,}-proof batches x {len(runs[0]):>3}: "
              f"p50 {min(p50):8.1f} ms ({min(p50):.1f}-{max(p50):.1f})"
              f"   p99 {min(p99):8.1f} ms ({min(p99):.1f}-{max(p99):.1f})   "
              f"{rows / (min(p50) / 1e3):>9,.0f} proofs/s at p50")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def _report(label: str, n: int, seconds: tuple[float, float], unit: str) -> None:
    fastest, slowest = seconds
    print(f"{label:<50} {n / fastest:>12,.0f} {unit}/s   (min-max {n / slowest:,.0f}-{n / fastest:,.0f}, "
          f"{fastest * 1e3:,.1f} ms best for {n:,})")


if __name__ == "__main__":
    main()
