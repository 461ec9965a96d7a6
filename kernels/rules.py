"""SPEC §4's stateful rules as kernels, one home for each: the resolver applies them to every row of a
batch, and the traffic generator calls the same kernels while it decides which rows to keep.
"""

from __future__ import annotations

import numpy as np

from stepbatch.protocol import MAX_LEVEL, Code, TriangleState
from stepbatch_kernels.geo import haversine_m
from stepbatch_kernels.jit import kernel

# Numba freezes IntEnum members into the compiled code as integer constants.
ACCEPTED, TOO_FAST, MORATORIUM = Code.ACCEPTED, Code.TOO_FAST, Code.MORATORIUM
ACTIVE, SUBDIVIDED, EXHAUSTED = TriangleState.ACTIVE, TriangleState.SUBDIVIDED, TriangleState.EXHAUSTED


@kernel
def since_last(last_lat_deg, last_lon_deg, last_ts_ms, lat_deg, lon_deg, ts_ms):
    """(Δt in ms, speed in m/s) from an account's last accepted proof to this one; the speed is NaN
    where Δt ≤ 0 (it is not measured)."""
    dt_ms = ts_ms - last_ts_ms
    if dt_ms <= 0:
        return dt_ms, np.nan
    return dt_ms, haversine_m(last_lat_deg, last_lon_deg, lat_deg, lon_deg) / (dt_ms / 1000.0)


@kernel
def timing_code(has_last, dt_ms, speed_mps, speed_limit_mps, moratorium_ms):
    """Checks 10 and 11 against the last accepted proof: TOO_FAST (Δt ≤ 0 or too fast), MORATORIUM
    (too soon), else ACCEPTED; ACCEPTED for an account without one."""
    if not has_last:
        return ACCEPTED
    if dt_ms <= 0 or speed_mps > speed_limit_mps:
        return TOO_FAST
    if dt_ms < moratorium_ms:
        return MORATORIUM
    return ACCEPTED


@kernel
def state_after_click(clicks, level, subdivide_at_clicks):
    """A triangle's state once it has `clicks`: it subdivides at `subdivide_at_clicks`, or at the
    deepest level is exhausted instead."""
    if clicks < subdivide_at_clicks:
        return ACTIVE
    return EXHAUSTED if level >= MAX_LEVEL else SUBDIVIDED
