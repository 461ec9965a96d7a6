"""Declared regions of the mesh: a triangle exists if it is stored or a declaration covers it."""

from __future__ import annotations

import contextlib
import uuid

import numpy as np
import pymongo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepbatch import MemoryStore, Validator, mesh, read_proofs
from stepbatch.cli import main
from stepbatch.config import Config
from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import levels as mesh_levels
from stepbatch.mesh.regions import IdRegion, LevelRegion, Regions
from stepbatch.protocol import MAX_LEVEL
from stepbatch.store.base import StoreError
from stepbatch.store.mongo import MongoStore
from stepbatch.store.seed import drop_level, seed_mesh, triangles_at
from stepbatch.store.statedigest import state_digest
from tests.naive import Gates, NaiveValidator
from tests.strategies import _T0_MS, ACCOUNT_KEYS, WORLD_CENTRE, point_in, proof_rows, signed_row

MONTH_MS = 30 * 86_400_000  # long enough to walk anywhere on Earth under the speed limit
boxes = st.tuples(st.floats(-180, 180), st.floats(-90, 90), st.floats(0.01, 40), st.floats(0.01, 30)).map(
    lambda b: (b[0], max(-90.0, b[1] - b[3]), ((b[0] + b[2] + 180) % 360) - 180, min(90.0, b[1] + b[3])))


@settings(max_examples=60, deadline=None)
@given(bbox=boxes, level=st.integers(1, 5))
def test_bbox_coverage_is_exactly_what_seeding_a_bbox_enumerates(bbox, level):
    every = np.concatenate(list(mesh_levels.iter_level_keys(level)))
    listed = np.concatenate(list(mesh_levels.iter_level_keys(level, bbox)) or [np.empty(0, np.int64)])
    covered = Regions.of([LevelRegion(level, level, bbox)]).covers(every)
    assert set(every[covered].tolist()) == set(listed.tolist())


def test_coverage_rules_for_levels_ids_and_bad_keys():
    inside = mesh.triangle_at(*WORLD_CENTRE, 7)
    listed = mesh.triangle_at(0.0, 0.0, 15)
    regions = Regions.of([LevelRegion(5, 8), IdRegion.of_ids([listed])])
    ids = [inside, mesh.triangle_at(*WORLD_CENTRE, 9), listed, mesh.children(listed)[0], "not an id"]
    assert regions.covers_ids(ids).tolist() == [True, False, True, False, False]
    assert Regions.from_json(regions.to_json()) == regions
    assert regions.fingerprint() == Regions.of(reversed(regions.regions)).fingerprint()
    assert Regions.of([LevelRegion(2, 6)]).without_level(4) == Regions.of([LevelRegion(2, 3), LevelRegion(5, 6)])
    with pytest.raises(ValueError, match="canonical"):
        IdRegion.of_ids(["STEP-TRI-v1:A1-00000000000000000000-AAA"])
    with pytest.raises(ValueError, match="kind"):
        Regions.from_json([{"kind": "circle"}])


@contextlib.contextmanager
def _scratch_store(uri: str):
    name = f"stepbatch_test_{uuid.uuid4().hex[:12]}"
    try:
        with MongoStore(uri, name) as store:
            yield store
    finally:
        with pymongo.MongoClient(uri) as client:
            client.drop_database(name)


def _proof(key: bytes, triangle_id: str, ts_ms: int, nonce: str) -> dict:
    lat, lon = point_in(triangle_id, (1.0, 1.0, 1.0))
    return signed_row(key, triangle_id, lat, lon, ts_ms, nonce)


@pytest.mark.mongo
def test_whole_earth_to_level_10_is_declared_without_documents(mongo_store):
    report = seed_mesh(mongo_store, range(1, 11), progress=False)
    assert report.planned == sum(20 * 4 ** (level - 1) for level in range(1, 11)) == 6_990_500
    assert mongo_store.db.triangles.count_documents({}) == 0
    assert mongo_store.db.regions.count_documents({}) == 1

    anywhere = [mesh.triangle_at(lat, lon, 10) for lat, lon in ((-77.8, 166.7), (64.1, -21.9), (0.0, 179.99))]
    deeper = mesh.triangle_at(-33.9, 151.2, 11)
    parent = mesh.parent(deeper)
    rows = [_proof(ACCOUNT_KEYS[k], triangle_id, _T0_MS, f"n{k}") for k, triangle_id in enumerate(anywhere)]
    rows.append(_proof(ACCOUNT_KEYS[3], deeper, _T0_MS, "n3"))
    config = Config(subdivide_at_clicks=2, signature_threads=1)
    with Validator(mongo_store, config) as validator:
        first = validator.finalize(read_proofs(rows), "b1", batch_time=_T0_MS)
        assert first.verdicts.column("code").to_pylist() == ["ACCEPTED"] * 3 + ["TRIANGLE_NOT_FOUND"]
        later = [_proof(ACCOUNT_KEYS[k], parent, _T0_MS + MONTH_MS, f"p{k}") for k in (0, 1)]
        later.append(_proof(ACCOUNT_KEYS[2], deeper, _T0_MS + MONTH_MS, "c2"))
        second = validator.finalize(read_proofs(later), "b2", batch_time=_T0_MS + MONTH_MS)
    assert second.verdicts.column("code").to_pylist() == ["ACCEPTED"] * 3
    stored = {doc["_id"]: doc for doc in mongo_store.db.triangles.find()}
    # Only triangles whose state changed have documents: 3, the parent, and the child clicked after
    # it subdivided; its other children exist by its state.
    assert set(stored) == {*anywhere, parent, deeper}
    assert stored[parent]["state"] == "subdivided" and stored[deeper]["clicks"] == 1
    assert stored[anywhere[0]]["polygon"] == mesh.polygon(anywhere[0])


