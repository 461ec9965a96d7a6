"""`stepbatch gen`: seeded, deterministic, signed synthetic traffic of honest walkers and attackers."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
import pathlib
import re
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stepbatch.cli import UsageError
from stepbatch.tools import gen

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*$")
_DURATION_UNIT_S = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}


def register(subparsers) -> None:
    kinds = ", ".join(gen.ATTACK_CODES)
    parser = subparsers.add_parser(
        "gen", help="generate signed synthetic traffic (honest walkers and attacks)",
        description=(
            "Simulate walkers with their own keys around a centre, proving every 10-60 s with GPS "
            "noise, plus a chosen share of attacks, each labelled with the verdict code it must get. "
            "Writes the proofs in arrival order (Parquet or NDJSON) and a sidecar FILE.triangles.json "
            "with the base-level triangle ids to seed, the bbox and the parameters. The same "
            "arguments give byte-identical files."))
    parser.add_argument("--walkers", type=_positive_int, default=gen.DEFAULT_WALKERS,
                        help=f"number of walkers, each with its own key (default {gen.DEFAULT_WALKERS})")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--proofs", type=_positive_int, default=None,
                      help=f"number of proof rows to write (default {gen.DEFAULT_PROOFS})")
    size.add_argument("--duration", type=_duration_s, default=None,
                      help="simulated time span instead of a row count, e.g. 3600, 90m, 2h")
    parser.add_argument("--seed", type=int, default=gen.DEFAULT_SEED,
                        help=f"seed of keys, walks and attacks (default {gen.DEFAULT_SEED})")
    parser.add_argument("--level", type=int, default=gen.DEFAULT_LEVEL,
                        help=f"base mesh level the sidecar seeds, 2-20 (default {gen.DEFAULT_LEVEL}: "
                             "triangles ~1 km across)")
    parser.add_argument("--center", type=_center, default=gen.DEFAULT_CENTER, metavar="LAT,LON",
                        help="centre of the walks in degrees (default %s,%s)" % gen.DEFAULT_CENTER)
    parser.add_argument("--radius-m", type=float, default=gen.DEFAULT_RADIUS_M,
                        help=f"walkers stay within this many metres of the centre "
                             f"(default {gen.DEFAULT_RADIUS_M:g})")
    parser.add_argument("--attack-share", type=float, default=gen.DEFAULT_ATTACK_SHARE,
                        help=f"fraction of rows that are attacks, 0-{gen.MAX_ATTACK_SHARE} "
                             f"(default {gen.DEFAULT_ATTACK_SHARE})")
    parser.add_argument("--attacks", type=_weights, default=None, metavar="KIND=W,...",
                        help=f"relative weights of the attack kinds (default: all 1); kinds: {kinds}")
    parser.add_argument("--start-time", type=_start_time, default=gen.DEFAULT_START_TIME,
                        metavar="ISO", help="simulation start, ISO-8601 with a zone "
                        "(default 2025-10-05T12:00:00Z)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="signing threads (default: one per core)")
    parser.add_argument("--out", required=True, metavar="FILE.parquet|FILE.ndjson",
                        help="output file; the sidecar goes beside it as FILE.triangles.json")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        output_format = gen.output_format(args.out)
        traffic = gen.generate(
            walkers=args.walkers, proofs=args.proofs or gen.DEFAULT_PROOFS, seed=args.seed,
            level=args.level, center=args.center, radius_m=args.radius_m,
            attack_share=args.attack_share, attack_weights=args.attacks,
            start_time=args.start_time, duration_s=args.duration, threads=args.threads)
    except ValueError as err:
        raise UsageError(str(err)) from err
    try:
        sidecar = write_traffic(traffic, args.out, output_format)
    except OSError as err:
        raise UsageError(f"cannot write {args.out}: {err.strerror or err}") from err
    elapsed_s = time.perf_counter() - started
    rows = traffic.proofs.num_rows
    attacks = traffic.attack_counts()
    honest = attacks.pop("honest", 0)
    mix = ", ".join(f"{kind} {n}" for kind, n in attacks.items()) or "none"
    print(f"wrote {rows} proofs to {args.out} ({honest} honest; attacks: {mix})")
    print(f"wrote {len(traffic.triangles)} level-{args.level} triangle ids to seed to {sidecar}")
    print(f"{rows / elapsed_s:,.0f} proofs/s ({elapsed_s:.2f} s end to end)")
    return 0


def sidecar_path(path) -> pathlib.Path:
    """FILE.triangles.json beside FILE.parquet / FILE.ndjson."""
    return pathlib.Path(path).with_suffix(".triangles.json")


def write_traffic(traffic: gen.Traffic, path, output_format: str) -> pathlib.Path:
    """Write the proofs ("parquet" or "ndjson") and the sidecar; return the sidecar's path."""
    import pyarrow.parquet as pq

    path = pathlib.Path(path)
    if output_format == "parquet":
        pq.write_table(traffic.proofs, path)
    else:
        path.write_bytes(_ndjson_bytes(traffic))
    sidecar = sidecar_path(path)
    sidecar.write_text(json.dumps({
        "format": "stepbatch-gen-v1",
        "level": traffic.params.get("level"),
        "triangles": traffic.triangles,
        "reserved": traffic.reserved,
        "bbox": list(traffic.bbox),
        "rows": traffic.proofs.num_rows,
        "attacks": traffic.attack_counts(),
        "params": traffic.params,
    }, indent=1) + "\n")
    return sidecar


