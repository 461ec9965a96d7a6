"""A plain validator that applies SPEC §4 one proof at a time: the independent oracle the engine must equal.

It imports nothing from `stepbatch` or `kernels`, so a bug in a shared kernel cannot hide in both:
keccak-256 is pycryptodome's, signature recovery is eth-keys' pure-Python backend (not libsecp256k1),
the mesh is `tests/naive_mesh.py`, ECMAScript number text and timestamps are re-derived here from
SPEC's words, and the reward table is SPEC's literal list. State lives in dicts; the digest is built
line by line. The one input it takes from the engine is each row's `payload_error` (the §2 field
rules, which `test_fields.py` checks on their own); given that, every verdict is its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import hashlib
import re

from Crypto.Hash import keccak
from eth_keys import KeyAPI
from eth_keys.backends import NativeECCBackend
from eth_keys.exceptions import BadSignature, ValidationError

from tests import naive_mesh

# SPEC §4, copied as written: micro-STEP for levels 1..21.
REWARD_MICRO = [1000000, 500000, 250000, 125000, 62500, 31250, 15625, 7813, 3906, 1953, 977, 488, 244,
                122, 61, 31, 15, 8, 4, 2, 1]
MAX_LEVEL = 21
# SPEC §4's check order: a verdict code's number (ACCEPTED = 0) is its place in the table.
CODE_NUMBERS = {name: k for k, name in enumerate((
    "ACCEPTED", "INVALID_PAYLOAD", "UNSUPPORTED_VERSION", "LOW_GPS_ACCURACY", "CLOCK_DRIFT", "BAD_SIGNATURE",
    "NONCE_REPLAY", "TRIANGLE_NOT_FOUND", "TRIANGLE_NOT_ACTIVE", "OUT_OF_BOUNDS", "TOO_FAST", "MORATORIUM"))}
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
KEYS = KeyAPI(NativeECCBackend)
TIMESTAMP = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|([+-])(\d\d):(\d\d))")


@dataclasses.dataclass(frozen=True)
class Gates:
    """SPEC §4's configurable thresholds, with its defaults."""

    gps_max_accuracy_m: float = 50.0
    clock_drift_ms: int = 120_000
    speed_limit_mps: float = 15.0
    moratorium_ms: int = 10_000
    subdivide_at_clicks: int = 11


