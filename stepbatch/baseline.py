"""The original STEP server's design, re-created with stepbatch's libraries: one proof per request.

For each proof: the field rules, version, accuracy and clock checks, one libsecp256k1 recovery and
the point-in-triangle test on that proof alone, then one MongoDB transaction that reads the account,
the triangle and the (account, nonce) event, decides checks 6–11, and for an accepted proof inserts
the click event, updates the triangle (subdividing it at its 11th click) and updates the account.
Rejected proofs write nothing, as the original answered them with an HTTP error.

It exists as the load test's point of comparison (`stepbatch bench`, configuration d), so it writes
the documents of SPEC §5 in the layout `MongoStore` uses, talks to pymongo directly as the original
talked to its driver, and gives the verdict codes the batch engine gives on the same proofs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import time

import numpy as np
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.int64 import Int64

from stepbatch import crypto, mesh, secp256k1
from stepbatch.codes import MAX_LEVEL, REWARD_MICRO, Code
from stepbatch.config import Config
from stepbatch.store import documents

_ACCOUNT_RE = re.compile(r"0x[0-9a-fA-F]{40}")
_TIMESTAMP_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
                           r"(Z|([+-])(\d{2}):(\d{2}))")
_SIGNATURE_RE = re.compile(r"(?:0x)?[0-9a-fA-F]{130}")
_NONCE_MAX_CHARS = 128
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclasses.dataclass
class BaselineRun:
    """Per-proof codes and service times of a run through the one-proof-per-request design."""

    codes: np.ndarray  # uint8 Code per proof
    latency_s: np.ndarray  # request start → transaction done, per proof
    elapsed_s: float
    stage_s: dict[str, float]  # "checks" (stateless, incl. signature) and "transaction"

    @property
    def throughput_per_s(self) -> float:
        return len(self.codes) / self.elapsed_s if self.elapsed_s > 0 else float("inf")

    def counts(self) -> dict[str, int]:
        values, counts = np.unique(self.codes, return_counts=True)
        return {Code(int(v)).name: int(c) for v, c in zip(values, counts)}


class OriginalServer:
    """Validates and commits one proof per call against the database `db_name` of a MongoStore's client."""

    def __init__(self, client, db_name: str, config: Config | None = None):
        self.client = client
        self.config = config or Config()
        self.db = client.get_database(db_name, codec_options=CodecOptions(
            tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_MS))

    def run(self, proofs: list[dict]) -> BaselineRun:
        """Handle flat proof rows (`pa.Table.to_pylist()` of §2's flat shape) one after another."""
        codes = np.zeros(len(proofs), np.uint8)
        latency_s = np.zeros(len(proofs))
        stage_s = {"checks": 0.0, "transaction": 0.0}
        started = time.perf_counter()
        for i, proof in enumerate(proofs):
            request_s = time.perf_counter()
            checked = check_stateless(proof, self.config)
            checked_s = time.perf_counter()
            code = checked.code if checked.code else self.transact(proof, checked)
            done_s = time.perf_counter()
            codes[i], latency_s[i] = code, done_s - request_s
            stage_s["checks"] += checked_s - request_s
            stage_s["transaction"] += done_s - checked_s
        return BaselineRun(codes, latency_s, time.perf_counter() - started, stage_s)

    def transact(self, proof: dict, checked: "Checked") -> Code:
        """Checks 6–11 and the writes of an accepted proof, in one transaction."""
        account, nonce, triangle_id = proof["account"].lower(), proof["nonce"], proof["triangle_id"]
        db = self.db
        with self.client.start_session() as session, session.start_transaction():
            holder = db.accounts.find_one({"_id": account}, {"lastProof": 1, "balanceMicro": 1},
                                          session=session)
            triangle = db.triangles.find_one({"_id": triangle_id}, {"state": 1, "clicks": 1},
                                             session=session)
            used = db.triangle_events.find_one(
                {"_id": documents.click_event_id(account, nonce)}, {"_id": 1}, session=session)
            code, speed_mps = self._decide(proof, checked, holder, triangle, used)
            if code == Code.ACCEPTED:
                self._apply(proof, checked, triangle, speed_mps, session)
        return code

    def _decide(self, proof, checked, holder, triangle, used) -> tuple[Code, float | None]:
        if used is not None:
            return Code.NONCE_REPLAY, None
        if triangle is None:
            return Code.TRIANGLE_NOT_FOUND, None
        if triangle["state"] != "active":
            return Code.TRIANGLE_NOT_ACTIVE, None
        if not checked.inside:
            return Code.OUT_OF_BOUNDS, None
        last = (holder or {}).get("lastProof")
        if not last:
            return Code.ACCEPTED, None
        dt_ms = checked.ts_ms - int(last["ts"])
        if dt_ms <= 0:
            return Code.TOO_FAST, None
        speed_mps = mesh.haversine_m(last["lat"], last["lon"], proof["lat"], proof["lon"]) / (dt_ms / 1000.0)
        if speed_mps > self.config.speed_limit_mps:
            return Code.TOO_FAST, speed_mps
        if dt_ms < self.config.moratorium_ms:
            return Code.MORATORIUM, speed_mps
        return Code.ACCEPTED, speed_mps

    def _apply(self, proof, checked, triangle, speed_mps, session) -> None:
        db, now = self.db, dt.datetime.now(dt.timezone.utc)
        account, triangle_id = proof["account"].lower(), proof["triangle_id"]
        reward_micro = REWARD_MICRO[checked.level - 1]
        clicks = int(triangle.get("clicks", 0)) + 1
        subdivides = clicks >= self.config.subdivide_at_clicks
        state = "active" if not subdivides else "subdivided" if checked.level < MAX_LEVEL else "exhausted"
        event = {"_id": documents.click_event_id(account, proof["nonce"]), "triangleId": triangle_id,
                 "eventType": "click", "timestamp": DatetimeMS(checked.ts_ms), "account": account,
                 "nonce": proof["nonce"], "signature": proof["signature"],
                 "payload": {"rewardMicro": Int64(reward_micro), "clickNumber": clicks,
                             "lat": proof["lat"], "lon": proof["lon"], "accuracy": proof["accuracy"],
                             "speed": speed_mps}}
        db.triangle_events.insert_one(event, session=session)
        fields = {"clicks": clicks, "state": state, "lastClickAt": DatetimeMS(checked.ts_ms), "updatedAt": now}
        if state == "subdivided":
            child_keys = mesh.child_keys(np.array([checked.key], np.int64))[0]
            children = documents.triangle_documents(child_keys, now)
            fields["childrenIds"] = [child["_id"] for child in children]
            for child in children:
                db.triangles.update_one({"_id": child.pop("_id")}, {"$setOnInsert": child}, upsert=True,
                                        session=session)
        db.triangles.update_one({"_id": triangle_id}, {"$set": fields}, session=session)
        if subdivides:
            db.triangle_events.insert_one({
                "_id": f"subdivide:{triangle_id}", "triangleId": triangle_id, "eventType": "subdivide",
                "timestamp": DatetimeMS(checked.ts_ms), "account": account,
                "payload": {"clickNumber": clicks, "state": state,
                            "childrenIds": fields.get("childrenIds", [])}}, session=session)
        db.accounts.update_one({"_id": account}, {
            "$inc": {"balanceMicro": Int64(reward_micro), "proofCount": 1},
            "$set": {"lastProof": {"lat": proof["lat"], "lon": proof["lon"], "ts": DatetimeMS(checked.ts_ms)},
                     "updatedAt": now},
            "$setOnInsert": {"createdAt": now}}, upsert=True, session=session)


