"""Seeding and dropping mesh levels, and point lookups, against a real server."""

from __future__ import annotations

import h3
import pytest
from hypothesis import given, settings

from stepbatch import mesh
from stepbatch.cli import main
from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import levels as mesh_levels
from stepbatch.mesh.keys import parent_keys
from stepbatch.store.base import StoreError
from stepbatch.store.documents import H3_RESOLUTION_BY_LEVEL
from stepbatch.store.seed import drop_level, seed_mesh, triangles_at
from tests.strategies import mesh_triangles

pytestmark = pytest.mark.mongo

BUDAPEST_BBOX = (18.9, 47.4, 19.2, 47.6)


def test_dry_run_counts_every_level_and_writes_nothing(mongo_store):
    report = seed_mesh(mongo_store, range(1, 11), dry_run=True, progress=False)
    assert [level.planned for level in report.levels] == [20 * 4 ** (level - 1) for level in range(1, 11)]
    assert report.levels[-1].planned == 5_242_880
    assert all(400 < level.bson_bytes_per_document < 2_000 for level in report.levels)
    assert report.estimated_bytes == sum(level.estimated_bytes for level in report.levels) > 0
    assert report.inserted == 0
    assert mongo_store.db.triangles.count_documents({}) == 0


def test_h3_resolution_follows_the_documented_level_mapping():
    assert H3_RESOLUTION_BY_LEVEL[1:] == (0, 1, 1, 2, 3, 4, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11, 11, 12, 13, 14, 14)


@settings(max_examples=200, deadline=None)
@given(mesh_triangles)
def test_parent_keys_agree_with_mesh_parent(triangle):
    triangle_id = mesh.encode_id(*triangle)
    parent = parent_keys([mesh_ids.key_of(triangle_id)])[0]
    assert (mesh_ids.id_of(int(parent)) if parent >= 0 else None) == mesh.parent(triangle_id)


def test_seeding_stores_20_times_4_to_the_level_minus_1_triangles_per_level(mongo_store):
    report = seed_mesh(mongo_store, range(1, 5), progress=False, materialize=True)
    assert [level.inserted for level in report.levels] == [20, 80, 320, 1280]
    for level in range(1, 5):
        assert mongo_store.db.triangles.count_documents({"level": level}) == 20 * 4 ** (level - 1)


def test_seeded_documents_carry_geometry_parent_and_h3_cell(mongo_store):
    seed_mesh(mongo_store, range(1, 4), progress=False, materialize=True)
    triangle_id = mesh.triangle_at(47.4979, 19.0402, 3)
    doc = mongo_store.db.triangles.find_one({"_id": triangle_id})
    face, level, path = mesh.decode_id(triangle_id)
    assert (doc["face"], doc["level"], doc["path"]) == (face, level, "".join(map(str, path)))
    assert doc["parentId"] == mesh.parent(triangle_id)
    assert (doc["state"], doc["clicks"], doc["childrenIds"]) == ("active", 0, [])
    assert doc["polygon"] == mesh.polygon(triangle_id)
    assert doc["centroid"] == mesh.centroid(triangle_id)
    assert h3.get_resolution(doc["h3"]) == H3_RESOLUTION_BY_LEVEL[3]
    lon, lat = doc["centroid"]["coordinates"]
    assert h3.latlng_to_cell(lat, lon, H3_RESOLUTION_BY_LEVEL[3]) == doc["h3"]
    assert mongo_store.db.triangles.find_one({"level": 1})["parentId"] is None


def test_second_run_inserts_nothing(mongo_store):
    seed_mesh(mongo_store, range(1, 4), progress=False, materialize=True)
    seed_mesh(mongo_store, [8], bbox=BUDAPEST_BBOX, progress=False, materialize=True)
    again = seed_mesh(mongo_store, range(1, 4), progress=False, materialize=True)
    assert again.inserted == 0 and again.existing == 420
    again = seed_mesh(mongo_store, [8], bbox=BUDAPEST_BBOX, progress=False, materialize=True)
    assert again.inserted == 0 and again.existing == again.planned


