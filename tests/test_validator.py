"""Named scenarios of SPEC §4 through `Validator` with a MemoryStore, and the finalize contract."""

from __future__ import annotations

import hashlib

import pytest

from stepbatch import MemoryStore, Validator, mesh
from stepbatch.config import Config
from stepbatch.protocol import REWARD_MICRO
from stepbatch.validator import BatchConflictError
from tests.strategies import _T0_MS, WORLD_CENTRE, point_in, signed_row

KEYS = [hashlib.sha256(b"scenario-%d" % i).digest() for i in range(16)]
INSIDE = (0.6, 0.2, 0.2)


def codes(result):
    return result.verdicts.column("code").to_pylist()


@pytest.fixture
def triangle():
    return mesh.triangle_at(*WORLD_CENTRE, 16)


def test_eleventh_click_subdivides_and_children_become_claimable_from_that_row(triangle):
    child = mesh.children(triangle)[1]
    lat, lon = point_in(child, INSIDE)
    rows = [signed_row(KEYS[15], child, lat, lon, _T0_MS, "early")]  # before the split
    rows += [signed_row(KEYS[i], triangle, lat, lon, _T0_MS, "click") for i in range(11)]
    rows += [signed_row(KEYS[12], triangle, lat, lon, _T0_MS, "late"),  # parent no longer active
             signed_row(KEYS[13], child, lat, lon, _T0_MS, "first-child-click")]
    store = MemoryStore([triangle])
    with Validator(store, Config()) as validator:
        result = validator.finalize(rows, "split", batch_time=_T0_MS)
    verdicts = result.verdicts.to_pylist()
    assert codes(result) == ["TRIANGLE_NOT_FOUND"] + ["ACCEPTED"] * 11 + [
        "TRIANGLE_NOT_ACTIVE", "ACCEPTED"]
    assert [v["click_number"] for v in verdicts[1:12]] == list(range(1, 12))
    assert verdicts[-1]["click_number"] == 1
    assert verdicts[-1]["reward_micro"] == REWARD_MICRO[16]
    assert verdicts[1]["reward_micro"] == REWARD_MICRO[15]
    assert "subdivided" in verdicts[11]["message"] and "subdivided" in verdicts[12]["message"]
    assert store.triangles[triangle] == [1, 11]
    assert store.triangles[child] == [0, 1]
    assert all(store.triangles[c] == [0, 0] for c in mesh.children(triangle) if c != child)


def test_level_21_triangle_is_exhausted_not_subdivided():
    deepest = mesh.triangle_at(*WORLD_CENTRE, 21)
    lat, lon = point_in(deepest, INSIDE)
    rows = [signed_row(KEYS[i], deepest, lat, lon, _T0_MS, "x") for i in range(12)]
    store = MemoryStore([deepest])
    with Validator(store, Config()) as validator:
        result = validator.finalize(rows, "deep", batch_time=_T0_MS)
    assert codes(result) == ["ACCEPTED"] * 11 + ["TRIANGLE_NOT_ACTIVE"]
    assert "exhausted" in result.verdicts.column("message")[11].as_py()
    assert result.verdicts.column("reward_micro")[0].as_py() == 1
    assert store.triangles[deepest] == [2, 11]


def test_nonce_is_spent_only_by_an_accepted_proof(triangle):
    lat, lon = point_in(triangle, INSIDE)
    rows = [signed_row(KEYS[0], triangle, lat, lon, _T0_MS, "n", accuracy=80),
            signed_row(KEYS[0], triangle, lat, lon, _T0_MS, "n"),
            signed_row(KEYS[0], triangle, lat, lon, _T0_MS + 60_000, "n"),
            signed_row(KEYS[1], triangle, lat, lon, _T0_MS + 60_000, "n")]
    with Validator(MemoryStore([triangle]), Config()) as validator:
        result = validator.finalize(rows, "nonces", batch_time=_T0_MS)
        assert codes(result) == ["LOW_GPS_ACCURACY", "ACCEPTED", "NONCE_REPLAY", "ACCEPTED"]
        again = [signed_row(KEYS[1], triangle, lat, lon, _T0_MS + 120_000, "n")]
        assert codes(validator.finalize(again, "nonces-2", batch_time=_T0_MS)) == ["NONCE_REPLAY"]


def test_speed_and_moratorium_chain_through_the_last_accepted_proof():
    triangle = mesh.triangle_at(*WORLD_CENTRE, 12)  # sides of kilometres: a jump across is too fast
    lat, lon = point_in(triangle, INSIDE)
    far_lat, far_lon = point_in(triangle, (0.2, 0.2, 0.6))
    rows = [signed_row(KEYS[0], triangle, lat, lon, _T0_MS, "a"),
            signed_row(KEYS[0], triangle, lat, lon, _T0_MS + 5_000, "b"),  # moratorium
            signed_row(KEYS[0], triangle, far_lat, far_lon, _T0_MS + 11_000, "c"),  # too fast
            signed_row(KEYS[0], triangle, lat, lon, _T0_MS - 1_000, "d"),  # Δt ≤ 0
            signed_row(KEYS[0], triangle, lat, lon, _T0_MS + 11_000, "e")]  # measured from row 0
    with Validator(MemoryStore([triangle]), Config()) as validator:
        result = validator.validate(rows, "speed", batch_time=_T0_MS)
    assert codes(result) == ["ACCEPTED", "MORATORIUM", "TOO_FAST", "TOO_FAST", "ACCEPTED"]
    speeds = result.verdicts.column("speed_mps").to_pylist()
    assert speeds[0] is None and speeds[3] is None
    assert speeds[2] > 15 and speeds[1] == 0 and speeds[4] == 0


def test_bad_rows_get_their_own_verdict_and_message(triangle):
    lat, lon = point_in(triangle, INSIDE)
    good = signed_row(KEYS[0], triangle, lat, lon, _T0_MS, "ok")
    v2 = signed_row(KEYS[1], triangle, lat, lon, _T0_MS, "v2", version="STEP-PROOF-v2")
    rows = [{"account": "not-an-address"}, good, v2, {**good, "nonce": "tampered"}]
    with Validator(MemoryStore([triangle]), Config()) as validator:
        result = validator.validate(rows, "bad", batch_time=_T0_MS)
    assert codes(result) == ["INVALID_PAYLOAD", "ACCEPTED", "UNSUPPORTED_VERSION", "BAD_SIGNATURE"]
    messages = result.verdicts.column("message").to_pylist()
    assert messages[0]
    assert "does not cover the location" in messages[2]
    assert "recovers to 0x" in messages[3]


def test_validate_writes_nothing_and_finalize_is_idempotent(triangle):
    lat, lon = point_in(triangle, INSIDE)
    rows = [signed_row(KEYS[i], triangle, lat, lon, _T0_MS, "once") for i in range(3)]
    store = MemoryStore([triangle])
    with Validator(store, Config()) as validator:
        validated = validator.validate(rows, "idem", batch_time=_T0_MS)
        assert store.triangles[triangle] == [0, 0] and not store.accounts
        first = validator.finalize(rows, "idem", batch_time=_T0_MS)
        second = validator.finalize(rows, "idem", batch_time=_T0_MS)
        assert first.digest == second.digest == validated.digest
        assert second.verdicts.equals(first.verdicts)
        assert store.triangles[triangle] == [0, 3]
        with pytest.raises(BatchConflictError):
            validator.finalize(rows[:2], "idem", batch_time=_T0_MS)
