"""stepbatch_kernels.mesh and stepbatch_kernels.geo against the slow reference in tests/naive_mesh.py (id text kernels:
tests/test_mesh_ids.py)."""

from __future__ import annotations

import math

import h3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepbatch_kernels import geo as kgeo
from stepbatch_kernels import mesh as kmesh
from tests import naive_mesh as naive
from tests.strategies import (
    interior_weights,
    latitudes,
    longitudes,
    mesh_triangles,
    random_triangles,
)


def random_unit_vectors(rng, count):
    v = rng.normal(size=(count, 3))
    return [tuple(row) for row in v / np.linalg.norm(v, axis=1, keepdims=True)]


def near_edge_points(rng, triangle, offsets):
    """Points on each edge's great circle pushed off it by each offset (unit-sphere units)."""
    v0, v1, v2 = triangle
    points = []
    for a, b in ((v0, v1), (v1, v2), (v2, v0)):
        n = naive.normalize(naive.cross(a, b))
        t = rng.uniform(-0.2, 1.2)
        on = naive.normalize(tuple(t * x + (1 - t) * y for x, y in zip(a, b)))
        points += [naive.normalize(tuple(o + d * m for o, m in zip(on, n))) for d in offsets]
    return points


EDGE_OFFSETS = (0.0, 1e-16, -1e-16, 5e-13, -5e-13, 9.9e-13, -9.9e-13, 1e-12, -1e-12, 1.01e-12,
                -1.01e-12, 1.05e-12, -1.05e-12, 2e-12, -2e-12, 1e-9, -1e-9)


# ------------------------------------------------------------------------------------- keys

@settings(deadline=None)
@given(mesh_triangles)
def test_key_fields_parent_and_child_match_the_reference_packing(triangle):
    face, level, path = triangle
    key = naive.pack(face, level, path)
    assert (kmesh.key_face(key), kmesh.key_level(key)) == (face, level)
    assert [kmesh.key_digit(key, i) for i in range(level - 1)] == list(path)
    assert kmesh.parent_key(key) == (naive.pack(face, level - 1, path[:-1]) if level > 1 else -1)
    for c in range(4):
        assert kmesh.child_key(key, c) == (naive.pack(face, level + 1, path + (c,)) if level < 21 else -1)
    assert kmesh.key_is_valid(key)


@settings(deadline=None)
@given(st.one_of(st.integers(-2**63, 2**63 - 1), st.integers(0, 2**50),
                 mesh_triangles.map(lambda t: naive.pack(*t)).flatmap(
                     lambda k: st.integers(0, 49).map(lambda bit: k ^ (1 << bit)))))
def test_key_validity_matches_the_reference_on_arbitrary_and_bit_flipped_keys(key):
    assert kmesh.key_is_valid(key) == naive.key_is_valid(key)


def test_keys_of_one_level_sort_in_face_then_path_order():
    triangles = sorted(random_triangles(np.random.default_rng(5), 300, levels=[9]))
    keys = [naive.pack(*t) for t in triangles]
    assert keys == sorted(keys)


# -------------------------------------------------------------------------------- vertices

def test_vertices_of_keys_equal_the_reference_bit_for_bit():
    triangles = random_triangles(np.random.default_rng(1), 400)
    keys = np.array([naive.pack(*t) for t in triangles], np.int64)
    out = np.empty((len(keys), 3, 3))
    kmesh.vertices_of_keys(keys, out)
    expected = np.array([naive.vertices(face, path) for face, _, path in triangles])
    assert np.array_equal(out, expected)


def test_vertices_of_invalid_keys_are_nan():
    out = np.zeros((3, 3, 3))
    kmesh.vertices_of_keys(np.array([-1, 20 << 45 | 1 << 40, 1 << 40 | 1], np.int64), out)
    assert np.isnan(out).all()


# ------------------------------------------------------------------------ point in triangle

def test_filtered_edge_test_equals_the_exact_spec_test_on_and_around_edges():
    rng = np.random.default_rng(2)
    checked = 0
    for face, level, path in random_triangles(rng, 150):
        triangle = naive.vertices(face, path)
        for p in near_edge_points(rng, triangle, EDGE_OFFSETS) + random_unit_vectors(rng, 4):
            assert kgeo.in_triangle(*triangle, p) == naive.contains_xyz(triangle, p)
            checked += 1
    assert checked > 7000


def test_band_of_the_edge_tolerance_is_where_spec_puts_it():
    # A shallow triangle: there s(x) is accurate to ~1e-16, so a push of 0.9e-12 or 1.1e-12 off an
    # edge lands on either side of the band. (At level 21, cross(a, b) of nearly parallel vertices
    # leaves ~1e-11 of rounding in s itself.)
    triangle = naive.vertices(3, (1, 2))
    a, b, c = triangle
    n = naive.normalize(naive.cross(a, b))
    outward = -1.0 if naive.dot(n, c) > 0 else 1.0
    on = naive.midpoint(a, b)
    pushed = {d: naive.normalize(tuple(o + outward * d * m for o, m in zip(on, n)))
              for d in (0.9e-12, 1.1e-12)}
    assert -1e-12 < naive.s(a, b, pushed[0.9e-12]) * -outward < 0
    assert naive.s(a, b, pushed[1.1e-12]) * -outward < -1e-12
    assert kgeo.in_triangle(*triangle, pushed[0.9e-12])
    assert not kgeo.in_triangle(*triangle, pushed[1.1e-12])


