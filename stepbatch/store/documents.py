"""Triangle documents of SPEC §5 (`triangles`), built from packed keys for seeding and subdivision."""

from __future__ import annotations

import datetime as dt

import h3
import numpy as np

from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import keys as mesh_keys
from stepbatch.protocol import MAX_LEVEL, TRIANGLE_STATE_NAMES

STATE_BY_NAME = {name: int(state) for state, name in TRIANGLE_STATE_NAMES.items()}


def _h3_resolution(level: int) -> int:
    """The finest H3 resolution whose average hexagon edge is at most a quarter of the triangle's side
    (≈ 8000 km / 2^(level-1)): the centroid's cell then lies well inside the triangle."""
    side_km = 8000.0 / 2 ** (level - 1)
    for resolution in range(16):
        if h3.average_hexagon_edge_length(resolution, "km") <= side_km / 4:
            return resolution
    return 15


# level → H3 resolution of the `h3` field: levels 1-21 map to
# 0, 1, 1, 2, 3, 4, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11, 11, 12, 13, 14, 14.
H3_RESOLUTION_BY_LEVEL = (None,) + tuple(_h3_resolution(level) for level in range(1, MAX_LEVEL + 1))


def triangle_documents(keys: np.ndarray, now: dt.datetime) -> list[dict]:
    """Fresh triangle documents (active, 0 clicks, no children) for packed keys of valid triangles."""
    keys = np.asarray(keys, np.int64)
    ids = mesh_ids.encode_keys(keys).to_pylist()
    parents = mesh_keys.parent_keys(keys)
    parent_ids = mesh_ids.encode_keys(parents).to_pylist()
    levels = mesh_keys.key_levels(keys).tolist()
    faces = mesh_keys.key_faces(keys).tolist()
    rings = mesh_keys.rings_of_keys(keys).tolist()
    centroids = mesh_keys.centroids_of_keys(keys)
    cells = [h3.latlng_to_cell(lat, lon, H3_RESOLUTION_BY_LEVEL[level])
             for (lon, lat), level in zip(centroids.tolist(), levels)]
    path_start = len(mesh_ids.ID_PREFIX) + 2  # the face letter and the '-' after the level
    return [{
        "_id": triangle_id,
        "face": face,
        "level": level,
        "path": triangle_id[path_start + len(str(level)):][:level - 1],
        "parentId": parent_id,
        "childrenIds": [],
        "state": "active",
        "clicks": 0,
        "centroid": {"type": "Point", "coordinates": centroid},
        "polygon": {"type": "Polygon", "coordinates": [ring]},
        "h3": cell,
        "createdAt": now,
        "updatedAt": now,
    } for triangle_id, face, level, parent_id, ring, centroid, cell in zip(
        ids, faces, levels, parent_ids, rings, centroids.tolist(), cells)]
