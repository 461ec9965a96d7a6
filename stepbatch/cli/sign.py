"""`stepbatch sign`: one signed STEP-PROOF-v1 proof for a key and a position, as a phone would send it."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import sys

from stepbatch.cli import UsageError

KEY_ENV = "STEPBATCH_PRIVATE_KEY"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sign", help="print one signed proof (API shape) for a private key and a position",
        description=(
            "Build the proof a phone at LAT,LON would send now: the triangle of --level that holds the "
            "point, the timestamp of this moment (ISO-8601, ms, Z), a fresh nonce, signed EIP-191 over "
            "SPEC §2's canonical message. Prints the JSON body of POST /proof/submit; `-` for the key "
            f"reads it from standard input, and without --key it comes from ${KEY_ENV}."))
    parser.add_argument("--key", default=None, metavar="HEX|-",
                        help=f"the account's private key, 64 hex digits (default: ${KEY_ENV})")
    parser.add_argument("--at", required=True, metavar="LAT,LON", help="where the phone is, in degrees")
    parser.add_argument("--level", type=int, default=14, help="mesh level of the triangle to claim (14)")
    parser.add_argument("--triangle", default=None, metavar="ID",
                        help="claim this triangle instead of the one at --level (e.g. a subdivided one's child)")
    parser.add_argument("--accuracy", type=float, default=5.0, help="GPS accuracy in metres (5)")
    parser.add_argument("--nonce", default=None, help="the proof's nonce (default: 16 random hex digits)")
    parser.add_argument("--timestamp", default=None, metavar="ISO-8601",
                        help="the proof's time as sent (default: now, e.g. 2026-12-03T12:29:33.074Z)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stepbatch import crypto, mesh
    from stepbatch.crypto import signing

    key = args.key if args.key is not None else os.environ.get(KEY_ENV)
    if key == "-":
        key = sys.stdin.readline().strip()
    if not key:
        raise UsageError(f"give the account's private key with --key HEX (or - for standard input) or ${KEY_ENV}")
    try:
        lat, lon = (float(part) for part in args.at.split(","))
    except ValueError:
        raise UsageError(f"--at is LAT,LON in degrees, got {args.at!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise UsageError(f"--at {args.at}: latitude is -90..90 and longitude -180..180")
    if not 1 <= args.level <= 21:
        raise UsageError(f"--level is 1-21, got {args.level}")
    try:
        triangle_id = args.triangle or mesh.triangle_at(lat, lon, args.level)
        mesh.decode_id(triangle_id)
    except ValueError as err:
        raise UsageError(f"--triangle: {err}") from err
    now = dt.datetime.now(dt.timezone.utc)
    stamp = args.timestamp or now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    payload = {"version": "STEP-PROOF-v1", "account": None, "triangleId": triangle_id, "lat": lat, "lon": lon,
               "accuracy": args.accuracy, "timestamp": stamp, "nonce": args.nonce or secrets.token_hex(8)}
    try:
        payload["account"] = signing.address_of(key)
        signature = crypto.sign_proof(key, payload)
    except ValueError as err:
        raise UsageError(str(err)) from err
    print(json.dumps({"payload": payload, "signature": signature}))
    return 0
