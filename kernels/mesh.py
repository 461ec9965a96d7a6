"""STEP-TRI-v1 mesh kernels (SPEC §3): packed triangle keys, vertices, point lookup, bounding caps.

A triangle is packed into an int64 `key = (face << 45) | (level << 40) | path_bits`: face 0..19,
level 1..21, path digit i (0-based, i < level - 1, digits 0..3) in bits [38 - 2i, 39 - 2i], first digit
most significant, unused digits 0. Keys of one level therefore sort in face-then-path order.
The id text of a key is parsed and spelled in `stepbatch_kernels.mesh_ids`. Nothing outside
`kernels/` does arithmetic on the bits of a key.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from stepbatch.protocol import MAX_LEVEL
from stepbatch_kernels.geo import (
    cross,
    dot,
    in_triangle,
    inside_edge,
    latlon_is_valid,
    latlon_to_xyz,
    midpoint,
    min_oriented_s,
    normalize,
    passes_edge,
    xyz_to_latlon,
)
from stepbatch_kernels.jit import kernel, parallel_kernel

FACE_COUNT = 20
INVALID_KEY = -1

_PHI = (1.0 + math.sqrt(5.0)) / 2.0
_ICOSAHEDRON_RAW = (
    (-1.0, _PHI, 0.0), (1.0, _PHI, 0.0), (-1.0, -_PHI, 0.0), (1.0, -_PHI, 0.0),
    (0.0, -1.0, _PHI), (0.0, 1.0, _PHI), (0.0, -1.0, -_PHI), (0.0, 1.0, -_PHI),
    (_PHI, 0.0, -1.0), (_PHI, 0.0, 1.0), (-_PHI, 0.0, -1.0), (-_PHI, 0.0, 1.0),
)
FACE_VERTEX_INDICES = np.array([
    [0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
    [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
    [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1],
], dtype=np.int64)


# The constants below are computed in plain Python by the kernels' own function bodies, so they carry
# exactly the bits the kernels would compute. (Under NUMBA_DISABLE_JIT the kernels are plain functions.)
_normalize, _cross, _dot = (getattr(f, "py_func", f) for f in (normalize, cross, dot))
ICOSAHEDRON_XYZ = np.array([_normalize(v) for v in _ICOSAHEDRON_RAW], dtype=np.float64)
FACE_XYZ = ICOSAHEDRON_XYZ[FACE_VERTEX_INDICES]  # (20, 3 vertices, 3 coordinates)
# SPEC §3's unit edge normals of each face, edges (v0, v1), (v1, v2), (v2, v0), and s(opposite vertex).
FACE_EDGE_NORMALS = np.array([[_normalize(_cross(f[e], f[(e + 1) % 3])) for e in range(3)]
                              for f in FACE_XYZ.tolist()])
FACE_S_OPPOSITE = np.array([[_dot(FACE_EDGE_NORMALS[i, e].tolist(), FACE_XYZ[i, (e + 2) % 3].tolist())
                             for e in range(3)] for i in range(FACE_COUNT)])

# ---------------------------------------------------------------------------------------- keys

_LEVEL_SHIFT = 40
_FACE_SHIFT = 45


@kernel
def make_key(face, level):
    """Key of the level-`level` triangle of `face` whose path digits are all 0."""
    return (np.int64(face) << _FACE_SHIFT) | (np.int64(level) << _LEVEL_SHIFT)


@kernel
def key_face(key):
    return (key >> _FACE_SHIFT) & 31


@kernel
def key_level(key):
    return (key >> _LEVEL_SHIFT) & 31


@kernel
def digit_shift(i):
    """Bit position of path digit i."""
    return 38 - 2 * i


@kernel
def key_digit(key, i):
    return (key >> digit_shift(i)) & 3


@kernel
def parent_key(key):
    """The parent's key; -1 for a level-1 triangle."""
    level = key_level(key)
    if level <= 1:
        return np.int64(INVALID_KEY)
    cleared = key & ~(np.int64(3) << digit_shift(level - 2))
    return (cleared & ~(np.int64(31) << _LEVEL_SHIFT)) | (np.int64(level - 1) << _LEVEL_SHIFT)


