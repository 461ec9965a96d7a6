"""Seeded, deterministic, signed synthetic traffic: honest walkers and attackers (`stepbatch gen`).

The pipeline, each step over whole arrays:
  journeys (stepbatch.tools.gen.walkers: proof slots, attacks in the gaps, walks, GPS fixes) → arrival order →
  triangle paths (mesh) → sequential pass (stepbatch_kernels.gen: claims, clicks, subdivisions, replayable
  nonces) → payload columns → EIP-191 digests and threaded signing (crypto) → tampering and
  malformation after signing.

Every attack row sits in the gap after one of its walker's honest proofs, so at its position in the
batch the walker's last accepted proof is that one, and the attack is shaped to fail exactly the
check it targets while passing every check SPEC §4 runs before it. The sequential pass confirms this
against the state of the batch so far and drops the rare row for which it does not hold; a dropped
row changes nothing, as a rejected proof changes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stepbatch.config import Config
from stepbatch.crypto import eip191, hexcodec, signing
from stepbatch.ingest.timestamps import epoch_ms
from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import keys as mesh_keys
from stepbatch.protocol import MAX_LEVEL, PROOF_VERSION, Code
from stepbatch.schema import PROOF_SCHEMA, SIGNED_FIELDS
from stepbatch.tools.gen import reach, tamper
from stepbatch.tools.gen import walkers as walk
from stepbatch_kernels import gen as kernel

DEFAULT_WALKERS = 100
DEFAULT_PROOFS = 10_000
DEFAULT_SEED = 1
# Level-14 triangles are ~1 km across: a walker crosses several in an hour, and the default 1.5 km
# disc holds a few dozen, which 10,000 proofs subdivide three or four levels deep.
DEFAULT_LEVEL = 14
DEFAULT_CENTER = (47.4979, 19.0402)  # Budapest
DEFAULT_RADIUS_M = 1_500.0
DEFAULT_ATTACK_SHARE = 0.2
DEFAULT_START_TIME = dt.datetime(2025, 10, 5, 12, 0, tzinfo=dt.timezone.utc)
MAX_ATTACK_SHARE = 0.9
MIN_RADIUS_M, MAX_RADIUS_M = 50.0, 100_000.0

# Attack kind → the verdict SPEC §4's check order gives it.
ATTACK_CODES: dict[str, Code] = {
    "replay": Code.NONCE_REPLAY,
    "teleport": Code.TOO_FAST,
    "rapid_fire": Code.MORATORIUM,
    "low_accuracy": Code.LOW_GPS_ACCURACY,
    "forged_signer": Code.BAD_SIGNATURE,
    "tampered": Code.BAD_SIGNATURE,
    "neighbour": Code.OUT_OF_BOUNDS,
    "unseeded": Code.TRIANGLE_NOT_FOUND,
    "clock_skew": Code.CLOCK_DRIFT,
    "v2": Code.UNSUPPORTED_VERSION,
    "malformed": Code.INVALID_PAYLOAD,
}
KINDS = ("honest", *ATTACK_CODES)  # a row's kind is its index in this tuple
KIND = {name: np.int8(i) for i, name in enumerate(KINDS)}
_EXPECTED_CODES = pa.array([Code.ACCEPTED.name, *(code.name for code in ATTACK_CODES.values())])

# The flat proof of SPEC §2 as sent, then what its author intended.
TRAFFIC_SCHEMA = pa.schema([
    *(PROOF_SCHEMA.field(name) for name in (*SIGNED_FIELDS, "signature", "received_at")),
    pa.field("expected_code", pa.string()),
    pa.field("attack", pa.string()),
])

# The gates the traffic is built for: SPEC §4's defaults.
_GATES = Config()

_N_ATTACKER_KEYS = 8
_MAX_HONEST_DROPPED = 0.1
_SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclasses.dataclass(frozen=True)
class Traffic:
    """Generated proofs (TRAFFIC_SCHEMA, arrival order) and what a validator must be seeded with."""

    proofs: pa.Table
    triangles: list[str]  # base-level ids to seed: every one the walks and attacks reach
    bbox: tuple[float, float, float, float]  # W, S, E, N degrees around every generated point
    reserved: list[str] = dataclasses.field(default_factory=list)  # claimed by "unseeded", never seeded
    params: dict = dataclasses.field(default_factory=dict)
    # NDJSON only: row → {field: JSON value of the wrong type}; the table holds null there instead.
    json_overrides: dict[int, dict[str, object]] = dataclasses.field(default_factory=dict)

    def attack_counts(self) -> dict[str, int]:
        """Rows per kind ("honest" and each attack present), in KINDS order."""
        found = {item["values"]: item["counts"]
                 for item in self.proofs.column("attack").value_counts().to_pylist()}
        return {kind: found[kind] for kind in KINDS if kind in found}


def generate(walkers: int = DEFAULT_WALKERS, proofs: int | None = DEFAULT_PROOFS,
             seed: int = DEFAULT_SEED, level: int = DEFAULT_LEVEL,
             center: tuple[float, float] = DEFAULT_CENTER, radius_m: float = DEFAULT_RADIUS_M,
             attack_share: float = DEFAULT_ATTACK_SHARE, attack_weights: dict[str, float] | None = None,
             start_time: dt.datetime | int = DEFAULT_START_TIME, duration_s: float | None = None,
             threads: int | None = None) -> Traffic:
    """`proofs` rows, or every row of `duration_s` simulated seconds when that is given instead.

    `attack_weights` maps attack kinds (ATTACK_CODES) to relative weights, absent kinds weighing 0
    (None: all 1). `start_time` is a datetime with a zone or epoch ms. Same arguments → the same
    table, whatever `threads` is. Raises ValueError for arguments out of range.
    """
    start_ms = _epoch_ms(start_time)
    kind_p = _kind_probabilities(attack_weights, attack_share)
    _check_arguments(walkers, proofs, seed, level, center, radius_m, attack_share, duration_s)
    if duration_s is not None:
        proofs = None
    walker_keys = _private_keys(seed, "walker", walkers)
    attacker_keys = _private_keys(seed, "attacker", _N_ATTACKER_KEYS)
    addresses = signing.addresses_of(walker_keys)

    attacks_per_gap = attack_share / (1.0 - attack_share)
    slots = walk.slots_needed(walkers, proofs, duration_s, attacks_per_gap)
    while True:
        plan = _plan(seed, walkers, slots, attacks_per_gap, kind_p, center, radius_m, level)
        rows = _select(plan, proofs, duration_s)
        _check_capacity(plan, len(plan.keep) if rows is None or not len(rows) else rows[-1] + 1)
        if rows is not None:
            break
        slots += slots // 2 + 8

    rng = _stream(seed, "payload")
    kind = plan.journeys.kind[rows]
    # Phones on local time use the centre's nominal zone, 15° of longitude per hour.
    local_offset_min = 60 * round(center[1] / 15.0)
    table = _payload(plan, rows, start_ms, addresses, local_offset_min, rng)
    digests = eip191.eip191_digests(eip191.canonical_messages(table))
    signer_keys = walker_keys[plan.journeys.walker[rows]]
    forged = np.flatnonzero(kind == KIND["forged_signer"])
    signer_keys[forged] = attacker_keys[rng.integers(0, _N_ATTACKER_KEYS, len(forged))]
    signatures = signing.sign_digests(signer_keys, digests, threads)
    table = table.append_column("signature", hexcodec.signatures_to_hex(signatures))
    table = tamper.tamper(table, np.flatnonzero(kind == KIND["tampered"]), plan.claimed_key[rows], rng)
    table, overrides = tamper.malform(table, np.flatnonzero(kind == KIND["malformed"]), rng)

    received_ms = start_ms + plan.journeys.recv_ms[rows]
    table = (table
             .append_column("received_at", pa.array(received_ms, pa.timestamp("ms", tz="UTC")))
             .append_column("expected_code", _EXPECTED_CODES.take(pa.array(kind)))
             .append_column("attack", pa.array(KINDS).take(pa.array(kind))))
    params = dict(walkers=walkers, proofs=proofs, duration_s=duration_s, seed=seed, level=level,
                  center=[float(c) for c in center], radius_m=float(radius_m),
                  attack_share=float(attack_share),
                  attack_weights=dict(zip(ATTACK_CODES, kind_p.tolist())),
                  start_time=_iso_ms(start_ms))
    return Traffic(proofs=table.select(TRAFFIC_SCHEMA.names).cast(TRAFFIC_SCHEMA),
                   triangles=plan.seed_ids, bbox=plan.bbox, reserved=plan.reserved_ids, params=params,
                   json_overrides=overrides)


# ------------------------------------------------------------------------------------ planning

# How each attack kind is timed and placed against the walker's last honest (accepted) proof.
_STYLES = {
    "teleport": walk.AttackStyle(timing=walk.LATE_AFTER, position=walk.FAR_JUMP),
    "rapid_fire": walk.AttackStyle(timing=walk.SOON_AFTER, position=walk.NEAR_LAST),
    "low_accuracy": walk.AttackStyle(position=walk.POOR_FIX),
    "clock_skew": walk.AttackStyle(skewed_clock=True),
}
_ROLES = np.array([{"honest": kernel.ROLE_HONEST, "replay": kernel.ROLE_REPLAY,
                    "teleport": kernel.ROLE_TELEPORT, "rapid_fire": kernel.ROLE_RAPID_FIRE,
                    "neighbour": kernel.ROLE_NEIGHBOUR, "unseeded": kernel.ROLE_PRESET,
                    }.get(kind, kernel.ROLE_PASSIVE) for kind in KINDS], np.int8)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Candidate rows in arrival order and what the sequential pass decided about each."""

    journeys: walk.Journeys
    lat: np.ndarray
    lon: np.ndarray
    keep: np.ndarray  # bool: the row carries its intended verdict
    claimed_key: np.ndarray  # int64 packed id of the claimed triangle
    replay_of: np.ndarray  # int64 row whose nonce a replay re-uses, else -1
    seed_ids: list[str]
    reserved_ids: list[str]
    bbox: tuple[float, float, float, float]


