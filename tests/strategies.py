"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

from hypothesis import strategies as st

latitudes = st.floats(min_value=-90.0, max_value=90.0, allow_nan=False)
longitudes = st.floats(min_value=-180.0, max_value=180.0, allow_nan=False)
levels = st.integers(min_value=1, max_value=21)
faces = st.integers(min_value=0, max_value=19)
# (face, level, path) of any mesh triangle; path holds level - 1 digits 0..3.
mesh_triangles = levels.flatmap(lambda level: st.tuples(
    faces, st.just(level), st.lists(st.integers(0, 3), min_size=level - 1, max_size=level - 1).map(tuple)))
# Barycentric weights whose smallest is at least 1/60 of their sum: a point well away from every edge.
interior_weights = st.tuples(*[st.floats(0.05, 1.0)] * 3)

SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
private_keys = st.integers(1, SECP256K1_ORDER - 1).map(lambda k: k.to_bytes(32, "big"))
# Doubles whose ECMAScript text is easy to get wrong: exponent-form boundaries, -0, integers.
awkward_numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e-6, 1e-7, -1.5e-7, 1e21, 1e20, 123456789012.5, 5e-324, 90.0]),
    st.integers(-10**6, 10**6).map(float))
proof_payloads = st.fixed_dictionaries({
    "version": st.just("STEP-PROOF-v1"),
    "account": st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex().upper()),
    "triangleId": st.just("STEP-TRI-v1:D5-01230000000000000000-W7Q"),
    "lat": st.one_of(latitudes, awkward_numbers), "lon": st.one_of(longitudes, awkward_numbers),
    "accuracy": awkward_numbers,
    "timestamp": st.just("2025-10-05T12:29:33.074Z"),
    "nonce": st.text(min_size=1, max_size=128),
})


# Batches for the engine-vs-reference property test: a small world around one triangle's siblings,
# few accounts and nonces so that rows collide (same account, same nonce, same triangle) all the time.
import datetime as _dt
import hashlib as _hashlib

import numpy as _np

from stepbatch.crypto import signing

ACCOUNT_KEYS = [_hashlib.sha256(b"stepbatch-test-account-%d" % i).digest() for i in range(4)]
WORLD_CENTRE = (47.4979, 19.0402)
_T0_MS = 1_759_667_373_074


