"""The triangles generated traffic reaches (`stepbatch gen`): which base-level triangles to seed, the
bbox around them, and unseeded ones kept apart for the TRIANGLE_NOT_FOUND attack.
"""

from __future__ import annotations

import math

import numpy as np

from stepbatch.mesh import keys as mesh_keys
from stepbatch.mesh import levels as mesh_levels
from stepbatch.protocol import EARTH_RADIUS_M
from stepbatch.tools.gen.walkers import destination
from stepbatch_kernels.gen import ancestor_keys
from stepbatch_kernels.jit import launch

RESERVED_COUNT = 4
MAX_SEEDED = 1_000_000  # a seed list beyond this is a level far too fine for the walking radius


def seeding(center: tuple[float, float], radius_m: float, level: int, point_key: np.ndarray
            ) -> tuple[np.ndarray, tuple[float, float, float, float], np.ndarray]:
    """(base keys to seed, bbox W,S,E,N around them, keys reserved for the unseeded attack), from
    the level-21 keys of every generated point.

    Seeded: every base triangle meeting the walking disc's bbox, and every one a row's point falls
    in, with its siblings (the neighbour attack claims those). The bbox covers them all, so seeding
    by bbox instead of by list also works; the reserved triangles lie beyond it.
    """
    lat0, lon0 = center
    half_lat = math.degrees(radius_m / EARTH_RADIUS_M)
    half_lon = half_lat / math.cos(math.radians(lat0))
    disc_bbox = (_wrap_lon(lon0 - half_lon), lat0 - half_lat, _wrap_lon(lon0 + half_lon), lat0 + half_lat)
    if mesh_levels.count_level(level, disc_bbox) > MAX_SEEDED:
        raise ValueError(f"a {radius_m:g} m radius holds over {MAX_SEEDED:,} level-{level} "
                         f"triangles; choose a coarser level or a smaller radius")
    parents = np.empty(len(point_key), np.int64)
    launch(ancestor_keys, len(point_key), point_key, level - 1, parents)
    seeded = np.union1d(mesh_keys.child_keys(np.unique(parents)).ravel(), _level_keys(level, disc_bbox))
    corners = mesh_keys.rings_of_keys(seeded)[:, :3].reshape(-1, 2)  # [lon, lat] of every vertex
    east_deg = (corners[:, 0] - lon0 + 180.0) % 360.0 - 180.0
    bbox = (_wrap_lon(lon0 + east_deg.min()), float(corners[:, 1].min()),
            _wrap_lon(lon0 + east_deg.max()), float(corners[:, 1].max()))
    taken = np.union1d(seeded, _level_keys(level, bbox))
    reach_m = float(mesh_keys.haversine_m(lat0, lon0, corners[:, 1], corners[:, 0]).max())
    return seeded, bbox, _reserved_keys(center, reach_m, level, taken)


def _level_keys(level: int, bbox: tuple[float, float, float, float]) -> np.ndarray:
    return np.concatenate([np.zeros(0, np.int64), *mesh_levels.iter_level_keys(level, bbox)])


def _wrap_lon(lon_deg: float) -> float:
    return float((lon_deg + 180.0) % 360.0 - 180.0)


def _reserved_keys(center: tuple[float, float], reach_m: float, level: int,
                   taken: np.ndarray) -> np.ndarray:
    """Up to RESERVED_COUNT base-level keys on a ring beyond `reach_m` that are not in `taken`."""
    side_m = 8_000_000.0 / 2 ** (level - 1)
    bearings = np.arange(16) * (2 * np.pi / 16)
    for distance_m in (math.sqrt(2.0) * reach_m + 2 * side_m, 2 * reach_m + 6 * side_m,
                       math.pi * EARTH_RADIUS_M):
        lat, lon = destination(center, bearings, distance_m)
        keys = mesh_keys.triangle_at_keys(lat, lon, level)
        keys = keys[~np.isin(keys, taken)]
        _, first = np.unique(keys, return_index=True)
        if len(first):
            return keys[np.sort(first)][:RESERVED_COUNT]
    return np.zeros(0, np.int64)