def _plan(seed: int, walkers: int, slots: int, attacks_per_gap: float, kind_p: np.ndarray,
          center: tuple[float, float], radius_m: float, level: int) -> _Plan:
    present = np.flatnonzero(kind_p > 0)
    styles = [_STYLES.get(kind, walk.AttackStyle()) for kind in np.array(KINDS[1:])[present]]
    journeys = walk.journeys(_stream(seed, "journeys"), walkers, slots, attacks_per_gap,
                             present + 1, kind_p[present], styles, radius_m)
    lat, lon = walk.to_lat_lon(center, journeys.x_m, journeys.y_m)
    point_key = mesh_keys.triangle_at_keys(lat, lon, MAX_LEVEL)

    seeded, bbox, reserved = reach.seeding(center, radius_m, level, point_key)
    unseeded = journeys.kind == KIND["unseeded"]
    if unseeded.any() and not len(reserved):
        raise ValueError(f"found no level-{level} triangle outside the walking area for the "
                         f"unseeded attack; give it weight 0")
    rng = _stream(seed, "claims")
    preset = np.full(len(lat), -1, np.int64)
    preset[unseeded] = reserved[rng.integers(0, max(len(reserved), 1), int(unseeded.sum()))]

    n = len(lat)
    keep, claimed, replay_of = np.empty(n, np.bool_), np.empty(n, np.int64), np.empty(n, np.int64)
    kernel.plan_rows(_ROLES[journeys.kind], journeys.walker, journeys.ts_ms, lat, lon, point_key,
                     preset, rng.random(n), level, walkers, _GATES.speed_limit_mps,
                     _GATES.moratorium_ms, _GATES.subdivide_at_clicks, keep, claimed, replay_of)
    return _Plan(journeys=journeys, lat=lat, lon=lon, keep=keep, claimed_key=claimed,
                 replay_of=replay_of, seed_ids=mesh_ids.encode_keys(seeded).to_pylist(),
                 reserved_ids=mesh_ids.encode_keys(reserved).to_pylist(), bbox=bbox)