def keccak256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def js_number(x: float) -> str:
    """ECMAScript Number.prototype.toString(x) for a finite double (SPEC §2): the shortest digits
    that round-trip (Python's repr finds the same ones), laid out by ECMA-262's Number::toString."""
    if x == 0:
        return "0"
    if x < 0:
        return "-" + js_number(-x)
    parts = decimal.Decimal(repr(x)).as_tuple()
    digits = "".join(map(str, parts.digits))
    significant = digits.rstrip("0")
    k = len(significant)
    n = parts.exponent + len(digits)  # x = 0.significant × 10^n
    if k <= n <= 21:
        return significant + "0" * (n - k)
    if 0 < n <= 21:
        return significant[:n] + "." + significant[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + significant
    e = n - 1
    body = significant if k == 1 else significant[0] + "." + significant[1:]
    return f"{body}e{'+' if e >= 0 else '-'}{abs(e)}"


def canonical_message(row: dict) -> str:
    return (f"STEP-PROOF-v1|account:{row['account'].lower()}|triangle:{row['triangle_id']}"
            f"|lat:{js_number(row['lat'])}|lon:{js_number(row['lon'])}|acc:{js_number(row['accuracy'])}"
            f"|ts:{row['timestamp']}|nonce:{row['nonce']}")


def signer_of(message: str, signature: str) -> str | None:
    """Lower-case address that signed `message` with EIP-191 personal_sign; None if nothing recovers."""
    text = signature[2:] if signature.startswith("0x") else signature
    raw = bytes.fromhex(text)
    v = raw[64] - 27 if raw[64] >= 27 else raw[64]
    encoded = message.encode("utf-8")
    digest = keccak256(b"\x19Ethereum Signed Message:\n" + str(len(encoded)).encode() + encoded)
    try:
        signature_object = KEYS.Signature(vrs=(v, int.from_bytes(raw[:32], "big"),
                                               int.from_bytes(raw[32:64], "big")))
        public_key = signature_object.recover_public_key_from_msg_hash(digest)
    except (BadSignature, ValidationError, ValueError):
        return None
    return "0x" + keccak256(public_key.to_bytes())[-20:].hex()


def timestamp_ms(text: str) -> int:
    """Epoch milliseconds of a timestamp that passed the field rules (fraction truncated to ms)."""
    parts = TIMESTAMP.fullmatch(text).groups()
    year, month, day, hour, minute, second = (int(p) for p in parts[:6])
    offset = dt.timedelta(0)
    if parts[7] != "Z":
        offset = (1 if parts[8] == "+" else -1) * dt.timedelta(hours=int(parts[9]), minutes=int(parts[10]))
    days = (dt.date(year, month, day) - dt.date(1970, 1, 1)).days
    seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset.total_seconds()
    return int(seconds) * 1000 + int((parts[6] or "0")[:3].ljust(3, "0"))


def haversine_m(lat1, lon1, lat2, lon2):
    return naive_mesh.haversine_m(lat1, lon1, lat2, lon2)


class NaiveValidator:
    """World state in dicts; `validate` applies one batch and keeps its effects."""

    def __init__(self, triangles=(), gates: Gates | None = None):
        self.gates = gates or Gates()
        self.triangles = {t: {"state": "active", "clicks": 0} for t in triangles}
        self.accounts = {}
        self.nonces = set()

    def validate(self, proofs, batch_id, batch_time_ms=None):
        """Verdict tuples (code, reward_micro, click_number or None, speed_mps or None) and the digest."""
        verdicts = [self._one(row, batch_time_ms) for row in proofs.to_pylist()]
        lines = [f"STEP-BATCH-VERDICTS-v1:{batch_id}:{len(verdicts)}\n"]
        for index, (code, reward, click, _speed) in enumerate(verdicts):
            lines.append(f"{index}:{code}:{reward}:{'' if click is None else click}\n")
        return verdicts, hashlib.sha256("".join(lines).encode()).hexdigest()

    def _one(self, row, batch_time_ms):
        gates = self.gates
        rejected = lambda code, speed=None: (code, 0, None, speed)  # noqa: E731
        if row["payload_error"] is not None:
            return rejected("INVALID_PAYLOAD")
        if row["version"] != "STEP-PROOF-v1":
            return rejected("UNSUPPORTED_VERSION")
        if not 0 < row["accuracy"] <= gates.gps_max_accuracy_m:
            return rejected("LOW_GPS_ACCURACY")
        ts_ms = timestamp_ms(row["timestamp"])
        reference = row["received_at"]
        reference_ms = ((reference - EPOCH) // dt.timedelta(milliseconds=1) if reference is not None
                        else batch_time_ms)
        if reference_ms is not None and abs(ts_ms - reference_ms) > gates.clock_drift_ms:
            return rejected("CLOCK_DRIFT")
        account = row["account"].lower()
        if signer_of(canonical_message(row), row["signature"]) != account:
            return rejected("BAD_SIGNATURE")
        if (account, row["nonce"]) in self.nonces:
            return rejected("NONCE_REPLAY")
        triangle = self.triangles.get(row["triangle_id"])
        if triangle is None:
            return rejected("TRIANGLE_NOT_FOUND")
        if triangle["state"] != "active":
            return rejected("TRIANGLE_NOT_ACTIVE")
        face, level, path = naive_mesh.decode_id(row["triangle_id"])
        point = naive_mesh.latlon_to_xyz(row["lat"], row["lon"])
        if not naive_mesh.contains_xyz(naive_mesh.vertices(face, path), point):
            return rejected("OUT_OF_BOUNDS")
        holder = self.accounts.get(account)
        speed = None
        if holder is not None and holder["last"] is not None:
            last_lat, last_lon, last_ts = holder["last"]
            dt_ms = ts_ms - last_ts
            if dt_ms <= 0:
                return rejected("TOO_FAST")
            speed = haversine_m(last_lat, last_lon, row["lat"], row["lon"]) / (dt_ms / 1000)
            if speed > gates.speed_limit_mps:
                return rejected("TOO_FAST", speed)
            if dt_ms < gates.moratorium_ms:
                return rejected("MORATORIUM", speed)

        reward = REWARD_MICRO[level - 1]
        triangle["clicks"] += 1
        click = triangle["clicks"]
        self.nonces.add((account, row["nonce"]))
        holder = self.accounts.setdefault(account, {"balance": 0, "count": 0, "last": None})
        holder["balance"] += reward
        holder["count"] += 1
        holder["last"] = (row["lat"], row["lon"], ts_ms)
        if click >= gates.subdivide_at_clicks:
            if level == MAX_LEVEL:
                triangle["state"] = "exhausted"
            else:
                triangle["state"] = "subdivided"
                for digit in range(4):
                    child = naive_mesh.encode_id(face, level + 1, tuple(path) + (digit,))
                    self.triangles.setdefault(child, {"state": "active", "clicks": 0})
        return ("ACCEPTED", reward, click, speed)


def tx_results(verdicts, kinds: list[str], row_counts) -> list[tuple[int, str]]:
    """(code, data) of each transaction of a block (SPEC §8) from the reference's verdict tuples: a
    ProofBatch is code 0 with one `CODE:reward:click` line per proof; anything else is its one row's
    code number and line."""
    lines = [f"{code}:{reward}:{'' if click is None else click}" for code, reward, click, _ in verdicts]
    out, first = [], 0
    for kind, count in zip(kinds, row_counts):
        mine = lines[first:first + int(count)]
        first += int(count)
        out.append((0, "\n".join(mine)) if kind == "batch" else (CODE_NUMBERS[mine[0].split(":")[0]], mine[0]))
    return out