@pytest.mark.mongo
def test_drop_takes_a_level_out_of_the_declaration_and_keeps_clicked_triangles(mongo_store):
    seed_mesh(mongo_store, range(3, 6), progress=False)
    clicked = mesh.triangle_at(*WORLD_CENTRE, 4)
    with Validator(mongo_store, Config(signature_threads=1)) as validator:
        validator.finalize(read_proofs([_proof(ACCOUNT_KEYS[0], clicked, _T0_MS, "x")]), "b", _T0_MS)
    with pytest.raises(StoreError, match="level 4 has 1 clicked triangle"):
        drop_level(mongo_store, 4)
    assert drop_level(mongo_store, 5) == 0
    assert mongo_store.regions == Regions.of([LevelRegion(3, 4)])
    assert [doc["level"] for doc in triangles_at(mongo_store, *WORLD_CENTRE)] == [3, 4]
    assert drop_level(mongo_store, 4, force=True) == 1
    assert [doc["level"] for doc in triangles_at(mongo_store, *WORLD_CENTRE)] == [3]


@pytest.mark.mongo
def test_cli_declares_in_a_moment_and_dry_run_tells_what_is_covered(mongo_uri, mongo_db_name, mongo_store,
                                                                     capsys):
    common = ["--mongodb-uri", mongo_uri, "mesh", "seed", "--db", mongo_db_name]
    assert main(common + ["--levels", "1-10", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6,990,500" in out and "dry run" in out
    assert mongo_store.db.regions.count_documents({}) == 0
    assert main(common + ["--levels", "9-10", "--bbox", "18.9,47.4,19.2,47.6"]) == 0
    assert "declared" in capsys.readouterr().out
    assert mongo_store.regions == Regions.of([LevelRegion(9, 10, (18.9, 47.4, 19.2, 47.6))])
    assert mongo_store.db.triangles.count_documents({}) == 0


def _region_around(level: int, scale: float) -> LevelRegion:
    """Levels level-1..level near a box of `scale` triangle sides around the test's world centre."""
    half = scale * 8000.0 / 2 ** (level - 1) / 111.0
    lat, lon = WORLD_CENTRE
    return LevelRegion(level - 1, level, (lon - half, lat - half, lon + half, lat + half))


@pytest.mark.mongo
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.data_too_large,
                                                                HealthCheck.function_scoped_fixture])
@given(level=st.sampled_from([12, 20]), scale=st.sampled_from([0.3, 0.7, 1.5]), data=st.data(),
       subdivide_at=st.sampled_from([2, 3]), cut=st.integers(0, 40))
def test_declared_and_materialized_regions_give_the_same_verdicts_and_state(mongo_uri, level, scale, data,
                                                                             subdivide_at, cut):
    region = _region_around(level, scale)
    _, rows = data.draw(proof_rows(level, max_rows=30))
    existing = [triangle_id for lvl in region.levels
                for keys in mesh_levels.iter_level_keys(lvl, region.bbox)
                for triangle_id in mesh_ids.encode_keys(keys).to_pylist()]
    config = Config(subdivide_at_clicks=subdivide_at, signature_threads=1)
    naive = NaiveValidator(existing, Gates(subdivide_at_clicks=subdivide_at))
    with _scratch_store(mongo_uri) as declared, _scratch_store(mongo_uri) as materialized:
        seed_mesh(declared, region.levels, bbox=region.bbox, progress=False)
        seed_mesh(materialized, region.levels, bbox=region.bbox, progress=False, materialize=True)
        assert materialized.db.triangles.count_documents({}) == len(existing)
        engines = [Validator(store, config) for store in
                   (declared, materialized, MemoryStore(regions=[region]))]
        for number, part in enumerate((rows[:cut], rows[cut:])):
            batch_time = _T0_MS + 60_000 * number
            expected, digest = naive.validate(read_proofs(part), f"b{number}", batch_time)
            for engine in engines:
                result = engine.finalize(read_proofs(part), f"b{number}", batch_time=batch_time)
                assert result.verdicts.column("code").to_pylist() == [code for code, *_ in expected]
                assert result.digest == digest
        assert state_digest(declared.db) == state_digest(materialized.db)
        touched = {doc["_id"]: doc for doc in declared.db.triangles.find()}
        for doc in materialized.db.triangles.find({"_id": {"$in": list(touched)}}):
            assert {k: doc[k] for k in ("state", "clicks", "childrenIds", "parentId", "polygon")} == \
                   {k: touched[doc["_id"]][k] for k in ("state", "clicks", "childrenIds", "parentId", "polygon")}
        for engine in engines:
            engine.close()


def test_level_21_and_unknown_triangles_follow_the_declaration():
    deepest = mesh.triangle_at(*WORLD_CENTRE, MAX_LEVEL)
    store = MemoryStore(regions=[LevelRegion(MAX_LEVEL, MAX_LEVEL, (19.0, 47.4, 19.1, 47.6))])
    rows = [_proof(ACCOUNT_KEYS[k], deepest, _T0_MS, f"n{k}") for k in range(3)]
    rows.append(_proof(ACCOUNT_KEYS[3], mesh.triangle_at(0.0, 0.0, MAX_LEVEL), _T0_MS, "far"))
    with Validator(store, Config(subdivide_at_clicks=2, signature_threads=1)) as validator:
        codes = validator.finalize(read_proofs(rows), "b", batch_time=_T0_MS).verdicts.column("code").to_pylist()
    assert codes == ["ACCEPTED", "ACCEPTED", "TRIANGLE_NOT_ACTIVE", "TRIANGLE_NOT_FOUND"]