def _ndjson_bytes(traffic: gen.Traffic) -> bytes:
    """One JSON object per row, fields in table order, `received_at` as ISO-8601.

    JSON has no NaN or infinity, so such values are written as the strings "NaN" and "Infinity"
    (a type break, which is what they are meant to be); the traffic's JSON type breaks replace
    their fields the same way, line by line, after the bulk write.
    """
    import polars as pl

    table = traffic.proofs
    overrides = {row: dict(fields) for row, fields in traffic.json_overrides.items()}
    for name in ("lat", "lon", "accuracy"):
        values = table.column(name).to_numpy(zero_copy_only=False)
        present = table.column(name).is_valid().to_numpy(zero_copy_only=False)
        special = np.flatnonzero(present & ~np.isfinite(values))
        for row in special.tolist():
            overrides.setdefault(row, {})[name] = _json_number_text(values[row])
        if len(special):
            mask = np.zeros(table.num_rows, np.bool_)
            mask[special] = True
            table = table.set_column(table.schema.get_field_index(name), name,
                                     pc.if_else(pa.array(mask), None, table.column(name)))
    received = pc.strftime(table.column("received_at"), format="%Y-%m-%dT%H:%M:%SZ")
    table = table.set_column(table.schema.get_field_index("received_at"), "received_at", received)
    buffer = io.BytesIO()
    pl.from_arrow(table).write_ndjson(buffer)
    lines = buffer.getvalue().split(b"\n")
    for row, fields in overrides.items():
        record = json.loads(lines[row])
        record.update(fields)
        lines[row] = json.dumps(record, separators=(",", ":")).encode()
    return b"\n".join(lines)


def _json_number_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _duration_s(text: str) -> float:
    match = _DURATION_RE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive duration such as 3600, 600s, 90m or 2h, got {text!r}")
    return float(match.group(1)) * _DURATION_UNIT_S[match.group(2)]


def _center(text: str) -> tuple[float, float]:
    try:
        lat_text, lon_text = text.split(",")
        return float(lat_text), float(lon_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAT,LON in degrees, got {text!r}") from None


def _weights(text: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, sep, value = item.partition("=")
        try:
            weights[kind.strip()] = float(value) if sep else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected KIND=WEIGHT, got {item!r}") from None
    if not weights:
        raise argparse.ArgumentTypeError("expected at least one KIND=WEIGHT")
    return weights


def _start_time(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO-8601 time such as 2025-10-05T12:00:00Z, got {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"expected a time with a zone (Z or ±hh:mm), got {text!r}")
    return moment
