"""A plain validator that applies SPEC §4 one proof at a time: the reference the engine must equal.

It shares nothing with the engine's vectorized path: scalar `crypto.recover_address`, scalar
`mesh.contains`, its own haversine, dicts for state and a digest built line by line. Field rules come
from the ingest stage's `payload_error` column, which has tests of its own.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math

from stepbatch import crypto, mesh
from stepbatch.codes import REWARD_MICRO
from stepbatch.config import Config

EARTH_RADIUS_M = 6371000.0
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def haversine_m(lat1, lon1, lat2, lon2):
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(a))


class NaiveValidator:
    """World state in dicts; `validate` applies one batch and keeps its effects."""

    def __init__(self, triangles=(), config: Config | None = None):
        self.config = config or Config()
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
        cfg = self.config
        rejected = lambda code, speed=None: (code, 0, None, speed)  # noqa: E731
        if row["payload_error"] is not None:
            return rejected("INVALID_PAYLOAD")
        if row["version"] != "STEP-PROOF-v1":
            return rejected("UNSUPPORTED_VERSION")
        if not 0 < row["accuracy"] <= cfg.gps_max_accuracy_m:
            return rejected("LOW_GPS_ACCURACY")
        reference = row["received_at"]
        reference_ms = ((reference - EPOCH) // dt.timedelta(milliseconds=1) if reference is not None
                        else batch_time_ms)
        if reference_ms is not None and abs(row["ts_ms"] - reference_ms) > cfg.clock_drift_ms:
            return rejected("CLOCK_DRIFT")
        account = row["account"].lower()
        payload = {"version": row["version"], "account": row["account"],
                   "triangleId": row["triangle_id"], "lat": row["lat"], "lon": row["lon"],
                   "accuracy": row["accuracy"], "timestamp": row["timestamp"], "nonce": row["nonce"]}
        try:
            signer = crypto.recover_address(crypto.canonical_message(payload), row["signature"])
        except ValueError:
            signer = None
        if signer != account:
            return rejected("BAD_SIGNATURE")
        if (account, row["nonce"]) in self.nonces:
            return rejected("NONCE_REPLAY")
        triangle = self.triangles.get(row["triangle_id"])
        if triangle is None:
            return rejected("TRIANGLE_NOT_FOUND")
        if triangle["state"] != "active":
            return rejected("TRIANGLE_NOT_ACTIVE")
        if not mesh.contains(row["triangle_id"], row["lat"], row["lon"]):
            return rejected("OUT_OF_BOUNDS")
        holder = self.accounts.get(account)
        speed = None
        if holder is not None and holder["last"] is not None:
            last_lat, last_lon, last_ts = holder["last"]
            dt_ms = row["ts_ms"] - last_ts
            if dt_ms <= 0:
                return rejected("TOO_FAST")
            speed = haversine_m(last_lat, last_lon, row["lat"], row["lon"]) / (dt_ms / 1000)
            if speed > cfg.speed_limit_mps:
                return rejected("TOO_FAST", speed)
            if dt_ms < cfg.moratorium_ms:
                return rejected("MORATORIUM", speed)

        level = mesh.decode_id(row["triangle_id"])[1]
        reward = REWARD_MICRO[level - 1]
        triangle["clicks"] += 1
        click = triangle["clicks"]
        self.nonces.add((account, row["nonce"]))
        holder = self.accounts.setdefault(account, {"balance": 0, "count": 0, "last": None})
        holder["balance"] += reward
        holder["count"] += 1
        holder["last"] = (row["lat"], row["lon"], row["ts_ms"])
        if click >= cfg.subdivide_at_clicks:
            if level == 21:
                triangle["state"] = "exhausted"
            else:
                triangle["state"] = "subdivided"
                for child in mesh.children(row["triangle_id"]):
                    self.triangles.setdefault(child, {"state": "active", "clicks": 0})
        return ("ACCEPTED", reward, click, speed)
