"""stepbatch.mesh: the geometry vectors, lookup properties, key arithmetic and level enumeration
(ids: tests/test_mesh_ids.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepbatch import mesh
from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import keys as mesh_keys
from stepbatch.mesh import levels as mesh_levels
from tests import naive_mesh as naive
from tests.conftest import load_vectors
from tests.strategies import faces, interior_weights, mesh_triangles

level_21_triangles = st.tuples(faces, st.just(21),
                               st.lists(st.integers(0, 3), min_size=20, max_size=20).map(tuple))


def latlon_of(xyz):
    """(lat, lon) in degrees; atan2 for latitude stays accurate next to the poles, unlike asin."""
    x, y, z = xyz / np.linalg.norm(xyz)
    return math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))


def interior_point(triangle_id, weights):
    return latlon_of(np.asarray(weights) @ mesh.vertices(triangle_id))


# ------------------------------------------------------------------------ conformance vectors

def test_geometry_vectors_vertices_are_bit_identical():
    triangles = load_vectors("geometry")
    keys = mesh_ids.decode_ids([t["id"] for t in triangles]).keys
    expected = np.array([t["vertices_xyz"] for t in triangles])
    assert np.array_equal(mesh_keys.vertices_of_keys(keys), expected)
    assert all(np.array_equal(mesh.vertices(t["id"]), e) for t, e in zip(triangles, expected))


def test_geometry_vectors_inside_points_are_contained_and_looked_up_outside_points_are_not():
    for triangle in load_vectors("geometry"):
        for lat, lon in triangle["inside"]:
            assert mesh.contains(triangle["id"], lat, lon)
            assert mesh.triangle_at(lat, lon, triangle["level"]) == triangle["id"]
        for lat, lon in triangle["outside"]:
            assert not mesh.contains(triangle["id"], lat, lon)


def test_geometry_vectors_agree_in_column_form():
    rows = [(t["id"], t["level"], lat, lon, inside) for t in load_vectors("geometry")
            for points, inside in ((t["inside"], True), (t["outside"], False)) for lat, lon in points]
    ids, levels, lat, lon, inside = map(list, zip(*rows))
    assert mesh.contains(ids, lat, lon).tolist() == inside
    looked_up = mesh.triangle_at(np.array(lat), np.array(lon), np.array(levels))
    assert all(got == want for got, want, is_inside in zip(looked_up, ids, inside) if is_inside)


# ------------------------------------------------------------------------------- properties

@settings(max_examples=40, deadline=None)
@given(level_21_triangles, interior_weights)
def test_triangle_at_of_a_point_inside_a_triangle_returns_it_and_its_ancestors_at_every_level(
        triangle, weights):
    face, _, path = triangle
    lat, lon = interior_point(mesh.encode_id(*triangle), weights)
    expected = [mesh.encode_id(face, level, path[:level - 1]) for level in range(1, 22)]
    assert [mesh.triangle_at(lat, lon, level) for level in range(1, 22)] == expected
    assert mesh.triangle_at(np.full(21, lat), np.full(21, lon), np.arange(1, 22)).tolist() == expected
    assert mesh.contains(expected, lat, lon).all()


@settings(max_examples=60, deadline=None)
@given(mesh_triangles.filter(lambda t: t[1] < 21), interior_weights)
def test_children_tile_their_parent(triangle, weights):
    parent_id = mesh.encode_id(*triangle)
    lat, lon = interior_point(parent_id, weights)
    in_children = [mesh.contains(child, lat, lon) for child in mesh.children(parent_id)]
    # Weights on a child boundary put the point within a rounding error of two children: skip them.
    if min(abs(w - 0.5 * sum(weights)) for w in weights) > 1e-6 * sum(weights):
        assert sum(in_children) == 1
    assert mesh.contains(parent_id, lat, lon)


@settings(max_examples=60, deadline=None)
@given(mesh_triangles)
def test_children_and_parent_are_inverse(triangle):
    triangle_id = mesh.encode_id(*triangle)
    if triangle[1] < 21:
        kids = mesh.children(triangle_id)
        face, level, path = triangle
        assert kids == [mesh.encode_id(face, level + 1, path + (c,)) for c in range(4)]
        assert {mesh.parent(k) for k in kids} == {triangle_id}
    assert mesh.parent(triangle_id) == (None if triangle[1] == 1 else
                                        mesh.encode_id(triangle[0], triangle[1] - 1, triangle[2][:-1]))


def test_level_21_triangles_have_no_children():
    with pytest.raises(ValueError, match="no children"):
        mesh.children(mesh.encode_id(4, 21, (3,) * 20))


# --------------------------------------------------------------------------- key arithmetic

def test_key_arithmetic_columns_match_the_scalar_helpers():
    keys = np.array([naive.pack(1, 1, ()), naive.pack(5, 21, (2,) * 20), -1])
    assert mesh_keys.key_levels(keys).tolist() == [1, 21, 0]
    children = mesh_keys.child_keys(keys)
    assert children[0].tolist() == [naive.pack(1, 2, (c,)) for c in range(4)]
    assert children[1:].tolist() == [[-1] * 4] * 2


# ------------------------------------------------------------------------- GeoJSON and lookup

def test_polygon_is_a_closed_counter_clockwise_ring_through_the_vertices():
    for triangle_id in [mesh.encode_id(6, 1, ()), mesh.encode_id(11, 9, (0, 1, 2, 3) * 2),
                        mesh.encode_id(2, 21, (3, 1) * 10)]:
        ring = np.array(mesh.polygon(triangle_id)["coordinates"][0])
        assert mesh.polygon(triangle_id)["type"] == "Polygon" and ring.shape == (4, 2)
        assert (ring[0] == ring[-1]).all()
        xyz = [naive.latlon_to_xyz(lat, lon) for lon, lat in ring[:3]]
        assert naive.dot(xyz[0], naive.cross(xyz[1], xyz[2])) > 0  # counter-clockwise seen from outside
        vertex_latlon = sorted(latlon_of(v) for v in mesh.vertices(triangle_id))
        assert np.allclose(sorted((lat, lon) for lon, lat in ring[:3]), vertex_latlon, atol=1e-9)


def test_centroid_is_the_normalised_vertex_sum_and_lies_inside():
    triangle_id = mesh.encode_id(13, 14, (2, 1, 0, 3) * 3 + (1,))
    point = mesh.centroid(triangle_id)
    lon, lat = point["coordinates"]
    assert point["type"] == "Point"
    assert np.allclose((lat, lon), latlon_of(mesh.vertices(triangle_id).sum(axis=0)), atol=1e-12)
    assert mesh.contains(triangle_id, lat, lon)


def test_invalid_points_give_per_row_results_and_scalar_errors():
    looked_up = mesh.triangle_at([0.0, 91.0, float("nan"), 10.0], [0.0, 0.0, 0.0, 181.0], 3)
    assert looked_up[0] is not None and looked_up.tolist()[1:] == [None] * 3
    assert mesh_keys.triangle_at_keys([0.0, 0.0], [0.0, 0.0], [0, 22]).tolist() == [-1, -1]
    with pytest.raises(ValueError, match="no triangle"):
        mesh.triangle_at(95.0, 0.0, 3)
    triangle_id = mesh.triangle_at(0.0, 0.0, 3)
    assert mesh.contains(triangle_id, 0.0, 0.0) and not mesh.contains(triangle_id, float("nan"), 0.0)
    assert mesh.contains(["bad", triangle_id], 0.0, 0.0).tolist() == [False, True]
    with pytest.raises(ValueError):
        mesh.contains("bad", 0.0, 0.0)


def test_contains_keys_with_heavily_repeated_keys_equals_the_reference_per_row():
    rng = np.random.default_rng(12)
    path = (1, 2, 0, 3, 3, 0, 1, 2, 2)
    triangles = [(3, 10, path), (3, 11, path + (1,))]  # a triangle and one of its children
    claimed = rng.integers(0, 2, 2000)
    keys = np.array([naive.pack(*t) for t in triangles])[claimed]
    centre_lon, centre_lat = mesh.centroid(mesh.encode_id(*triangles[0]))["coordinates"]
    lon, lat = centre_lon + rng.normal(0, 0.3, 2000), centre_lat + rng.normal(0, 0.3, 2000)
    expected = [naive.contains_xyz(naive.vertices(triangles[c][0], triangles[c][2]),
                                   naive.latlon_to_xyz(la, lo)) for c, la, lo in zip(claimed, lat, lon)]
    assert mesh_keys.contains_keys(keys, lat, lon).tolist() == expected
    assert 0 < sum(expected) < len(expected)


def test_haversine_takes_scalars_and_columns():
    assert mesh_keys.haversine_m(0, 0, 0, 1) == pytest.approx(6371000 * math.pi / 180, rel=1e-12)
    distances = mesh_keys.haversine_m([0.0, 47.5], [0.0, 19.0], [0.0, 47.5], [1.0, 19.001])
    assert distances == pytest.approx([naive.haversine_m(0, 0, 0, 1),
                                       naive.haversine_m(47.5, 19, 47.5, 19.001)])


# --------------------------------------------------------------------------- level enumeration

def test_iter_level_keys_without_bbox_lists_every_triangle_once_in_order():
    for level in (1, 2, 4):
        keys = np.concatenate(list(mesh_levels.iter_level_keys(level, chunk=100)))
        assert len(keys) == mesh_levels.count_level(level) == 20 * 4 ** (level - 1)
        assert (np.diff(keys) > 0).all() and mesh_keys.keys_valid(keys).all()
        assert (mesh_keys.key_levels(keys) == level).all()
    assert mesh_levels.count_level(21) == 20 * 4 ** 20
    assert max(len(c) for c in mesh_levels.iter_level_keys(4, chunk=100)) == 100


@pytest.mark.parametrize("bbox", [(5.9, 45.8, 10.5, 47.8), (170.0, -10.0, -170.0, 10.0),
                                  (-30.0, 80.0, 30.0, 90.0)])
def test_iter_level_keys_with_bbox_lists_every_triangle_under_the_box_and_stays_near_it(bbox):
    level = 9
    keys = np.concatenate(list(mesh_levels.iter_level_keys(level, bbox, chunk=1000)))
    assert len(keys) == mesh_levels.count_level(level, bbox) and (np.diff(keys) > 0).all()
    west, south, east, north = bbox
    rng = np.random.default_rng(13)
    lon = (west + rng.uniform(0, 1, 3000) * ((east - west) % 360 or 360) + 180) % 360 - 180
    lat = rng.uniform(south, north, 3000)
    assert np.isin(mesh_keys.triangle_at_keys(lat, lon, level), keys).all()
    centroid_lon, centroid_lat = mesh_keys.centroids_of_keys(keys).T
    side_deg = 63.0 / 2 ** (level - 1)
    assert (centroid_lat > south - side_deg).all() and (centroid_lat < north + side_deg).all()


def test_a_world_bbox_lists_the_whole_level_and_a_bad_bbox_is_refused():
    assert mesh_levels.count_level(6, (-180, -90, 180, 90)) == mesh_levels.count_level(6)
    for bad in [(0, 10, 5, 0), (0, 0, 200, 1), (0, 0, 1), "x"]:
        with pytest.raises(ValueError):
            mesh_levels.count_level(3, bad)
    with pytest.raises(ValueError):
        mesh_levels.count_level(22)
