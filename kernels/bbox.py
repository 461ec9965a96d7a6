"""Triangles against a longitude/latitude box: each triangle's bounding cap, its relation to the box,
and whether a level's enumeration within the box (`stepbatch.mesh.levels`) lists a triangle — the
coverage rule of declared regions (`stepbatch.mesh.regions`)."""

from __future__ import annotations

import math

import numba
import numpy as np

from stepbatch_kernels.geo import BOX_INSIDE, BOX_MISS, CAP_MARGIN_RAD, cap_box_relation, dot, xyz_to_latlon
from stepbatch_kernels.jit import kernel, parallel_kernel
from stepbatch_kernels.mesh import centroid_xyz, key_level, key_vertices, parent_key


@kernel
def bounding_cap(key):
    """(lat_deg, lon_deg, radius_rad) of a cap holding the whole triangle: centred on its normalised
    vertex sum, radius the farthest vertex plus a margin against rounding."""
    v0, v1, v2 = key_vertices(key)
    c = centroid_xyz(v0, v1, v2)
    chord = 0.0
    for v in (v0, v1, v2):
        d = (v[0] - c[0], v[1] - c[1], v[2] - c[2])
        chord = max(chord, math.sqrt(dot(d, d)))
    lat_deg, lon_deg = xyz_to_latlon(c)
    return lat_deg, lon_deg, 2.0 * math.asin(chord / 2.0) + CAP_MARGIN_RAD


@parallel_kernel
def cap_bbox_relations(keys, west_deg, south_deg, east_deg, north_deg, out_relation):
    for i in numba.prange(keys.shape[0]):
        lat_deg, lon_deg, radius_rad = bounding_cap(keys[i])
        out_relation[i] = cap_box_relation(lat_deg, lon_deg, radius_rad,
                                           west_deg, south_deg, east_deg, north_deg)


@parallel_kernel
def bbox_covers_keys(keys, west_deg, south_deg, east_deg, north_deg, out_covered):
    """Whether enumerating each key's level within the box (`stepbatch.mesh.levels`) lists the key:
    walking down from its face, an ancestor whose cap misses the box excludes it, one whose cap lies
    inside the box includes it, and at the key's own level any cap that meets the box includes it."""
    for i in numba.prange(keys.shape[0]):
        key = keys[i]
        level = key_level(key)
        ancestors = np.empty(level, np.int64)
        ancestors[level - 1] = key
        for depth in range(level - 1, 0, -1):
            ancestors[depth - 1] = parent_key(ancestors[depth])
        covered = False
        for depth in range(1, level + 1):
            lat_deg, lon_deg, radius_rad = bounding_cap(ancestors[depth - 1])
            relation = cap_box_relation(lat_deg, lon_deg, radius_rad, west_deg, south_deg, east_deg, north_deg)
            if relation == BOX_MISS:
                break
            if relation == BOX_INSIDE or depth == level:
                covered = True
                break
        out_covered[i] = covered
