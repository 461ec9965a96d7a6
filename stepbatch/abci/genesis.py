"""The genesis `app_state` of a stepbatch chain and the app hashes that follow from it (SPEC §8).

`app_state` is `{"regions": [region, …], "config": {gate: value, …}}`: the mesh to seed, as
`stepbatch.mesh.regions` declarations (levels and bbox, or triangle ids), and the rule configuration
(SPEC §4's gates, by their `Config` field names). A gate the genesis leaves out takes its SPEC §4
default when the genesis is read, never a value from a node's environment, so one genesis is one set
of rules on every node; the canonical app_state names every gate.

The genesis app hash is SHA-256 of `STEP-APP-v1` followed by the canonical JSON of the completed
`app_state` (keys sorted, no spaces, UTF-8); each block's app hash is SHA-256 of the previous one, the
32 bytes of the block's verdict digest and the 32 bytes of the digest of the state the block wrote
(`stepbatch.store.statedigest.written_state_digest`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from stepbatch.config import Config
from stepbatch.mesh.regions import Regions

APP_HASH_HEADER = b"STEP-APP-v1"
# The settings that decide verdicts; everything else in Config is local to a validator.
GATES = ("gps_max_accuracy_m", "clock_drift_ms", "speed_limit_mps", "moratorium_ms", "subdivide_at_clicks")


class GenesisError(ValueError):
    """The genesis app_state is malformed, or differs from the one this validator's database holds."""


@dataclasses.dataclass(frozen=True)
class Genesis:
    regions: Regions
    gates: dict
    canonical: str  # the canonical JSON text of app_state

    @property
    def app_hash(self) -> bytes:
        return hashlib.sha256(APP_HASH_HEADER + self.canonical.encode()).digest()

    def config(self, local: Config) -> Config:
        """`local` (threads, database) with the chain's gates."""
        return dataclasses.replace(local, **self.gates)


# SPEC §4's defaults: what a gate the genesis does not name is.
DEFAULT_GATES = {gate: getattr(Config(), gate) for gate in GATES}


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def app_state(regions: Regions, config: Config) -> dict:
    return {"regions": regions.to_json(), "config": {gate: getattr(config, gate) for gate in GATES}}


def parse(app_state_bytes: bytes) -> Genesis:
    try:
        value = json.loads(app_state_bytes or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GenesisError(f"app_state is not JSON: {err}") from err
    if not isinstance(value, dict) or set(value) - {"regions", "config"}:
        raise GenesisError('app_state is {"regions": [...], "config": {...}}')
    named = value.get("config") or {}
    if not isinstance(named, dict):
        raise GenesisError(f"app_state.config is an object of gates ({', '.join(GATES)})")
    unknown = set(named) - set(GATES)
    if unknown:
        raise GenesisError(f"app_state.config takes {', '.join(GATES)}; unknown: {sorted(unknown)}")
    gates = {**DEFAULT_GATES, **named}
    try:
        Config(**gates)
        regions = Regions.from_json(value.get("regions") or [])
    except (TypeError, ValueError) as err:
        raise GenesisError(f"app_state: {err}") from err
    # One spelling per value (`50` and `50.0` are one gate), so that one rule set has one app hash.
    gates = {gate: type(DEFAULT_GATES[gate])(gates[gate]) for gate in GATES}
    return Genesis(regions=regions, gates=gates,
                   canonical=canonical_json({**value, "regions": regions.to_json(), "config": gates}))


def next_app_hash(previous: bytes, verdict_digest_hex: str, state_digest: bytes) -> bytes:
    """SHA-256(previous app hash ‖ verdict digest ‖ digest of the state the block wrote)."""
    return hashlib.sha256(previous + bytes.fromhex(verdict_digest_hex) + state_digest).digest()
