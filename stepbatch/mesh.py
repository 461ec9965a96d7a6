"""The STEP-TRI-v1 mesh (SPEC §3): ids, geometry, point lookup and level enumeration, per id or column.

Triangles travel between stages as packed int64 keys (layout in `kernels.mesh`; -1 marks "no
triangle"). These wrappers check dtype and shape, allocate outputs and convert from/to Arrow; the
geometry itself runs in the Numba kernels of `kernels.mesh` and `kernels.geo`. The id codec
(`encode_id`, `decode_id`, `key_of`, `id_of`, `decode_ids`, `encode_keys`) lives in
`stepbatch.mesh_ids` and is re-exported here, so callers need only this module.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from kernels import geo as kgeo
from kernels import mesh as kmesh
from kernels.jit import launch
from stepbatch.mesh_ids import (ID_PREFIX, DecodedIds, check_level, decode_id, decode_ids, encode_id,
                                encode_keys, id_of, key_array, key_of)

__all__ = [
    "MAX_LEVEL", "FACE_COUNT", "ID_PREFIX", "DecodedIds", "encode_id", "decode_id", "key_of", "id_of",
    "decode_ids", "encode_keys", "keys_valid", "key_levels", "child_keys", "children", "parent",
    "vertices_of_keys", "vertices", "rings_of_keys", "centroids_of_keys", "polygon", "centroid",
    "triangle_at_keys", "triangle_at", "contains_keys", "contains", "haversine_m", "count_level",
    "iter_level_keys",
]

MAX_LEVEL = kmesh.MAX_LEVEL
FACE_COUNT = kmesh.FACE_COUNT


# ----------------------------------------------------------------------------- key arithmetic

def _per_key(parallel_kernel, keys, row_shape: tuple = (), dtype=np.float64) -> np.ndarray:
    """Run a kernel that fills one output row per key."""
    keys = key_array(keys)
    out = np.empty((len(keys), *row_shape), dtype)
    launch(parallel_kernel, len(keys), keys, out)
    return out


def keys_valid(keys) -> np.ndarray:
    """True where a key is the canonical packing of a triangle."""
    return _per_key(kmesh.keys_valid, keys, dtype=np.bool_)


def key_levels(keys) -> np.ndarray:
    """Level (1..21) of each key; 0 for invalid keys."""
    keys = key_array(keys)
    return np.where(keys_valid(keys), (keys >> 40) & 31, 0)


def child_keys(keys) -> np.ndarray:
    """(n, 4) keys of each key's children in child order; -1 for level-21 or invalid keys."""
    return _per_key(kmesh.children_of_keys, keys, (4,), np.int64)


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


# ----------------------------------------------------------------------------------- geometry

def vertices_of_keys(keys) -> np.ndarray:
    """(n, 3, 3) unit-vector vertices (v0, v1, v2) per key, bit-identical to the original
    implementation's; NaN rows for invalid keys."""
    return _per_key(kmesh.vertices_of_keys, keys, (3, 3))


def vertices(triangle_id: str) -> np.ndarray:
    """(3, 3) unit-vector vertices of one triangle."""
    return vertices_of_keys([key_of(triangle_id)])[0]


def rings_of_keys(keys) -> np.ndarray:
    """(n, 4, 2) closed [lon, lat] rings in degrees, counter-clockwise; NaN for invalid keys."""
    return _per_key(kmesh.rings_of_keys, keys, (4, 2))


def centroids_of_keys(keys) -> np.ndarray:
    """(n, 2) [lon, lat] in degrees of normalize(v0 + v1 + v2); NaN for invalid keys."""
    return _per_key(kmesh.centroids_of_keys, keys, (2,))


def polygon(triangle_id: str) -> dict:
    """GeoJSON Polygon of the triangle: closed [lon, lat] ring, counter-clockwise (RFC 7946).

    Its edges are the geodesics between the vertices, which is how a 2dsphere index reads them."""
    ring = rings_of_keys([key_of(triangle_id)])[0]
    return {"type": "Polygon", "coordinates": [ring.tolist()]}


def centroid(triangle_id: str) -> dict:
    """GeoJSON Point of the normalised vertex sum."""
    return {"type": "Point", "coordinates": centroids_of_keys([key_of(triangle_id)])[0].tolist()}


# ------------------------------------------------------------------------------ point lookup

def _row_count(*columns) -> int:
    """Rows after numpy broadcasting of scalars and 1-D columns."""
    shape = np.broadcast_shapes(*(np.shape(c) for c in columns))
    if len(shape) > 1:
        raise ValueError(f"expected scalars or one-dimensional columns, got shape {shape}")
    return shape[0] if shape else 1


def _float_column(values, n: int) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(np.asarray(values, dtype=np.float64), (n,)))


def triangle_at_keys(lat_deg, lon_deg, level) -> np.ndarray:
    """int64 key of the triangle holding each point at `level` (scalar or per row), descending as
    SPEC §3 says (see kernels.mesh.triangle_at_xyz); -1 for an invalid location or level."""
    n = _row_count(lat_deg, lon_deg, level)
    levels = np.asarray(level)
    if levels.dtype.kind not in "iu":
        raise ValueError(f"level must be an integer (or integers), got {levels.dtype}")
    out = np.empty(n, np.int64)
    launch(kmesh.triangle_at_many, n, _float_column(lat_deg, n), _float_column(lon_deg, n),
           np.ascontiguousarray(np.broadcast_to(levels.astype(np.int64), (n,))), out)
    return out


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