@kernel
def child_key(key, c):
    """Key of child c (0..3); -1 for a level-21 key, the deepest level."""
    level = key_level(key)
    if level >= MAX_LEVEL:
        return np.int64(INVALID_KEY)
    with_digit = key | (np.int64(c) << digit_shift(level - 1))
    return (with_digit & ~(np.int64(31) << _LEVEL_SHIFT)) | (np.int64(level + 1) << _LEVEL_SHIFT)


@kernel
def key_is_valid(key):
    """True for the one canonical packing of an existing triangle (no stray bits anywhere)."""
    if key < 0 or (key >> 50) != 0:
        return False
    level = key_level(key)
    if key_face(key) >= FACE_COUNT or level < 1 or level > MAX_LEVEL:
        return False
    unused_bits = 40 - 2 * (level - 1)
    return (key & ((np.int64(1) << unused_bits) - 1)) == 0


@parallel_kernel
def keys_valid(keys, out_valid):
    for i in numba.prange(keys.shape[0]):
        out_valid[i] = key_is_valid(keys[i])


@parallel_kernel
def faces_of_keys(keys, out_faces):
    """out_faces[i] = face (0..19) of keys[i]."""
    for i in numba.prange(keys.shape[0]):
        out_faces[i] = key_face(keys[i])


@parallel_kernel
def levels_of_keys(keys, out_levels):
    """out_levels[i] = level of keys[i] (1..21), 0 for an invalid key."""
    for i in numba.prange(keys.shape[0]):
        out_levels[i] = key_level(keys[i]) if key_is_valid(keys[i]) else 0


@parallel_kernel
def parents_of_keys(keys, out_parents):
    """out_parents[i] = parent of keys[i]; -1 at level 1."""
    for i in numba.prange(keys.shape[0]):
        out_parents[i] = parent_key(keys[i])


@parallel_kernel
def level_index_of_keys(keys, level, out_index):
    """Position of each level-`level` key in its level's face-major order: face · 4^(level-1) + path
    read as a base-4 number."""
    for i in numba.prange(keys.shape[0]):
        path = (keys[i] & ((np.int64(1) << _LEVEL_SHIFT) - 1)) >> digit_shift(level - 2)
        out_index[i] = (key_face(keys[i]) << (2 * (level - 1))) | path


@parallel_kernel
def keys_at_level_index(index, level, out_keys):
    """Inverse of level_index_of_keys: the level-`level` key at each face-major position."""
    for i in numba.prange(index.shape[0]):
        face = index[i] >> (2 * (level - 1))
        path = index[i] & ((np.int64(1) << (2 * (level - 1))) - 1)
        out_keys[i] = make_key(face, level) | (path << digit_shift(level - 2))


@parallel_kernel
def children_of_keys(keys, out_children):
    """out_children[i, c] = child c of keys[i]; -1 for a level-21 or invalid key."""
    for i in numba.prange(keys.shape[0]):
        valid = key_is_valid(keys[i])
        for c in range(4):
            out_children[i, c] = child_key(keys[i], c) if valid else INVALID_KEY


# ------------------------------------------------------------------------------------ geometry

@kernel
def face_vertices(face):
    return ((FACE_XYZ[face, 0, 0], FACE_XYZ[face, 0, 1], FACE_XYZ[face, 0, 2]),
            (FACE_XYZ[face, 1, 0], FACE_XYZ[face, 1, 1], FACE_XYZ[face, 1, 2]),
            (FACE_XYZ[face, 2, 0], FACE_XYZ[face, 2, 1], FACE_XYZ[face, 2, 2]))