def test_interrupted_seeding_is_finished_by_running_it_again(mongo_store):
    mongo_store.add_triangles(mesh_ids.encode_keys(next(mesh_levels.iter_level_keys(4, chunk=500))).to_pylist())
    report = seed_mesh(mongo_store, [4], progress=False, materialize=True)
    assert (report.levels[0].inserted, report.levels[0].existing) == (1280 - 500, 500)
    assert mongo_store.db.triangles.count_documents({"level": 4}) == 1280


def test_bbox_seeding_is_deterministic_and_covers_the_box(mongo_store):
    planned = mesh_levels.count_level(10, BUDAPEST_BBOX)
    report = seed_mesh(mongo_store, [10], bbox=BUDAPEST_BBOX, progress=False, materialize=True)
    assert report.levels[0].inserted == planned == mesh_levels.count_level(10, BUDAPEST_BBOX)
    # Level-10 triangles are ~15 km across: a 0.3° × 0.2° box needs a handful, not the level's 5M.
    assert 2 <= planned <= 200
    west, south, east, north = BUDAPEST_BBOX
    for lat in (south, (south + north) / 2, north):
        for lon in (west, (west + east) / 2, east):
            assert mongo_store.db.triangles.count_documents({"_id": mesh.triangle_at(lat, lon, 10)}) == 1


def test_drop_refuses_a_level_with_clicked_triangles_unless_forced(mongo_store):
    seed_mesh(mongo_store, range(2, 4), progress=False, materialize=True)
    clicked = mesh.triangle_at(47.4979, 19.0402, 3)
    mongo_store.db.triangles.update_one({"_id": clicked}, {"$set": {"clicks": 2}})
    with pytest.raises(StoreError, match="level 3 has 1 clicked triangle;"):
        drop_level(mongo_store, 3)
    assert mongo_store.db.triangles.count_documents({"level": 3}) == 320
    assert drop_level(mongo_store, 2) == 80
    assert drop_level(mongo_store, 3, force=True) == 320
    assert mongo_store.db.triangles.count_documents({}) == 0


@pytest.mark.parametrize("materialize", [False, True])
def test_triangles_at_finds_the_containing_triangle_of_each_seeded_level(mongo_store, materialize):
    seed_mesh(mongo_store, range(1, 5), progress=False, materialize=materialize)
    for lat, lon in ((47.4979, 19.0402), (89.9, 10.0), (-33.9, 151.2)):
        found = triangles_at(mongo_store, lat, lon)
        assert [doc["level"] for doc in found] == [1, 2, 3, 4]
        assert all(mesh.contains(doc["_id"], lat, lon) for doc in found)
    with pytest.raises(ValueError):
        triangles_at(mongo_store, 91.0, 0.0)


def test_cli_seeds_and_drops_levels(mongo_uri, mongo_db_name, mongo_store, capsys):
    common = ["--mongodb-uri", mongo_uri, "mesh"]
    assert main(common + ["seed", "--levels", "1-2", "--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out
    assert main(common + ["seed", "--levels", "1-2", "--db", mongo_db_name]) == 0
    assert mongo_store.db.triangles.count_documents({}) == 0
    assert "declared" in capsys.readouterr().out
    assert main(common + ["seed", "--levels", "1-2", "--materialize", "--db", mongo_db_name]) == 0
    assert mongo_store.db.triangles.count_documents({}) == 100
    mongo_store.db.triangles.update_one({"level": 2}, {"$set": {"clicks": 1}})
    assert main(common + ["drop", "--level", "2", "--db", mongo_db_name]) == 1
    assert "1 clicked triangle" in capsys.readouterr().err
    assert main(common + ["drop", "--level", "2", "--force", "--db", mongo_db_name]) == 0
    assert mongo_store.db.triangles.count_documents({}) == 20
    with pytest.raises(SystemExit) as usage:
        main(common + ["seed", "--levels", "5-2"])
    assert usage.value.code == 2