def iso_ms(ts_ms: int) -> str:
    moment = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(milliseconds=ts_ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def point_in(triangle_id: str, weights) -> tuple[float, float]:
    """(lat, lon) of the normalised barycentric combination of the triangle's vertices."""
    from stepbatch import mesh
    xyz = _np.asarray(weights, float) @ mesh.vertices(triangle_id)
    xyz /= _np.linalg.norm(xyz)
    return (float(_np.degrees(_np.arcsin(xyz[2]))), float(_np.degrees(_np.arctan2(xyz[1], xyz[0]))))


_weights = st.tuples(*[st.floats(0.08, 1.0)] * 3)


def signed_row(private_key: bytes, triangle_id: str, lat: float, lon: float, ts_ms: int, nonce: str,
               accuracy: float = 10, version: str = "STEP-PROOF-v1", received_ms: int | None = None,
               signer: bytes | None = None, upper_case: bool = False) -> dict:
    """A flat proof row of `private_key`'s account, signed by `signer` (default: the same key)."""
    from stepbatch import crypto
    address = signing.address_of(private_key)
    payload = {"version": version, "account": "0x" + address[2:].upper() if upper_case else address,
               "triangleId": triangle_id, "lat": lat, "lon": lon, "accuracy": accuracy,
               "timestamp": iso_ms(ts_ms), "nonce": nonce}
    return {"version": version, "account": payload["account"], "triangle_id": triangle_id,
            "lat": lat, "lon": lon, "accuracy": accuracy, "timestamp": payload["timestamp"],
            "nonce": nonce, "signature": crypto.sign_proof(signer or private_key, payload),
            "received_at": None if received_ms is None else iso_ms(received_ms)}


@st.composite
def proof_rows(draw, level: int, max_rows: int = 40):
    """(seeded triangle ids, flat proof dicts) for one randomized batch sequence."""
    from stepbatch import mesh
    base = mesh.triangle_at(*WORLD_CENTRE, level)
    siblings = mesh.children(mesh.parent(base)) if level > 1 else [base]
    clocks = [_T0_MS] * len(ACCOUNT_KEYS)
    rows = []
    for _ in range(draw(st.integers(1, max_rows))):
        who = draw(st.sampled_from([0, 0, 1, 1, 2, 3]))
        target = siblings[draw(st.integers(0, len(siblings) - 1))]
        for _depth in range(draw(st.sampled_from([0] * 6 + [1, 1, 2] if level < 20 else [0] * 3 + [1]))):
            target = mesh.children(target)[draw(st.integers(0, 3))]
        # One defect at most per row, so most rows reach the stateful checks and interact there.
        defect = draw(st.sampled_from([None] * 24 + [
            "outside", "forged", "tampered", "malformed", "v01", "no-lat", "bad-id", "empty-nonce",
            "version-2", "version-0", "accuracy-0", "accuracy-high", "drift-late", "drift-early",
            "no-received-at"]))
        where = siblings[draw(st.integers(0, len(siblings) - 1))] if defect == "outside" else target
        lat, lon = point_in(where, draw(_weights))
        clocks[who] += draw(st.sampled_from([-3_000, 0, 4_000, 4_000, 11_000, 11_000, 25_000, 90_000,
                                             3_600_000]))
        ts_ms = clocks[who]
        signer = ACCOUNT_KEYS[(who + 1) % len(ACCOUNT_KEYS)] if defect == "forged" else ACCOUNT_KEYS[who]
        row = signed_row(
            ACCOUNT_KEYS[who], target, lat, lon, ts_ms,
            nonce=draw(st.sampled_from(["n0", "n1", "n2", "n3", "n4", "n5"])),
            accuracy={"accuracy-0": 0, "accuracy-high": 50.5}.get(
                defect, draw(st.sampled_from([10, 3.5, 50]))),
            version={"version-2": "STEP-PROOF-v2", "version-0": "v0"}.get(defect, "STEP-PROOF-v1"),
            received_ms={"drift-late": ts_ms + 130_000, "drift-early": ts_ms - 121_000,
                         "no-received-at": None}.get(defect, ts_ms + 150),
            signer=signer, upper_case=draw(st.booleans()))
        if defect == "tampered":
            row["lat"] = lat + 1e-6
        elif defect == "malformed":
            row["signature"] = row["signature"][:-4]
        elif defect == "v01":
            row["signature"] = row["signature"][:-2] + f"{int(row['signature'][-2:], 16) - 27:02x}"
        if defect == "no-lat":
            row["lat"] = None
        elif defect == "bad-id":
            row["triangle_id"] = target[:-3] + "AAA"
        elif defect == "empty-nonce":
            row["nonce"] = ""
        rows.append(row)
    return siblings, rows


@st.composite
def iso_timestamps(draw) -> tuple[str, int]:
    """(timestamp text as a phone may send it, its epoch ms): any zone offset, 0–9 fraction digits
    (the ms being the first three, truncated), years 0001–9999; the ms come from `datetime`."""
    local = draw(st.datetimes(min_value=_dt.datetime(1, 1, 2), max_value=_dt.datetime(9999, 12, 30)))
    offset_min = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
    sign = "-" if offset_min < 0 else "+"
    zone = "Z" if offset_min == 0 and draw(st.booleans()) else \
        f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    digits = draw(st.integers(0, 9))
    fraction = f"{local.microsecond:06d}{draw(st.integers(0, 999)):03d}"[:digits]
    text = (f"{local.year:04d}-{local.month:02d}-{local.day:02d}T{local.hour:02d}:{local.minute:02d}:"
            f"{local.second:02d}" + (f".{fraction}" if digits else "") + zone)
    utc = local.replace(microsecond=0) - _dt.timedelta(minutes=offset_min)
    ts_ms = (utc - _dt.datetime(1970, 1, 1)) // _dt.timedelta(milliseconds=1)
    return text, ts_ms + int((fraction + "000")[:3])


# Values a JSON proof may carry where a number belongs, paired with what ingest says of them.
json_non_numbers = st.sampled_from([
    ("47.5", "string '47.5'"), (True, "boolean true"), (False, "boolean false"),
    ([1], "array"), ({"v": 1}, "object"), ("", "string ''"),
])


# Small `stepbatch gen` configurations: the detection matrix must be exact for every one.
gen_configs = st.fixed_dictionaries({
    "walkers": st.integers(1, 30),
    "proofs": st.integers(50, 400),
    "seed": st.integers(0, 2**32 - 1),
    "level": st.integers(12, 19),
    "center": st.sampled_from([(47.4979, 19.0402), (-33.8688, 151.2093), (0.0, 179.999), (64.1, -21.9)]),
    "radius_m": st.sampled_from([60.0, 400.0, 1_500.0]),
    "attack_share": st.sampled_from([0.0, 0.2, 0.5, 0.9]),
})


def random_triangles(rng, count, levels=range(1, 22)):
    """`count` (face, level, path) tuples drawn from a NumPy generator, for bulk kernel checks."""
    out = []
    for _ in range(count):
        level = int(rng.choice(list(levels)))
        out.append((int(rng.integers(20)), level, tuple(int(d) for d in rng.integers(0, 4, level - 1))))
    return out