@kernel
def pick_child(v0, v1, v2, m01, m12, m20, c):
    """Child c of (v0, v1, v2) given its edge midpoints, in SPEC §3's vertex order."""
    if c == 0:
        return v0, m01, m20
    if c == 1:
        return m01, v1, m12
    if c == 2:
        return m20, m12, v2
    return m01, m12, m20


@kernel
def face_contains(face, p):
    """SPEC §3's test of p against an icosahedron face, from the precomputed edge planes."""
    for e in range(3):
        s_p = (FACE_EDGE_NORMALS[face, e, 0] * p[0] + FACE_EDGE_NORMALS[face, e, 1] * p[1]
               + FACE_EDGE_NORMALS[face, e, 2] * p[2])
        if not passes_edge(s_p, FACE_S_OPPOSITE[face, e]):
            return False
    return True


@kernel
def child_contains(v0, v1, v2, m01, m12, m20, c, p):
    """in_triangle for child c (pick_child's triangle), testing the edge inside the parent first:
    it is the one that rejects a point lying in another child."""
    if c == 0:
        return inside_edge(m01, m20, v0, p) and inside_edge(v0, m01, m20, p) and inside_edge(m20, v0, m01, p)
    if c == 1:
        return inside_edge(m12, m01, v1, p) and inside_edge(m01, v1, m12, p) and inside_edge(v1, m12, m01, p)
    if c == 2:
        return inside_edge(m20, m12, v2, p) and inside_edge(m12, v2, m20, p) and inside_edge(v2, m20, m12, p)
    return in_triangle(m01, m12, m20, p)


@kernel
def key_vertices(key):
    """Unit-vector vertices of a valid key: the face's, then one subdivision per path digit."""
    v0, v1, v2 = face_vertices(key_face(key))
    for i in range(key_level(key) - 1):
        v0, v1, v2 = pick_child(v0, v1, v2, midpoint(v0, v1), midpoint(v1, v2), midpoint(v2, v0),
                                key_digit(key, i))
    return v0, v1, v2


@parallel_kernel
def vertices_of_keys(keys, out_xyz):
    """out_xyz[i] = (3 vertices, xyz) of keys[i]; NaN for an invalid key."""
    for i in numba.prange(keys.shape[0]):
        if not key_is_valid(keys[i]):
            out_xyz[i, :, :] = np.nan
            continue
        vs = key_vertices(keys[i])
        for j in range(3):
            for k in range(3):
                out_xyz[i, j, k] = vs[j][k]


@kernel
def triangle_at_xyz(p, level):
    """Key of the level-`level` triangle holding unit vector p, descending as SPEC §3 says.

    At each step the first candidate (face 0..19, then child 0..3) that contains p wins. Where
    rounding leaves none containing p, the candidate whose smallest oriented s (s(p) with its sign
    flipped so the opposite vertex is positive, minimised over the three edges) is largest wins;
    the first such on a tie.
    """
    face = -1
    for f in range(FACE_COUNT):
        if face_contains(f, p):
            face = f
            break
    if face < 0:
        best_s = -np.inf
        for f in range(FACE_COUNT):
            v0, v1, v2 = face_vertices(f)
            s = min_oriented_s(v0, v1, v2, p)
            if s > best_s:
                best_s, face = s, f
    key = make_key(face, level)
    v0, v1, v2 = face_vertices(face)
    for i in range(level - 1):
        m01, m12, m20 = midpoint(v0, v1), midpoint(v1, v2), midpoint(v2, v0)
        chosen = -1
        for c in range(4):
            if child_contains(v0, v1, v2, m01, m12, m20, c, p):
                chosen = c
                break
        if chosen < 0:
            best_s = -np.inf
            for c in range(4):
                a, b, d = pick_child(v0, v1, v2, m01, m12, m20, c)
                s = min_oriented_s(a, b, d, p)
                if s > best_s:
                    best_s, chosen = s, c
        key |= np.int64(chosen) << digit_shift(i)
        v0, v1, v2 = pick_child(v0, v1, v2, m01, m12, m20, chosen)
    return key