def _select(plan: _Plan, proofs: int | None, duration_s: float | None) -> np.ndarray | None:
    """Rows to emit, a prefix of the kept rows in arrival order; None when the plan is too short
    (too few rows, or a walker whose slots end before the last emitted row)."""
    kept = np.flatnonzero(plan.keep)
    recv_ms = plan.journeys.recv_ms
    if duration_s is not None:
        cut_ms = int(duration_s * 1000)
        rows = kept[recv_ms[kept] < cut_ms]
    else:
        if len(kept) < proofs:
            return None
        rows = kept[:proofs]
        cut_ms = int(recv_ms[rows[-1]])
    return rows if plan.journeys.horizon_ms >= cut_ms else None


def _check_capacity(plan: _Plan, rows_considered: int) -> None:
    """Refuse traffic whose honest walkers mostly find no active triangle: where every level-21
    triangle under them is exhausted a phone gets nothing to claim, so it would not prove at all."""
    honest = plan.journeys.kind[:rows_considered] == KIND["honest"]
    dropped = 1.0 - plan.keep[:rows_considered][honest].mean() if honest.any() else 0.0
    if dropped > _MAX_HONEST_DROPPED:
        raise ValueError(f"the walking area is saturated: {dropped:.0%} of the honest proofs find every "
                         f"triangle under them exhausted; use a larger radius, a coarser level or "
                         f"fewer proofs")