@dataclasses.dataclass(frozen=True)
class Checked:
    """What the stateless checks found: the first failing code (ACCEPTED when none), and what the
    transaction needs of a proof that passed them."""

    code: Code
    ts_ms: int = 0
    level: int = 0
    key: int = 0
    inside: bool = False


def check_stateless(proof: dict, config: Config) -> Checked:
    """SPEC §4 checks 1–5 on one proof, plus the point-in-triangle test check 9 needs later."""
    fields = _fields(proof)
    if fields is None:
        return Checked(Code.INVALID_PAYLOAD)
    if proof["version"] != "STEP-PROOF-v1":
        return Checked(Code.UNSUPPORTED_VERSION)
    if not 0 < proof["accuracy"] <= config.gps_max_accuracy_m:
        return Checked(Code.LOW_GPS_ACCURACY)
    ts_ms, level, key = fields
    received = proof.get("received_at")
    if received is not None and abs(ts_ms - _epoch_ms(received)) > config.clock_drift_ms:
        return Checked(Code.CLOCK_DRIFT)
    payload = {"version": proof["version"], "account": proof["account"],
               "triangleId": proof["triangle_id"], "lat": proof["lat"], "lon": proof["lon"],
               "accuracy": proof["accuracy"], "timestamp": proof["timestamp"], "nonce": proof["nonce"]}
    if _signer(crypto.canonical_message(payload), proof["signature"]) != proof["account"].lower():
        return Checked(Code.BAD_SIGNATURE)
    inside = mesh.contains(proof["triangle_id"], proof["lat"], proof["lon"])
    return Checked(Code.ACCEPTED, ts_ms, level, key, inside)