@parallel_kernel
def triangle_at_many(lat_deg, lon_deg, levels, out_keys):
    """out_keys[i] = triangle_at_xyz of row i; -1 for an invalid location or level."""
    for i in numba.prange(out_keys.shape[0]):
        level = levels[i]
        if level < 1 or level > MAX_LEVEL or not latlon_is_valid(lat_deg[i], lon_deg[i]):
            out_keys[i] = INVALID_KEY
        else:
            out_keys[i] = triangle_at_xyz(latlon_to_xyz(lat_deg[i], lon_deg[i]), level)


@parallel_kernel
def edge_planes_of_keys(keys, out_normals, out_s_opposite, out_valid):
    """Per key, SPEC §3's unit edge normals n_e = cross(a, b)/|cross(a, b)| and s(c) = dot(n_e, c),
    edges (v0, v1), (v1, v2), (v2, v0): everything a point test needs besides the point."""
    for i in numba.prange(keys.shape[0]):
        out_valid[i] = key_is_valid(keys[i])
        if not out_valid[i]:
            out_normals[i, :, :] = np.nan
            out_s_opposite[i, :] = np.nan
            continue
        vs = key_vertices(keys[i])
        for e in range(3):
            n = normalize(cross(vs[e], vs[(e + 1) % 3]))
            out_s_opposite[i, e] = dot(n, vs[(e + 2) % 3])
            for k in range(3):
                out_normals[i, e, k] = n[k]


@parallel_kernel
def contains_many(plane_index, normals, s_opposite, valid, lat_deg, lon_deg, out_inside):
    """out_inside[i]: row i's point passes every edge of triangle plane_index[i] of the
    `edge_planes_of_keys` tables (SPEC §3)."""
    for i in numba.prange(out_inside.shape[0]):
        j = plane_index[i]
        if not valid[j] or not latlon_is_valid(lat_deg[i], lon_deg[i]):
            out_inside[i] = False
            continue
        p = latlon_to_xyz(lat_deg[i], lon_deg[i])
        inside = True
        for e in range(3):
            s_p = normals[j, e, 0] * p[0] + normals[j, e, 1] * p[1] + normals[j, e, 2] * p[2]
            if not passes_edge(s_p, s_opposite[j, e]):
                inside = False
                break
        out_inside[i] = inside


@kernel
def centroid_xyz(v0, v1, v2):
    """normalize(v0 + v1 + v2): the point stored as a triangle's centroid."""
    return normalize((v0[0] + v1[0] + v2[0], v0[1] + v1[1] + v2[1], v0[2] + v1[2] + v2[2]))


@parallel_kernel
def centroids_of_keys(keys, out_lonlat_deg):
    """[lon, lat] in degrees of each valid key's centroid_xyz; NaN for invalid keys."""
    for i in numba.prange(keys.shape[0]):
        if not key_is_valid(keys[i]):
            out_lonlat_deg[i, :] = np.nan
            continue
        v0, v1, v2 = key_vertices(keys[i])
        out_lonlat_deg[i, 1], out_lonlat_deg[i, 0] = xyz_to_latlon(centroid_xyz(v0, v1, v2))


@parallel_kernel
def rings_of_keys(keys, out_lonlat_deg):
    """Closed [lon, lat] ring (4 points) per valid key, counter-clockwise seen from outside the
    sphere (RFC 7946's exterior-ring order): v0, v1, v2, v0, or v0, v2, v1, v0 when the vertex
    order runs clockwise. NaN for invalid keys."""
    for i in numba.prange(keys.shape[0]):
        if not key_is_valid(keys[i]):
            out_lonlat_deg[i, :, :] = np.nan
            continue
        v0, v1, v2 = key_vertices(keys[i])
        if dot(v0, cross(v1, v2)) < 0.0:
            v1, v2 = v2, v1
        for j, v in enumerate((v0, v1, v2, v0)):
            out_lonlat_deg[i, j, 1], out_lonlat_deg[i, j, 0] = xyz_to_latlon(v)
