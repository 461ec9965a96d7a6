"""The central test: the vectorized engine equals the one-proof-at-a-time reference (tests/naive.py)."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepbatch import MemoryStore, Validator, read_proofs
from stepbatch.config import Config
from tests.naive import Gates, NaiveValidator
from tests.strategies import _T0_MS, proof_rows


def _assert_same(result, expected, digest):
    rows = result.verdicts.to_pylist()
    got = [(r["code"], r["reward_micro"], r["click_number"]) for r in rows]
    want = [(code, reward, click) for code, reward, click, _speed in expected]
    assert got == want
    for row, (_c, _r, _k, speed) in zip(rows, expected):
        if speed is None:
            assert row["speed_mps"] is None
        else:
            assert math.isclose(row["speed_mps"], speed, rel_tol=1e-12, abs_tol=1e-9)
    assert result.digest == digest


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(level=st.sampled_from([12, 16, 19, 20]), data=st.data(),
       subdivide_at=st.sampled_from([2, 3, 11]), cuts=st.lists(st.integers(0, 40), max_size=2))
def test_engine_equals_one_by_one_reference(level, data, subdivide_at, cuts):
    seeded, rows = data.draw(proof_rows(level))
    config = Config(subdivide_at_clicks=subdivide_at, signature_threads=2)
    with Validator(MemoryStore(seeded), config) as engine:
        _run_both(engine, NaiveValidator(seeded, Gates(subdivide_at_clicks=subdivide_at)), rows, cuts)


def _run_both(engine, naive, rows, cuts):
    bounds = [0, *sorted(min(c, len(rows)) for c in cuts), len(rows)]
    for number, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        batch = read_proofs(rows[lo:hi]) if hi > lo else read_proofs([])
        batch_time = _T0_MS + 60_000 * number
        result = engine.finalize(batch, f"batch-{number}", batch_time=batch_time)
        expected, digest = naive.validate(batch, f"batch-{number}", batch_time)
        _assert_same(result, expected, digest)
    for address, account in naive.accounts.items():
        stored = engine.store.accounts[address]
        assert (stored.balance_micro, stored.proof_count) == (account["balance"], account["count"])
    for triangle_id, triangle in naive.triangles.items():
        assert engine.store.triangles[triangle_id] == [
            {"active": 0, "subdivided": 1, "exhausted": 2}[triangle["state"]], triangle["clicks"]]
