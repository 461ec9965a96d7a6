"""Mesh throughput: point lookup, point-in-triangle and id decoding, after JIT warm-up.

(a) `triangle_at_keys` at level 21 over points spread uniformly on the sphere;
(b) `contains_keys` over proofs with realistic repetition: many rows per claimed triangle
    (--triangles distinct level-21 triangles around a few cities, points jittered around each);
(c) `decode_ids` over --ids ids of which --unique are distinct.
Each runs on one Numba thread (per core) and on all cores; figures are the best of --repeats runs.
Last, the cold start: the first call of each in a fresh process, once with the on-disk kernel cache
and once with an empty cache directory (what a first install pays).

    .venv/bin/python benchmarks/bench_mesh.py [--points 200000] [--proofs 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np

from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import keys as mesh_keys

_COLD_START = """
import time
start = time.perf_counter()
import numpy as np
from stepbatch import mesh
imported = time.perf_counter()
keys = mesh_keys.triangle_at_keys(np.array([47.5]), np.array([19.0]), 21)
mesh_keys.contains_keys(keys, np.array([47.5]), np.array([19.0]))
mesh_ids.decode_ids(mesh_ids.encode_keys(keys))
print(f"import {imported - start:.2f} s, first calls {time.perf_counter() - imported:.2f} s")
"""


def sphere_points(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    lat_deg = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    return lat_deg, rng.uniform(-180.0, 180.0, n)


def claimed_proofs(n: int, triangles: int, rng: np.random.Generator):
    """(keys, lat, lon): n proofs over `triangles` distinct level-21 triangles near four cities,
    each point within a few metres of its triangle (most inside, some just outside)."""
    cities = np.array([[47.4979, 19.0402], [-33.8688, 151.2093], [40.7128, -74.006], [35.6762, 139.6503]])
    home = cities[rng.integers(0, len(cities), triangles)]
    lat_deg = home[:, 0] + rng.normal(0, 0.02, triangles)
    lon_deg = home[:, 1] + rng.normal(0, 0.02, triangles)
    keys = mesh_keys.triangle_at_keys(lat_deg, lon_deg, 21)
    claim = rng.integers(0, triangles, n)
    jitter_deg = rng.normal(0, 5e-6, (2, n))  # ~0.5 m, well inside a level-21 triangle's ~7.6 m side
    return keys[claim], lat_deg[claim] + jitter_deg[0], lon_deg[claim] + jitter_deg[1]


def best_seconds(repeats: int, fn, *args) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best


def cold_start(cache_dir: str | None) -> str:
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    done = subprocess.run([sys.executable, "-c", _COLD_START], env=env, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--proofs", type=int, default=1_000_000)
    parser.add_argument("--triangles", type=int, default=5_000)
    parser.add_argument("--ids", type=int, default=100_000)
    parser.add_argument("--unique", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(2025)

    lat_deg, lon_deg = sphere_points(args.points, rng)
    keys, proof_lat, proof_lon = claimed_proofs(args.proofs, args.triangles, rng)
    distinct = mesh_keys.triangle_at_keys(*sphere_points(args.unique, rng), rng.integers(1, 22, args.unique))
    ids = mesh_ids.encode_keys(distinct[rng.integers(0, args.unique, args.ids)])
    inside_share = mesh_keys.contains_keys(keys, proof_lat, proof_lon).mean()
    mesh_ids.decode_ids(ids)

    all_cores = numba.config.NUMBA_NUM_THREADS
    print(f"cores: {os.cpu_count()}   numba threads: {all_cores}   layer: {numba.threading_layer()}   "
          f"repeats: {args.repeats}")
    for threads in (1, all_cores):
        numba.set_num_threads(threads)
        label = "1 thread" if threads == 1 else f"{threads} threads"
        seconds = best_seconds(args.repeats, mesh_keys.triangle_at_keys, lat_deg, lon_deg, 21)
        print(f"[{label}] triangle_at level 21        {args.points / seconds:>12,.0f} points/s")
        seconds = best_seconds(args.repeats, mesh_keys.contains_keys, keys, proof_lat, proof_lon)
        print(f"[{label}] contains_keys               {args.proofs / seconds:>12,.0f} proofs/s   "
              f"({args.triangles:,} distinct triangles, {inside_share:.0%} inside)")
        seconds = best_seconds(args.repeats, mesh_ids.decode_ids, ids)
        print(f"[{label}] decode_ids                  {args.ids / seconds:>12,.0f} ids/s   "
              f"({args.ids:,} ids, {args.unique:,} distinct: {seconds * 1e3:.1f} ms)")
    print(f"cold start, on-disk cache:   {cold_start(None)}")
    with tempfile.TemporaryDirectory() as empty_cache:
        print(f"cold start, empty cache:     {cold_start(empty_cache)}")


if __name__ == "__main__":
    main()