def test_triangle_at_equals_the_reference_descent_on_random_points():
    rng = np.random.default_rng(3)
    for p in random_unit_vectors(rng, 150):
        level = int(rng.integers(1, 22))
        face, path = naive.triangle_at_xyz(p, level)
        assert kmesh.triangle_at_xyz(p, level) == naive.pack(face, level, path)


def test_triangle_at_equals_the_reference_descent_on_child_edges_and_vertices():
    rng = np.random.default_rng(4)
    for face, level, path in random_triangles(rng, 40, levels=range(1, 21)):
        triangle = naive.vertices(face, path)
        # Points on and beside the edges between the children, where the first-child rule and the
        # rounding fallback decide.
        inner = naive.children(*triangle)[3]
        points = near_edge_points(rng, inner, (0.0, 1e-12, -1e-12, 3e-16, -3e-16)) + list(inner)
        for p in points:
            deeper = min(21, level + 2)
            got_face, got_path = naive.triangle_at_xyz(p, deeper)
            assert kmesh.triangle_at_xyz(p, deeper) == naive.pack(got_face, deeper, got_path)


def test_contains_many_equals_the_reference_on_and_around_edges():
    rng = np.random.default_rng(6)
    triangles = random_triangles(rng, 60)
    keys = np.array([naive.pack(*t) for t in triangles], np.int64)
    normals, s_opposite, valid = np.empty((60, 3, 3)), np.empty((60, 3)), np.empty(60, np.bool_)
    kmesh.edge_planes_of_keys(keys, normals, s_opposite, valid)
    rows, lat, lon, expected = [], [], [], []
    for i, (face, _, path) in enumerate(triangles):
        triangle = naive.vertices(face, path)
        for p in near_edge_points(rng, triangle, EDGE_OFFSETS[::3]) + random_unit_vectors(rng, 2):
            lat_deg, lon_deg = kgeo.xyz_to_latlon(p)
            rows.append(i)
            lat.append(lat_deg)
            lon.append(lon_deg)
            expected.append(naive.contains_xyz(triangle, naive.latlon_to_xyz(lat_deg, lon_deg)))
    out = np.empty(len(rows), np.bool_)
    kmesh.contains_many(np.array(rows, np.int64), normals, s_opposite, valid, np.array(lat),
                        np.array(lon), out)
    assert valid.all()
    assert out.tolist() == expected
    assert 0 < sum(expected) < len(expected)


@settings(max_examples=60, deadline=None)
@given(mesh_triangles, interior_weights)
def test_triangle_at_of_an_interior_point_descends_through_every_ancestor(triangle, weights):
    face, level, path = triangle
    p = naive.normalize(tuple(np.asarray(weights) @ np.array(naive.vertices(face, path))))
    for depth in range(1, level + 1):
        assert kmesh.triangle_at_xyz(p, depth) == naive.pack(face, depth, path[:depth - 1])


def test_latlon_to_xyz_equals_the_reference_formula():
    rng = np.random.default_rng(7)
    for lat, lon in zip(rng.uniform(-90, 90, 200), rng.uniform(-180, 180, 200)):
        assert kgeo.latlon_to_xyz(lat, lon) == naive.latlon_to_xyz(lat, lon)


# ---------------------------------------------------------------------------------- haversine

@settings(max_examples=200, deadline=None)
@given(latitudes, longitudes, latitudes, longitudes)
def test_haversine_agrees_with_h3_great_circle_distance(lat1, lon1, lat2, lon2):
    expected_m = h3.great_circle_distance((lat1, lon1), (lat2, lon2), unit="rads") * 6371000.0
    assert kgeo.haversine_m(lat1, lon1, lat2, lon2) == pytest.approx(expected_m, rel=1e-9, abs=1e-6)


def test_haversine_of_antipodes_is_half_the_circumference_not_nan():
    assert kgeo.haversine_m(0.0, 0.0, 0.0, 180.0) == pytest.approx(math.pi * 6371000.0, rel=1e-15)
    assert kgeo.haversine_m(10.0, 20.0, 10.0, 20.0) == 0.0


def test_haversine_many_equals_the_scalar_kernel_and_the_reference():
    rng = np.random.default_rng(8)
    cols = [rng.uniform(-90, 90, 500), rng.uniform(-180, 180, 500), rng.uniform(-90, 90, 500),
            rng.uniform(-180, 180, 500)]
    out = np.empty(500)
    kgeo.haversine_many_m(*cols, out)
    assert out.tolist() == [kgeo.haversine_m(*row) for row in zip(*cols)]
    assert out == pytest.approx([naive.haversine_m(*row) for row in zip(*cols)], rel=1e-9)
