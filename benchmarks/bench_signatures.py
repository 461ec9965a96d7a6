"""Signature stage throughput against the libsecp256k1 ceiling, measured in one run on the same cores.

(a) ceiling: a bare coincurve `PublicKey.from_signature_and_message(sig, digest, hasher=None)` loop
    over pre-hashed messages, one thread per core;
(b) stepbatch: canonical messages built from a flat Arrow table, EIP-191 hashed, recovered and
    compared with the accounts (`crypto.signatures_match`), over the same proofs;
plus the traffic generator's signing rate (message build + hash + sign + hex).

Each figure is the best of --repeats runs; min-max is printed beside it.

    .venv/bin/python benchmarks/bench_signatures.py [--proofs 100000] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pyarrow as pa

from stepbatch.crypto import eip191, hexcodec, recovery, secp256k1, signing

_BASE32 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", dtype=np.uint8)


def realistic_proofs(n: int, accounts: int, rng: np.random.Generator) -> tuple[pa.Table, np.ndarray]:
    """(flat unsigned table, (n, 32) private key of each row): walkers around a few cities."""
    keys = rng.integers(1, 256, size=(accounts, 32), dtype=np.uint8)
    addresses = [signing.address_of(key.tobytes()) for key in keys]
    walker = rng.integers(0, accounts, n)
    cities = np.array([[47.4979, 19.0402], [-33.8688, 151.2093], [40.7128, -74.006], [35.6762, 139.6503]])
    home = cities[walker % len(cities)]
    lat = home[:, 0] + rng.normal(0, 0.05, n)  # full double precision, as a phone reports it
    lon = np.round(home[:, 1] + rng.normal(0, 0.05, n), 7)
    accuracy_scale = 10.0 ** rng.integers(0, 3, n)
    accuracy = np.round(rng.uniform(2, 50, n) * accuracy_scale) / accuracy_scale
    ts_ms = 1_759_600_000_000 + np.sort(rng.integers(0, 86_400_000, n))
    timestamps = np.char.add(np.datetime_as_string(ts_ms.astype("datetime64[ms]")), "Z")
    # Ids of the real shape and length (face, level 21, 20 path digits 0-3, 3-character checksum);
    # the signature stage never decodes them.
    ids = np.frombuffer(b"STEP-TRI-v1:A21-00000000000000000000-AAA" * n, dtype=np.uint8).reshape(n, -1).copy()
    ids[:, 12] = 65 + rng.integers(0, 20, n)
    ids[:, 16:36] = 48 + rng.integers(0, 4, (n, 20))
    ids[:, 37:40] = _BASE32[rng.integers(0, 32, (n, 3))]
    triangle_ids = pa.array(ids.view(f"S{ids.shape[1]}").ravel(), pa.binary()).cast(pa.string())
    nonces = [f"{a:016x}-{b:08x}" for a, b in zip(rng.integers(0, 2**63, n), rng.integers(0, 2**31, n))]
    table = pa.table({
        "version": pa.array(["STEP-PROOF-v1"] * n),
        "account": pa.array(addresses).take(pa.array(walker)),
        "triangle_id": triangle_ids,
        "lat": lat, "lon": lon, "accuracy": accuracy,
        "timestamp": pa.array(timestamps),
        "nonce": pa.array(nonces),
    })
    return table, keys[walker]


def sign_table(table: pa.Table, private_keys: np.ndarray, threads: int) -> pa.Table:
    """The table with its `signature` column: what the traffic generator does per batch."""
    digests = eip191.eip191_digests(eip191.canonical_messages(table))
    signatures = hexcodec.signatures_to_hex(signing.sign_digests(private_keys, digests, threads))
    return table.append_column("signature", signatures)


def best_of(repeats: int, run) -> tuple[float, float]:
    seconds = [run() for _ in range(repeats)]
    return min(seconds), max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proofs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--accounts", type=int, default=1_000)
    args = parser.parse_args()
    n, threads = args.proofs, args.threads
    rng = np.random.default_rng(2025)

    unsigned, private_keys = realistic_proofs(n, args.accounts, rng)
    sign_table(unsigned.slice(0, 10), private_keys[:10], threads)  # compile / load the kernels
    signing = best_of(args.repeats, lambda: _timed(sign_table, unsigned, private_keys, threads))
    table = sign_table(unsigned, private_keys, threads)

    digests = eip191.eip191_digests(eip191.canonical_messages(table))
    sig65 = hexcodec.parse_signatures(table.column("signature")).sig65
    digest_list = [row.tobytes() for row in digests]
    signature_list = [row.tobytes() for row in sig65]
    ceiling = best_of(args.repeats, lambda: secp256k1.ceiling_seconds(digest_list, signature_list, threads))

    with recovery.SignatureRecoverer(threads) as recoverer:
        if not recovery.check_signers(table, recoverer).matches.all():
            raise SystemExit("stepbatch rejected a correctly signed proof")
        pipeline = best_of(args.repeats, lambda: _timed(lambda: recovery.check_signers(table, recoverer).matches))

    print(f"proofs: {n:,}   threads: {threads}   cores: {os.cpu_count()}   repeats: {args.repeats}")
    _report("(a) ceiling: bare coincurve recovery", n, ceiling)
    _report("(b) stepbatch: build + hash + recover + compare", n, pipeline)
    print(f"ratio b/a (best vs best): {ceiling[0] / pipeline[0]:.3f}   (target >= 0.85)")
    _report("signing for the generator: build + hash + sign + hex", n, signing)


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _report(label: str, n: int, seconds: tuple[float, float]) -> None:
    fastest, slowest = seconds
    print(f"{label:<56} {n / fastest:>9,.0f} /s   (min-max {n / slowest:,.0f}-{n / fastest:,.0f} /s, "
          f"{fastest * 1e6 / n:.1f} us/row best)")


if __name__ == "__main__":
    main()
