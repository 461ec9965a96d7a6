"""The mesh over whole columns of packed triangle keys: levels, children, geometry, point lookup.

Triangles travel between stages as int64 keys (layout in `stepbatch_kernels.mesh`; -1 marks "no
triangle"). These wrappers check dtype and shape, allocate outputs and launch the kernels of
`stepbatch_kernels.mesh` and `stepbatch_kernels.geo`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from stepbatch.mesh.ids import key_array
from stepbatch_kernels import geo as kgeo
from stepbatch_kernels import mesh as kmesh
from stepbatch_kernels.jit import launch


def _per_key(parallel_kernel, keys, row_shape: tuple = (), dtype=np.float64) -> np.ndarray:
    """Run a kernel that fills one output row per key."""
    keys = key_array(keys)
    out = np.empty((len(keys), *row_shape), dtype)
    launch(parallel_kernel, len(keys), keys, out)
    return out


def keys_valid(keys) -> np.ndarray:
    """True where a key is the canonical packing of a triangle."""
    return _per_key(kmesh.keys_valid, keys, dtype=np.bool_)


def key_faces(keys) -> np.ndarray:
    """Face (0..19) of each key."""
    return _per_key(kmesh.faces_of_keys, keys, dtype=np.int64)


def key_levels(keys) -> np.ndarray:
    """Level (1..21) of each key; 0 for invalid keys."""
    return _per_key(kmesh.levels_of_keys, keys, dtype=np.int64)


def parent_keys(keys) -> np.ndarray:
    """Key of each key's parent; -1 at level 1."""
    return _per_key(kmesh.parents_of_keys, keys, dtype=np.int64)


def child_keys(keys) -> np.ndarray:
    """(n, 4) keys of each key's children in child order; -1 for level-21 or invalid keys."""
    return _per_key(kmesh.children_of_keys, keys, (4,), np.int64)


def vertices_of_keys(keys) -> np.ndarray:
    """(n, 3, 3) unit-vector vertices (v0, v1, v2) per key, bit-identical to the original
    implementation's; NaN rows for invalid keys."""
    return _per_key(kmesh.vertices_of_keys, keys, (3, 3))


def rings_of_keys(keys) -> np.ndarray:
    """(n, 4, 2) closed [lon, lat] rings in degrees, counter-clockwise; NaN for invalid keys."""
    return _per_key(kmesh.rings_of_keys, keys, (4, 2))


def centroids_of_keys(keys) -> np.ndarray:
    """(n, 2) [lon, lat] in degrees of normalize(v0 + v1 + v2); NaN for invalid keys."""
    return _per_key(kmesh.centroids_of_keys, keys, (2,))


def row_count(*columns) -> int:
    """Rows after numpy broadcasting of scalars and 1-D columns."""
    shape = np.broadcast_shapes(*(np.shape(c) for c in columns))
    if len(shape) > 1:
        raise ValueError(f"expected scalars or one-dimensional columns, got shape {shape}")
    return shape[0] if shape else 1


def _float_column(values, n: int) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(np.asarray(values, dtype=np.float64), (n,)))


def triangle_at_keys(lat_deg, lon_deg, level) -> np.ndarray:
    """int64 key of the triangle holding each point at `level` (scalar or per row), descending as
    SPEC §3 says (see stepbatch_kernels.mesh.triangle_at_xyz); -1 for an invalid location or level."""
    n = row_count(lat_deg, lon_deg, level)
    levels = np.asarray(level)
    if levels.dtype.kind not in "iu":
        raise ValueError(f"level must be an integer (or integers), got {levels.dtype}")
    out = np.empty(n, np.int64)
    launch(kmesh.triangle_at_many, n, _float_column(lat_deg, n), _float_column(lon_deg, n),
           np.ascontiguousarray(np.broadcast_to(levels.astype(np.int64), (n,))), out)
    return out


def contains_keys(keys, lat_deg, lon_deg) -> np.ndarray:
    """Per row, whether (lat, lon) in degrees is inside triangle `keys[i]` (SPEC §3, exact spherical
    test); False for an invalid key or location.

    Edge normals are computed once per distinct key (rows repeat triangles heavily), then one
    parallel pass tests every row.
    """
    keys = key_array(np.broadcast_to(keys, (row_count(keys, lat_deg, lon_deg),)))
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


def haversine_m(lat1_deg, lon1_deg, lat2_deg, lon2_deg):
    """Great-circle distance in metres (R = 6371000 m) between points in degrees; scalars give a
    float, array-likes an array (formula in stepbatch_kernels.geo.haversine_m)."""
    if all(np.ndim(v) == 0 for v in (lat1_deg, lon1_deg, lat2_deg, lon2_deg)):
        return float(kgeo.haversine_m(float(lat1_deg), float(lon1_deg), float(lat2_deg), float(lon2_deg)))
    n = row_count(lat1_deg, lon1_deg, lat2_deg, lon2_deg)
    columns = [_float_column(v, n) for v in (lat1_deg, lon1_deg, lat2_deg, lon2_deg)]
    out = np.empty(n, np.float64)
    launch(kgeo.haversine_many_m, n, *columns, out)
    return out