# ----------------------------------------------------------------------------- payload columns

def _payload(plan: _Plan, rows: np.ndarray, start_ms: int, addresses: pa.Array,
             local_offset_min: int, rng: np.random.Generator) -> pa.Table:
    """The signed fields of the emitted rows, as their authors send them."""
    journeys = plan.journeys
    kind = journeys.kind[rows]
    walker = journeys.walker[rows]
    versions = pa.array([PROOF_VERSION, "STEP-PROOF-v2"])
    unique_keys, key_index = np.unique(plan.claimed_key[rows], return_inverse=True)
    nonce = _uuid4_strings(rng, len(rows))
    replays = np.flatnonzero(kind == KIND["replay"])
    source = np.arange(len(rows))
    # The replayed proof was accepted earlier in arrival order, so it is among the emitted rows.
    source[replays] = np.searchsorted(rows, plan.replay_of[rows[replays]])
    return pa.table({
        "version": versions.take(pa.array((kind == KIND["v2"]).astype(np.int8))),
        "account": addresses.take(pa.array(walker)),
        "triangle_id": mesh_ids.encode_keys(unique_keys).take(pa.array(key_index)),
        "lat": plan.lat[rows],
        "lon": plan.lon[rows],
        "accuracy": journeys.accuracy_m[rows],
        "timestamp": _iso_strings(start_ms + journeys.ts_ms[rows], journeys.local_time[walker],
                                  local_offset_min),
        "nonce": nonce.take(pa.array(source)),
    })


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)
_UUID_HEX_POSITIONS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def _uuid4_strings(rng: np.random.Generator, n: int) -> pa.Array:
    """Random (version 4) UUIDs as phones make nonces, built as one byte matrix."""
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    text = np.full((n, 36), ord("-"), np.uint8)
    hex_digits = np.empty((n, 32), np.uint8)
    hex_digits[:, 0::2], hex_digits[:, 1::2] = _HEX_DIGITS[raw >> 4], _HEX_DIGITS[raw & 0x0F]
    text[:, _UUID_HEX_POSITIONS] = hex_digits
    offsets = np.arange(0, (n + 1) * 36, 36, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text)])


def _iso_strings(epoch_ms: np.ndarray, local_time: np.ndarray, local_offset_min: int) -> pa.Array:
    """ISO-8601 with milliseconds as each phone formats its clock: UTC with `Z`, or where
    `local_time`, local time with its offset `±hh:mm`."""
    offset_ms = np.where(local_time, local_offset_min * 60_000, 0)
    text = pa.array(np.datetime_as_string((epoch_ms + offset_ms).astype("datetime64[ms]"), unit="ms"))
    sign = "-" if local_offset_min < 0 else "+"
    hours, minutes = divmod(abs(local_offset_min), 60)
    zones = pa.array(["Z", f"{sign}{hours:02d}:{minutes:02d}"])
    return pc.binary_join_element_wise(text, zones.take(pa.array(local_time.astype(np.int8))), "")


# ------------------------------------------------------------------------- arguments and seeds