def contains_keys(keys, lat_deg, lon_deg) -> np.ndarray:
    """Per row, whether (lat, lon) in degrees is inside triangle `keys[i]` (SPEC §3, exact spherical
    test); False for an invalid key or location.

    Edge normals are computed once per distinct key (rows repeat triangles heavily), then one
    parallel pass tests every row.
    """
    keys = key_array(np.broadcast_to(keys, (_row_count(keys, lat_deg, lon_deg),)))
    n = len(keys)
    encoded = pa.array(keys).dictionary_encode()
    unique_keys = encoded.dictionary.to_numpy()
    u = len(unique_keys)
    normals, s_opposite = np.empty((u, 3, 3), np.float64), np.empty((u, 3), np.float64)
    valid = np.empty(u, np.bool_)
    launch(kmesh.edge_planes_of_keys, u, unique_keys, normals, s_opposite, valid)
    out = np.empty(n, np.bool_)
    launch(kmesh.contains_many, n, encoded.indices.to_numpy().astype(np.int64), normals, s_opposite,
           valid, _float_column(lat_deg, n), _float_column(lon_deg, n), out)
    return out


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


def haversine_m(lat1_deg, lon1_deg, lat2_deg, lon2_deg):
    """Great-circle distance in metres (R = 6371000 m) between points in degrees; scalars give a
    float, array-likes an array (formula in kernels.geo.haversine_m)."""
    if all(np.ndim(v) == 0 for v in (lat1_deg, lon1_deg, lat2_deg, lon2_deg)):
        return float(kgeo.haversine_m(float(lat1_deg), float(lon1_deg), float(lat2_deg), float(lon2_deg)))
    n = _row_count(lat1_deg, lon1_deg, lat2_deg, lon2_deg)
    columns = [_float_column(v, n) for v in (lat1_deg, lon1_deg, lat2_deg, lon2_deg)]
    out = np.empty(n, np.float64)
    launch(kgeo.haversine_many_m, n, *columns, out)
    return out


# ------------------------------------------------------------------------- level enumeration

def _check_bbox(bbox) -> tuple[float, float, float, float]:
    try:
        west, south, east, north = (float(v) for v in bbox)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bbox must be four numbers W,S,E,N in degrees, got {bbox!r}") from err
    if not (-180.0 <= west <= 180.0 and -180.0 <= east <= 180.0 and -90.0 <= south <= north <= 90.0):
        raise ValueError(f"bbox needs W and E in [-180, 180] and -90 <= S <= N <= 90, got {bbox!r}")
    return west, south, east, north


def _level_ranges(level: int, bbox) -> tuple[np.ndarray, np.ndarray]:
    """(start, count) runs of level-order indices (face-major, then path in base 4) to enumerate.

    Without a bbox: the whole level. With one: descend from the 20 faces, dropping triangles whose
    bounding cap misses the box, taking the whole subtree of one whose cap lies inside it, and
    splitting the rest; the runs come back sorted by start.
    """
    if bbox is None:
        return np.zeros(1, np.int64), np.full(1, FACE_COUNT * 4 ** (level - 1), np.int64)
    west, south, east, north = _check_bbox(bbox)
    keys = np.array([kmesh.make_key(face, 1) for face in range(FACE_COUNT)], np.int64)
    starts, counts = [], []
    for depth in range(1, level + 1):
        relation = np.empty(len(keys), np.int8)
        launch(kmesh.cap_bbox_relations, len(keys), keys, west, south, east, north, relation)
        whole = relation == kgeo.BOX_INSIDE if depth < level else relation != kgeo.BOX_MISS
        starts.append(_level_index(keys[whole], depth) * 4 ** (level - depth))
        counts.append(np.full(int(whole.sum()), 4 ** (level - depth), np.int64))
        keys = child_keys(keys[relation == kgeo.BOX_MEETS]).reshape(-1) if depth < level else keys[:0]
    starts, counts = np.concatenate(starts), np.concatenate(counts)
    order = np.argsort(starts, kind="stable")
    return starts[order], counts[order]


def _level_index(keys: np.ndarray, level: int) -> np.ndarray:
    """Position of each key in its level's face-major order: face · 4^(level-1) + path in base 4."""
    path = (keys & ((1 << 40) - 1)) >> (42 - 2 * level)
    return ((keys >> 45) << (2 * (level - 1))) | path


def _keys_at(index: np.ndarray, level: int) -> np.ndarray:
    face = index >> (2 * (level - 1))
    path = index & ((1 << (2 * (level - 1))) - 1)
    return (face << 45) | (level << 40) | (path << (42 - 2 * level))


def count_level(level: int, bbox: Sequence[float] | None = None) -> int:
    """How many triangles iter_level_keys(level, bbox) yields (without enumerating them)."""
    return int(_level_ranges(check_level(level), bbox)[1].sum())


def iter_level_keys(level: int, bbox: Sequence[float] | None = None,
                    chunk: int = 100_000) -> Iterator[np.ndarray]:
    """Every level-`level` key, ascending, in int64 arrays of at most `chunk`.

    With bbox (W, S, E, N in degrees; W > E crosses the antimeridian) only triangles near the box:
    every triangle that meets it is listed, plus possibly some within a cap radius of its edges,
    because the test compares each triangle's bounding cap (centred on its centroid, through its
    farthest vertex) with the box. Memory grows with the number of such edge triangles, not with
    the count enumerated.
    """
    level = check_level(level)
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk!r}")
    starts, counts = _level_ranges(level, bbox)
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    for first in range(0, total, chunk):
        position = np.arange(first, min(first + chunk, total), dtype=np.int64)
        run = np.searchsorted(ends, position, side="right")
        yield _keys_at(starts[run] + position - (ends[run] - counts[run]), level)
