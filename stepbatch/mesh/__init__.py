"""The STEP-TRI-v1 mesh (SPEC §3, §6): ids, parents and children, geometry and point lookup, per id.

The public API works on id strings, scalars or array-likes. The engine works on packed int64 keys:
`ids` is the id codec (also over Arrow columns), `keys` the geometry over key columns, `levels` the
enumeration of a level for seeding.
"""

from __future__ import annotations

import numpy as np

from stepbatch.mesh.ids import (
    decode_id,
    decode_ids,
    encode_id,
    encode_keys,
    id_of,
    key_of,
)
from stepbatch.mesh.keys import (
    centroids_of_keys,
    contains_keys,
    rings_of_keys,
    triangle_at_keys,
    vertices_of_keys,
)
from stepbatch.protocol import MAX_LEVEL
from stepbatch_kernels import mesh as kmesh

__all__ = ["encode_id", "decode_id", "triangle_at", "contains", "polygon", "centroid", "children",
           "parent"]


def children(triangle_id: str) -> list[str]:
    """The 4 child ids in child order 0..3; ValueError at level 21, whose triangles never subdivide."""
    key = key_of(triangle_id)
    if kmesh.key_level(key) == MAX_LEVEL:
        raise ValueError(f"a level-{MAX_LEVEL} triangle has no children (it becomes exhausted)")
    return [id_of(int(kmesh.child_key(key, c))) for c in range(4)]


def parent(triangle_id: str) -> str | None:
    """The parent id; None for a level-1 triangle (a face of the icosahedron)."""
    parent_key = int(kmesh.parent_key(key_of(triangle_id)))
    return None if parent_key == kmesh.INVALID_KEY else id_of(parent_key)


def vertices(triangle_id: str) -> np.ndarray:
    """(3, 3) unit-vector vertices of one triangle."""
    return vertices_of_keys([key_of(triangle_id)])[0]


def polygon(triangle_id: str) -> dict:
    """GeoJSON Polygon of the triangle: closed [lon, lat] ring, counter-clockwise (RFC 7946).

    Its edges are the geodesics between the vertices, which is how a 2dsphere index reads them."""
    ring = rings_of_keys([key_of(triangle_id)])[0]
    return {"type": "Polygon", "coordinates": [ring.tolist()]}


def centroid(triangle_id: str) -> dict:
    """GeoJSON Point of the normalised vertex sum."""
    return {"type": "Point", "coordinates": centroids_of_keys([key_of(triangle_id)])[0].tolist()}


def triangle_at(lat, lon, level):
    """The id of the level-`level` triangle holding (lat, lon) in degrees.

    Scalars give a str (ValueError for a location outside [-90, 90] × [-180, 180] or a level outside
    1..21); array-likes give a numpy object array of str, None where the row is invalid."""
    keys = triangle_at_keys(lat, lon, level)
    if np.ndim(lat) == 0 and np.ndim(lon) == 0 and np.ndim(level) == 0:
        if keys[0] == kmesh.INVALID_KEY:
            raise ValueError(f"no triangle at lat={lat!r}, lon={lon!r}, level={level!r}: need lat in "
                             f"[-90, 90], lon in [-180, 180], level in 1..{MAX_LEVEL}")
        return id_of(int(keys[0]))
    return encode_keys(keys).to_numpy(zero_copy_only=False)


def contains(triangle_id, lat, lon):
    """Whether (lat, lon) in degrees is inside the triangle (SPEC §3).

    All scalars give a bool (ValueError for a non-canonical id; False for an invalid location);
    otherwise a bool array, False where the id or location is invalid."""
    if isinstance(triangle_id, str):
        keys = np.array([key_of(triangle_id)])
        if np.ndim(lat) == 0 and np.ndim(lon) == 0:
            return bool(contains_keys(keys, lat, lon)[0])
    else:
        keys = decode_ids(triangle_id).keys
    return contains_keys(keys, lat, lon)