def output_format(path) -> str:
    """"parquet" or "ndjson" from the file name; ValueError otherwise."""
    suffix = pathlib.Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".ndjson", ".jsonl"):
        return "ndjson"
    raise ValueError(f"expected an output file ending in .parquet or .ndjson, got {str(path)!r}")


def _check_arguments(walkers, proofs, seed, level, center, radius_m, attack_share, duration_s) -> None:
    problems = []
    if not (isinstance(walkers, int) and walkers >= 1):
        problems.append(f"walkers must be a positive integer, got {walkers!r}")
    if duration_s is None and not (isinstance(proofs, int) and proofs >= 1):
        problems.append(f"proofs must be a positive integer, got {proofs!r}")
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        problems.append(f"duration must be a positive number of seconds, got {duration_s!r}")
    if not (isinstance(seed, int) and seed >= 0):
        problems.append(f"seed must be a non-negative integer, got {seed!r}")
    # Level 1 triangles (the faces) have no siblings for the neighbour attack; level 21 ones hold
    # 11 proofs each before they exhaust.
    if not (isinstance(level, int) and 2 <= level <= MAX_LEVEL - 1):
        problems.append(f"level must be an integer 2-{MAX_LEVEL - 1}, got {level!r}")
    lat, lon = center
    if not (-80.0 <= lat <= 80.0 and -180.0 <= lon <= 180.0):
        problems.append(f"center must be LAT in [-80, 80] and LON in [-180, 180], got {center!r}")
    if not MIN_RADIUS_M <= radius_m <= MAX_RADIUS_M:
        problems.append(f"radius_m must be {MIN_RADIUS_M:g}-{MAX_RADIUS_M:g} m, got {radius_m!r}")
    if not 0.0 <= attack_share <= MAX_ATTACK_SHARE:
        problems.append(f"attack share must be in [0, {MAX_ATTACK_SHARE}], got {attack_share!r}")
    if problems:
        raise ValueError("; ".join(problems))


def _kind_probabilities(weights: dict[str, float] | None, attack_share: float) -> np.ndarray:
    """Probability of each attack kind, in ATTACK_CODES order."""
    if weights is None:
        weights = dict.fromkeys(ATTACK_CODES, 1.0)
    unknown = sorted(set(weights) - set(ATTACK_CODES))
    if unknown:
        raise ValueError(f"unknown attack kind(s) {', '.join(unknown)}; "
                         f"expected some of {', '.join(ATTACK_CODES)}")
    values = np.array([float(weights.get(kind, 0.0)) for kind in ATTACK_CODES])
    if not np.all(np.isfinite(values)) or (values < 0).any():
        raise ValueError(f"attack weights must be finite and non-negative, got {weights!r}")
    if values.sum() == 0:
        if attack_share > 0:
            raise ValueError("attack weights are all 0 but the attack share is not")
        return values
    return values / values.sum()


def _private_keys(seed: int, role: str, count: int) -> np.ndarray:
    """(count, 32) uint8 secp256k1 secrets derived from the seed: sha256 of a label, re-hashed in
    the (2^-128 likely) case it is not a valid secret."""
    keys = []
    for index in range(count):
        attempt = 0
        while True:
            key = hashlib.sha256(f"stepbatch-gen:{seed}:{role}:{index}:{attempt}".encode()).digest()
            if 0 < int.from_bytes(key, "big") < _SECP256K1_ORDER:
                break
            attempt += 1
        keys.append(key)
    return np.frombuffer(b"".join(keys), np.uint8).reshape(count, 32).copy()


def _stream(seed: int, purpose: str) -> np.random.Generator:
    """An independent random stream per purpose, so that changing how one part draws its numbers
    leaves the others' output as it was."""
    label = int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:8], "big")
    return np.random.default_rng(np.random.SeedSequence([seed, label]))


def _epoch_ms(start_time: dt.datetime | int) -> int:
    if isinstance(start_time, dt.datetime) and start_time.tzinfo is None:
        raise ValueError(f"start_time needs a time zone, got {start_time.isoformat()}")
    try:
        return epoch_ms(start_time)
    except TypeError:
        raise ValueError(f"start_time must be a datetime or epoch ms, got {start_time!r}") from None


def _iso_ms(ms: int) -> str:
    moment = dt.datetime.fromtimestamp(ms // 1000, dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