def _fields(proof: dict) -> tuple[int, int, int] | None:
    """(timestamp in epoch ms, triangle level, packed triangle key) when every §2 field rule holds."""
    try:
        if not isinstance(proof.get("version"), str):
            return None
        if not isinstance(proof.get("account"), str) or not _ACCOUNT_RE.fullmatch(proof["account"]):
            return None
        _face, level, _path = mesh.decode_id(proof.get("triangle_id"))
        key = mesh.key_of(proof["triangle_id"])
        for name, bound in (("lat", 90.0), ("lon", 180.0), ("accuracy", math.inf)):
            value = proof.get(name)
            if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                    or abs(value) > bound):
                return None
        ts_ms = _timestamp_ms(proof.get("timestamp"))
        nonce, signature = proof.get("nonce"), proof.get("signature")
        if ts_ms is None or not isinstance(nonce, str) or not 0 < len(nonce) <= _NONCE_MAX_CHARS:
            return None
        if not isinstance(signature, str) or not _SIGNATURE_RE.fullmatch(signature):
            return None
        if int(signature[-2:], 16) not in (0, 1, 27, 28):
            return None
    except (TypeError, ValueError):
        return None
    return ts_ms, level, key


def _timestamp_ms(text) -> int | None:
    match = _TIMESTAMP_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone, sign, zone_hour, zone_minute = match.groups()[6:]
    offset = dt.timedelta(0)
    if zone != "Z":
        if int(zone_hour) > 23 or int(zone_minute) > 59:
            return None
        offset = (1 if sign == "+" else -1) * dt.timedelta(hours=int(zone_hour), minutes=int(zone_minute))
    try:
        moment = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.timezone(offset))
    except ValueError:
        return None
    return (moment - _EPOCH) // dt.timedelta(milliseconds=1) + int((fraction or "0")[:3].ljust(3, "0"))


def _epoch_ms(moment) -> int:
    if isinstance(moment, dt.datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
        return (moment - _EPOCH) // dt.timedelta(milliseconds=1)
    return int(moment)


def _signer(message: str, signature: str) -> str | None:
    """Lower-case 0x address that signed `message`, None when nothing recovers."""
    sig65 = bytearray(bytes.fromhex(signature[2:] if signature.startswith("0x") else signature))
    if sig65[64] >= 27:
        sig65[64] -= 27
    try:
        public_key = secp256k1.recover_public_key(crypto.eip191_digest(message), bytes(sig65))
    except ValueError:
        return None
    return "0x" + crypto.keccak256(public_key)[-20:].hex()
