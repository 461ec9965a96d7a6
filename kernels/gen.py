"""The sequential bookkeeping of `stepbatch gen`: which triangle each row claims, which rows can carry
their intended verdict, and the state a validator builds from the rows it accepts.

Rows arrive in batch order. The pass mirrors SPEC §4 for the rows the generator means to be accepted
(clicks, subdivision at the 11th click, exhaustion at level 21, each walker's last accepted proof), with
the rule kernels of `stepbatch_kernels.rules` that the resolver uses, and,
for every other row, checks that the state at its position lets it fail with its intended code; a row
for which that does not hold (say a rapid-fire proof whose reference proof was never accepted) is
dropped and changes nothing, exactly as a rejected proof changes nothing.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.typed import Dict

from stepbatch_kernels.geo import in_triangle, latlon_to_xyz
from stepbatch_kernels.jit import kernel, parallel_kernel
from stepbatch_kernels.mesh import INVALID_KEY, child_key, key_digit, key_level, key_vertices, parent_key
from stepbatch_kernels.rules import (
    ACCEPTED,
    ACTIVE,
    MORATORIUM,
    SUBDIVIDED,
    TOO_FAST,
    since_last,
    state_after_click,
    timing_code,
)

# What the pass must establish for a row, by the attack kind's role.
ROLE_HONEST = 0  # accepted: claims the deepest active triangle holding its point
ROLE_PASSIVE = 1  # rejected by a stateless check (1-5): claims the deepest active triangle, or the base one
ROLE_PRESET = 2  # claims the triangle it was given (an unseeded one)
ROLE_REPLAY = 3  # re-uses the nonce of one of the walker's accepted proofs
ROLE_TELEPORT = 4  # passes checks 1-9 and the moratorium, then is faster than the speed limit
ROLE_RAPID_FIRE = 5  # passes checks 1-10, then falls inside the moratorium
ROLE_NEIGHBOUR = 6  # claims an existing, active sibling of the triangle holding its point

# Triangle bookkeeping: a value >= 0 is the click count of an active triangle.
_SUBDIVIDED = -1
_EXHAUSTED = -2
_MISSING = -3

# Every kept row stays this far from the speed and moratorium thresholds, on whichever side it is
# meant to be, so a validator whose haversine rounds differently in the last bits agrees with it.
_SPEED_MARGIN = 1.25
_TIME_MARGIN_MS = 500


@kernel
def _state(triangles, key, base_level):
    """Click count (>= 0, active) or a negative state; base-level triangles are all seeded."""
    if key in triangles:
        return triangles[key]
    return 0 if key_level(key) == base_level else _MISSING


@kernel
def _ancestor(key, level):
    while key_level(key) > level:
        key = parent_key(key)
    return key


@parallel_kernel
def ancestor_keys(keys, level, out_keys):
    """out_keys[i] = the level-`level` ancestor of keys[i] (itself when it is not deeper)."""
    for i in numba.prange(keys.shape[0]):
        out_keys[i] = _ancestor(keys[i], level)


@kernel
def _deepest_active(triangles, point_key, base_level):
    """The active triangle a phone at the point would be told to claim: descend from the base level
    through subdivided triangles along the point's path; -1 when the path ends exhausted."""
    key = _ancestor(point_key, base_level)
    while True:
        state = _state(triangles, key, base_level)
        if state >= 0:
            return key
        if state != _SUBDIVIDED:
            return np.int64(INVALID_KEY)
        key = child_key(key, key_digit(point_key, key_level(key) - 1))


@kernel
def _holds(key, lat_deg, lon_deg):
    v0, v1, v2 = key_vertices(key)
    return in_triangle(v0, v1, v2, latlon_to_xyz(lat_deg, lon_deg))


@kernel
def _active_sibling(triangles, key, base_level, pick, lat_deg, lon_deg):
    """An active sibling sharing an edge with `key` where possible (the centre child borders all
    three corners), that does not hold the point; -1 when there is none."""
    if key_level(key) <= 1:
        return np.int64(INVALID_KEY)
    parent = parent_key(key)
    digit = key_digit(key, key_level(key) - 2)
    for i in range(3):
        if digit == 3:
            c = (pick + i) % 3
        elif i == 0:
            c = 3
        else:
            c = (digit + i) % 3
        sibling = child_key(parent, c)
        if _state(triangles, sibling, base_level) >= 0 and not _holds(sibling, lat_deg, lon_deg):
            return sibling
    return np.int64(INVALID_KEY)


