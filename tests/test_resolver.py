"""The resolver (SPEC §4 checks 6–11 and the state rules) on hand-built state, one rule at a time."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from stepbatch.checks import StatelessResult
from stepbatch.config import Config
from stepbatch.protocol import Code, TriangleState
from stepbatch.resolve import BatchIndex, run_resolver
from stepbatch.store.base import PriorState, StateKeys

SPEC_REWARDS = [1000000, 500000, 250000, 125000, 62500, 31250, 15625, 7813, 3906, 1953, 977, 488, 244,
                122, 61, 31, 15, 8, 4, 2, 1]
MISSING, ACTIVE = TriangleState.MISSING, TriangleState.ACTIVE
SUBDIVIDED, EXHAUSTED = TriangleState.SUBDIVIDED, TriangleState.EXHAUSTED


def resolve(rows, triangles, accounts=1, pairs=None, pre_code=None, out_of_bounds=None, config=None,
            children=None, last=None, used=()):
    """rows: (account, pair, triangle, lat, lon, ts_ms); triangles: [(level, state, clicks)]."""
    n = len(rows)
    account, pair, triangle, lat, lon, ts = (np.array(c) for c in zip(*rows)) if rows else [np.zeros(0)] * 6
    pairs = pairs if pairs is not None else (int(pair.max()) + 1 if n else 0)
    state = PriorState.empty(StateKeys(*(pa.array(["k"] * k) for k in (accounts, len(triangles), pairs, pairs))))
    state.triangle_state[:] = [t[1] for t in triangles]
    state.triangle_clicks[:] = [t[2] for t in triangles]
    state.nonce_used[list(used)] = True
    if last is not None:
        state.account_has_last[0] = True
        state.account_last_lat[0], state.account_last_lon[0], state.account_last_ts_ms[0] = last
    proofs = pa.table({"lat": pa.array(lat, pa.float64()), "lon": pa.array(lon, pa.float64()),
                       "ts_ms": pa.array(ts, pa.int64())})
    stateless = StatelessResult(
        code=np.zeros(n, np.uint8) if pre_code is None else np.array(pre_code, np.uint8),
        out_of_bounds=np.zeros(n, bool) if out_of_bounds is None else np.array(out_of_bounds),
        drift_ms=np.zeros(n, np.int64), recovered=pa.nulls(n, pa.string()), timings={})
    index = BatchIndex(
        keys=None, triangle_keys=np.arange(len(triangles), dtype=np.int64),
        triangle_level=np.array([t[0] for t in triangles], np.int64),
        triangle_children=(np.array(children, np.int64) if children is not None
                           else np.full((len(triangles), 4), -1, np.int64)),
        row_account=account.astype(np.int64), row_pair=pair.astype(np.int64),
        row_triangle=triangle.astype(np.int64))
    return run_resolver(proofs, stateless, index, state, config or Config())


def codes(resolution):
    return [Code(int(c)).name for c in resolution.code]


@pytest.mark.parametrize("level", range(1, 22))
def test_an_accepted_click_pays_specs_reward_for_its_level(level):
    result = resolve([(0, 0, 0, 0.0, 0.0, 1000)], [(level, ACTIVE, 0)])
    assert codes(result) == ["ACCEPTED"]
    assert result.reward_micro.tolist() == [SPEC_REWARDS[level - 1]]
    assert result.final.account_balance_micro.tolist() == [SPEC_REWARDS[level - 1]]
    assert result.click_number.tolist() == [1] and result.level.tolist() == [level]


def test_a_stateless_failure_keeps_its_code_and_changes_nothing():
    result = resolve([(0, 0, 0, 0.0, 0.0, 1000)], [(5, ACTIVE, 0)], pre_code=[Code.BAD_SIGNATURE])
    assert codes(result) == ["BAD_SIGNATURE"]
    assert result.final.triangle_clicks.tolist() == [0] and not result.final.nonce_used.any()


def test_checks_6_to_9_in_order():
    triangles = [(5, ACTIVE, 0), (5, MISSING, 0), (5, SUBDIVIDED, 11)]
    rows = [(0, 0, 0, 0.0, 0.0, 1000),  # pair 0 used in the store
            (0, 1, 1, 0.0, 0.0, 2000),  # missing triangle
            (0, 2, 2, 0.0, 0.0, 3000),  # subdivided triangle
            (0, 3, 0, 0.0, 0.0, 4000)]  # outside its triangle
    result = resolve(rows, triangles, used=[0], out_of_bounds=[True, True, True, True])
    assert codes(result) == ["NONCE_REPLAY", "TRIANGLE_NOT_FOUND", "TRIANGLE_NOT_ACTIVE", "OUT_OF_BOUNDS"]
    assert result.triangle_state[2] == SUBDIVIDED


def test_the_same_nonce_twice_in_one_batch_is_a_replay_the_second_time():
    rows = [(0, 0, 0, 0.0, 0.0, 100_000), (0, 0, 0, 0.0, 0.0, 200_000)]
    assert codes(resolve(rows, [(5, ACTIVE, 0)])) == ["ACCEPTED", "NONCE_REPLAY"]


def test_speed_and_moratorium_against_the_last_accepted_proof():
    # 1 degree of latitude is 111,195 m at R = 6,371,000 m.
    last = (0.0, 0.0, 0)
    rows = [(0, 0, 0, 0.0, 0.0, 0),  # Δt = 0
            (0, 1, 0, 1.0, 0.0, 1_000_000),  # 111 m/s
            (0, 2, 0, 0.0, 0.0, 5_000),  # standing still, 5 s: moratorium
            (0, 3, 0, 0.0, 0.0, 10_000)]  # 10 s: accepted
    result = resolve(rows, [(5, ACTIVE, 0)], last=last)
    assert codes(result) == ["TOO_FAST", "TOO_FAST", "MORATORIUM", "ACCEPTED"]
    assert result.dt_ms.tolist() == [0, 1_000_000, 5_000, 10_000]
    assert np.isnan(result.speed_mps[0]) and result.speed_mps[1] == pytest.approx(111.19492664, rel=1e-9)
    assert result.final.account_last_ts_ms.tolist() == [10_000]


def test_a_rejected_proof_does_not_become_the_reference_for_the_next():
    rows = [(0, 0, 0, 1.0, 0.0, 20_000),  # too fast from the origin, rejected
            (0, 1, 0, 0.0, 0.0, 40_000)]  # measured against the origin again: 0 m/s
    result = resolve(rows, [(5, ACTIVE, 0)], last=(0.0, 0.0, 0))
    assert codes(result) == ["TOO_FAST", "ACCEPTED"] and result.speed_mps[1] == 0.0


def test_the_subdividing_click_makes_named_children_claimable_from_the_next_row():
    triangles = [(5, ACTIVE, 1), (6, MISSING, 0), (6, ACTIVE, 4)]
    children = [[1, 2, -1, -1], [-1] * 4, [-1] * 4]
    rows = [(0, 0, 1, 0.0, 0.0, 100_000),  # child not there yet
            (0, 1, 0, 0.0, 0.0, 200_000),  # 2nd click subdivides
            (0, 2, 1, 0.0, 0.0, 300_000),  # new child: accepted, click 1
            (0, 3, 0, 0.0, 0.0, 400_000)]  # parent: no longer active
    result = resolve(rows, triangles, children=children, config=Config(subdivide_at_clicks=2))
    assert codes(result) == ["TRIANGLE_NOT_FOUND", "ACCEPTED", "ACCEPTED", "TRIANGLE_NOT_ACTIVE"]
    assert result.subdivided.tolist() == [False, True, False, False]
    assert result.final.triangle_state.tolist() == [SUBDIVIDED, ACTIVE, ACTIVE]
    assert result.final.triangle_clicks.tolist() == [2, 1, 4]  # an existing child keeps its clicks


def test_level_21_is_exhausted_instead_of_subdivided():
    result = resolve([(0, 0, 0, 0.0, 0.0, 100_000), (0, 1, 0, 0.0, 0.0, 200_000)],
                     [(21, ACTIVE, 10)], children=[[-1] * 4])
    assert codes(result) == ["ACCEPTED", "TRIANGLE_NOT_ACTIVE"]
    assert result.final.triangle_state.tolist() == [EXHAUSTED] and result.triangle_state[1] == EXHAUSTED
