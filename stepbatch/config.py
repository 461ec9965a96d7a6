"""Validator configuration: the gates of SPEC §4 and the storage settings of §5, overridable by env.

Every value is range-checked when a Config is made, from the environment or in code: a gate that a
typo could switch off (a NaN speed limit, a subdivision at 0 clicks) is refused with one line that
names the setting, what it needs and what it got.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping


class ConfigError(ValueError):
    """A setting is malformed or outside its range (the command line exits 2)."""


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
    # How long finalize keeps re-validating a batch whose commit conflicts with other writers. It
    # outlasts MongoDB's default transaction lifetime (60 s), so a transaction left open by a writer
    # that was killed mid-commit is outwaited rather than reported as a failure.
    commit_wait_s: float = 90.0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            rule = _RULES.get(field.name)
            if rule is None:
                continue
            kind, low, what = rule
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and (kind is float or float(value).is_integer())
                  and math.isfinite(value) and (value > low if what == ">" else value >= low))
            if not ok:
                need = f"{'a number' if kind is float else 'an integer'} {what} {low:g}"
                raise ConfigError(f"{ENV_NAMES[field.name]}: expected {need}, got {value!r}")
        if not self.db_name:
            raise ConfigError(f"{ENV_NAMES['db_name']}: expected a database name, got ''")

    @property
    def threads(self) -> int:
        return self.signature_threads or os.cpu_count() or 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Config":
        """Defaults, then the environment variables named in SPEC §4/§5, then explicit overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = ENV_NAMES[field.name]
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            kind = _RULES[field.name][0] if field.name in _RULES else str
            try:
                values[field.name] = kind(raw.strip()) if kind is not str else raw
            except ValueError:
                expected = "a number" if kind is float else "an integer"
                raise ConfigError(f"{name}: expected {expected}, got {raw[:40]!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


ENV_NAMES = {
    "gps_max_accuracy_m": "GPS_MAX_ACCURACY_M",
    "clock_drift_ms": "CLOCK_DRIFT_MS",
    "speed_limit_mps": "PROOF_SPEED_LIMIT_MPS",
    "moratorium_ms": "PROOF_MORATORIUM_MS",
    "subdivide_at_clicks": "SUBDIVIDE_AT_CLICKS",
    "signature_threads": "STEPBATCH_SIGNATURE_THREADS",
    "mongodb_uri": "MONGODB_URI",
    "db_name": "STEPBATCH_DB",
    "data_dir": "STEPBATCH_DATA_DIR",
    "commit_wait_s": "STEPBATCH_COMMIT_WAIT_S",
}

# field → (type, bound, comparison): every numeric setting must be finite and beyond its bound.
_RULES = {
    "gps_max_accuracy_m": (float, 0, ">"),
    "clock_drift_ms": (int, 0, ">="),
    "speed_limit_mps": (float, 0, ">"),
    "moratorium_ms": (int, 0, ">="),
    "subdivide_at_clicks": (int, 1, ">="),
    "signature_threads": (int, 0, ">="),
    "commit_wait_s": (float, 0, ">="),
}
