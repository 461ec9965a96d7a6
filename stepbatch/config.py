"""Validator configuration: the gates of SPEC §4 and the storage settings of §5, overridable by env."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Config:
    gps_max_accuracy_m: float = 50.0
    clock_drift_ms: int = 120_000
    speed_limit_mps: float = 15.0
    moratorium_ms: int = 10_000
    subdivide_at_clicks: int = 11
    signature_threads: int = 0  # 0: one per core
    mongodb_uri: str | None = None
    db_name: str = "step"
    data_dir: str = "stepbatch-data"
    commit_retries: int = 10

    @property
    def threads(self) -> int:
        return self.signature_threads or os.cpu_count() or 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Config":
        """Defaults, then the environment variables named in SPEC §4/§5, then explicit overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(_ENV_NAMES[field.name])
            if raw is None or raw == "":
                continue
            try:
                values[field.name] = _PARSERS[field.type](raw)
            except ValueError as err:
                raise ValueError(
                    f"{_ENV_NAMES[field.name]}={raw!r}: expected {field.type}") from err
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


_ENV_NAMES = {
    "gps_max_accuracy_m": "GPS_MAX_ACCURACY_M",
    "clock_drift_ms": "CLOCK_DRIFT_MS",
    "speed_limit_mps": "PROOF_SPEED_LIMIT_MPS",
    "moratorium_ms": "PROOF_MORATORIUM_MS",
    "subdivide_at_clicks": "SUBDIVIDE_AT_CLICKS",
    "signature_threads": "STEPBATCH_SIGNATURE_THREADS",
    "mongodb_uri": "MONGODB_URI",
    "db_name": "STEPBATCH_DB",
    "data_dir": "STEPBATCH_DATA_DIR",
    "commit_retries": "STEPBATCH_COMMIT_RETRIES",
}

_PARSERS = {"float": float, "int": int, "str": str, "str | None": str}