@kernel
def plan_rows(role, walker, ts_ms, lat_deg, lon_deg, point_key, preset_key, pick, base_level,
              n_walkers, speed_limit_mps, moratorium_ms, subdivide_at_clicks,
              out_keep, out_claimed_key, out_replay_of):
    """One pass over the rows in batch order.

    point_key: level-21 key of the triangle holding each row's reported point (its path).
    pick: uniform [0, 1) per row; reservoir-samples the proof a replay re-uses and picks siblings.
    out_keep: the row carries its intended verdict; out_claimed_key: the triangle it claims;
    out_replay_of: for a replay, the row index whose nonce it re-uses (else -1).
    """
    triangles = Dict.empty(key_type=types.int64, value_type=types.int64)
    has_last = np.zeros(n_walkers, np.bool_)
    last_ts_ms = np.zeros(n_walkers, np.int64)
    last_lat = np.zeros(n_walkers, np.float64)
    last_lon = np.zeros(n_walkers, np.float64)
    accepted = np.zeros(n_walkers, np.int64)
    replay_sample = np.full(n_walkers, -1, np.int64)

    for i in range(role.shape[0]):
        w = walker[i]
        out_keep[i] = False
        out_replay_of[i] = -1
        claim = _deepest_active(triangles, point_key[i], base_level)
        out_claimed_key[i] = claim if claim != INVALID_KEY else _ancestor(point_key[i], base_level)
        r = role[i]
        if r == ROLE_PASSIVE:
            out_keep[i] = True
            continue
        if r == ROLE_PRESET:
            out_claimed_key[i] = preset_key[i]
            out_keep[i] = True
            continue
        if r == ROLE_REPLAY:
            if accepted[w] > 0:
                out_replay_of[i] = replay_sample[w]
                out_keep[i] = True
            continue
        if claim == INVALID_KEY:
            continue
        if r == ROLE_NEIGHBOUR:
            sibling = _active_sibling(triangles, claim, base_level, np.int64(pick[i] * 3.0),
                                      lat_deg[i], lon_deg[i])
            if sibling != INVALID_KEY:
                out_claimed_key[i] = sibling
                out_keep[i] = True
            continue
        if not _holds(claim, lat_deg[i], lon_deg[i]):
            continue
        dt_ms, speed_mps = since_last(last_lat[w], last_lon[w], last_ts_ms[w], lat_deg[i], lon_deg[i], ts_ms[i])
        # Checks 10 and 11 as the resolver applies them, with thresholds moved by the margins.
        if r == ROLE_TELEPORT:
            out_keep[i] = (has_last[w] and dt_ms >= moratorium_ms + _TIME_MARGIN_MS and timing_code(
                True, dt_ms, speed_mps, speed_limit_mps * _SPEED_MARGIN, moratorium_ms) == TOO_FAST)
            continue
        if r == ROLE_RAPID_FIRE:
            out_keep[i] = timing_code(has_last[w], dt_ms, speed_mps, speed_limit_mps / _SPEED_MARGIN,
                                      moratorium_ms - _TIME_MARGIN_MS + 1) == MORATORIUM
            continue
        # An honest row: accepted exactly when SPEC §4 accepts it, with the same margins.
        if timing_code(has_last[w], dt_ms, speed_mps, speed_limit_mps / _SPEED_MARGIN,
                       moratorium_ms + _TIME_MARGIN_MS) != ACCEPTED:
            continue
        out_keep[i] = True
        clicks = _state(triangles, claim, base_level) + 1
        after = state_after_click(clicks, key_level(claim), subdivide_at_clicks)
        triangles[claim] = clicks if after == ACTIVE else _SUBDIVIDED if after == SUBDIVIDED else _EXHAUSTED
        if after == SUBDIVIDED:
            for c in range(4):
                child = child_key(claim, c)
                if child not in triangles:
                    triangles[child] = 0
        has_last[w] = True
        last_ts_ms[w] = ts_ms[i]
        last_lat[w] = lat_deg[i]
        last_lon[w] = lon_deg[i]
        accepted[w] += 1
        # Reservoir sampling of one: each accepted proof ends up the replayed one with equal chance.
        if pick[i] * accepted[w] < 1.0:
            replay_sample[w] = i
