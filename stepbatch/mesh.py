"""The STEP-TRI-v1 mesh (SPEC §3): triangle ids, geometry and point lookup, one id or whole columns.

Triangles travel between stages as packed int64 keys (layout in `kernels.mesh`; -1 marks "no
triangle"). These wrappers check dtype and shape, allocate outputs and convert from/to Arrow; the
geometry itself runs in the Numba kernels of `kernels.mesh` and `kernels.geo`.
"""

from __future__ import annotations

import hashlib
from typing import Iterator, NamedTuple, Sequence

import numba
import numpy as np
import pyarrow as pa

from kernels import geo as kgeo
from kernels import mesh as kmesh

MAX_LEVEL = kmesh.MAX_LEVEL
FACE_COUNT = kmesh.FACE_COUNT
ID_PREFIX = kmesh.ID_PREFIX.decode()
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

# What decode_id raises and decode_ids reports for each kernels.mesh parse outcome.
_ID_ERRORS = {
    kmesh.ID_MISSING: "missing triangleId",
    kmesh.ID_EMPTY: "triangleId is empty",
    kmesh.ID_PREFIX_WRONG: f"triangleId has the wrong prefix: expected '{ID_PREFIX}'",
    kmesh.ID_FACE_WRONG: "triangleId face must be a letter A-T",
    kmesh.ID_LEVEL_WRONG: "triangleId level must be 1-21 without leading zeros, followed by '-'",
    kmesh.ID_LENGTH_WRONG: "triangleId path must have 20 digits",
    kmesh.ID_DIGIT_WRONG: "triangleId path digits must be 0-3",
    kmesh.ID_PADDING_NONZERO: "triangleId is not canonical: path digits beyond the level must be 0",
    kmesh.ID_CHECKSUM_MISSING: "triangleId has no checksum",
    kmesh.ID_CHECKSUM_MALFORMED: "triangleId checksum must be 3 characters from A-Z and 2-7",
    kmesh.ID_CHECKSUM_MISMATCH: "triangleId checksum does not match",
    kmesh.ID_NOT_STRING: "triangleId must be a string",
}
_ERROR_TABLE = pa.array([_ID_ERRORS.get(status) for status in range(max(_ID_ERRORS) + 1)], pa.string())


# Below this many rows a parallel kernel runs on one thread: waking the thread pool costs more than
# the work, and on a busy machine it waits a whole scheduler slice (milliseconds) for a free core.
_PARALLEL_MIN_ROWS = 4096


def _launch(parallel_kernel, rows: int, *args) -> None:
    if rows >= _PARALLEL_MIN_ROWS:
        parallel_kernel(*args)
        return
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        parallel_kernel(*args)
    finally:
        numba.set_num_threads(threads)


class DecodedIds(NamedTuple):
    keys: np.ndarray      # int64, -1 where invalid
    valid: np.ndarray     # bool
    errors: pa.Array      # string: null where valid, else the message decode_id would raise


# ----------------------------------------------------------------------------------- ids

def _checksum(core: bytes) -> int:
    digest = hashlib.sha256(core).digest()
    return (digest[0] << 7) | (digest[1] >> 1)


def _checksums(buffer, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """SPEC §3's 15-bit checksum of each buffer[start:end] (hashlib; one call per id)."""
    view = memoryview(buffer)
    sha256 = hashlib.sha256
    digests = b"".join([sha256(view[s:e]).digest()[:2] for s, e in zip(starts.tolist(), ends.tolist())])
    pairs = np.frombuffer(digests, np.uint8).reshape(-1, 2).astype(np.int64)
    return (pairs[:, 0] << 7) | (pairs[:, 1] >> 1)


def _is_int_in(value, low: int, high: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and low <= value <= high


def _check_level(level) -> int:
    if not _is_int_in(level, 1, MAX_LEVEL):
        raise ValueError(f"level must be an integer 1-{MAX_LEVEL}, got {level!r}")
    return int(level)


def encode_id(face: int, level: int, path) -> str:
    """The STEP-TRI-v1 id of a triangle; `path` is level - 1 digits 0..3 (ints or a digit string)."""
    if not _is_int_in(face, 0, FACE_COUNT - 1):
        raise ValueError(f"face must be an integer 0-{FACE_COUNT - 1}, got {face!r}")
    _check_level(level)
    digits = [int(d) if isinstance(d, str) and d.isdigit() else d for d in path]
    if len(digits) != level - 1 or not all(_is_int_in(d, 0, 3) for d in digits):
        raise ValueError(f"a level-{level} triangle has {level - 1} path digits 0-3, got {path!r}")
    core = f"{chr(65 + face)}{level}-" + "".join(map(str, digits)).ljust(kmesh.PATH_DIGITS, "0")
    checksum = _checksum(core.encode())
    return (f"{ID_PREFIX}{core}-"
            f"{_BASE32[checksum >> 10]}{_BASE32[(checksum >> 5) & 31]}{_BASE32[checksum & 31]}")


def key_of(triangle_id: str) -> int:
    """The packed key of a canonical id; ValueError (saying what is wrong) otherwise."""
    if triangle_id is None:
        raise ValueError(_ID_ERRORS[kmesh.ID_MISSING])
    if not isinstance(triangle_id, str):
        raise ValueError(_ID_ERRORS[kmesh.ID_NOT_STRING])
    raw = triangle_id.encode("utf-8", "surrogatepass")
    status, key, checksum = kmesh.parse_id(np.frombuffer(raw, np.uint8), 0, len(raw))
    if status == kmesh.ID_OK and _checksum(raw[len(ID_PREFIX):-4]) != checksum:
        status = kmesh.ID_CHECKSUM_MISMATCH
    if status != kmesh.ID_OK:
        raise ValueError(_ID_ERRORS[status])
    return int(key)


def _unpack(key: int) -> tuple[int, int, tuple[int, ...]]:
    level = (key >> 40) & 31
    return (key >> 45) & 31, level, tuple((key >> (38 - 2 * i)) & 3 for i in range(level - 1))


def decode_id(triangle_id: str) -> tuple[int, int, tuple[int, ...]]:
    """(face, level, path) of a canonical id; ValueError saying what is wrong otherwise."""
    return _unpack(key_of(triangle_id))


def id_of(key: int) -> str:
    """The id of a packed key; ValueError for anything but the canonical packing of a triangle."""
    if not _is_int_in(key, 0, 2**63 - 1) or not kmesh.key_is_valid(key):
        raise ValueError(f"not a packed STEP-TRI-v1 key: {key!r}")
    return encode_id(*_unpack(int(key)))


def _string_column(ids) -> tuple[pa.Array, np.ndarray | None]:
    """ids as one Arrow string-like array, and a mask of entries that were not strings at all."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks else pa.array([], ids.type)
    if isinstance(ids, pa.Array):
        kind = ids.type.value_type if pa.types.is_dictionary(ids.type) else ids.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return ids, None
        if pa.types.is_null(kind) or pa.types.is_string_view(kind):
            return ids.cast(pa.string()), None
        return pa.nulls(len(ids), pa.string()), ids.is_valid().to_numpy(zero_copy_only=False)
    try:
        return pa.array(ids, pa.string()), None
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        values = list(ids)
        not_string = np.array([v is not None and not isinstance(v, str) for v in values], bool)
        return pa.array([None if bad else v for v, bad in zip(values, not_string)], pa.string()), not_string


def _parse_strings(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(status, key) per string of a plain string array: kernel checks, then hashlib checksums."""
    n = len(strings)
    offset_dtype = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    _, offsets_buffer, data_buffer = strings.buffers()
    offsets = np.frombuffer(offsets_buffer, offset_dtype)[strings.offset:strings.offset + n + 1]
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    status, keys = np.empty(n, np.int8), np.empty(n, np.int64)
    checksums = np.empty(n, np.int64)
    _launch(kmesh.parse_ids, n, data, offsets, strings.is_null().to_numpy(zero_copy_only=False),
            status, keys, checksums)
    parsed = np.flatnonzero(status == kmesh.ID_OK)
    if parsed.size:
        starts = offsets[parsed].astype(np.int64) + len(ID_PREFIX)
        expected = _checksums(data, starts, offsets[parsed + 1].astype(np.int64) - 4)
        wrong = parsed[expected != checksums[parsed]]
        status[wrong], keys[wrong] = kmesh.ID_CHECKSUM_MISMATCH, kmesh.INVALID_KEY
    return status, keys


def decode_ids(ids) -> DecodedIds:
    """decode_id over a column (Arrow array, chunked array or sequence), never raising per row.

    Work is per distinct id: batches repeat triangles heavily, so the column is dictionary-encoded
    and each distinct string is checked (kernel) and hashed (sha256) once.
    """
    strings, not_string = _string_column(ids)
    encoded = strings if pa.types.is_dictionary(strings.type) \
        else strings.dictionary_encode(null_encoding="encode")
    unique_status, unique_keys = _parse_strings(encoded.dictionary)
    # Only a dictionary-typed input can have null indices; those rows are missing ids.
    present = encoded.indices.is_valid().to_numpy(zero_copy_only=False)
    indices = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)[present]
    status = np.full(len(present), kmesh.ID_MISSING, np.int8)
    keys = np.full(len(present), kmesh.INVALID_KEY, np.int64)
    status[present], keys[present] = unique_status[indices], unique_keys[indices]
    if not_string is not None:
        status[not_string], keys[not_string] = kmesh.ID_NOT_STRING, kmesh.INVALID_KEY
    return DecodedIds(keys=keys, valid=status == kmesh.ID_OK, errors=_ERROR_TABLE.take(status))


def _key_array(keys) -> np.ndarray:
    array = np.ascontiguousarray(keys, dtype=np.int64)
    if array.ndim != 1:
        raise ValueError(f"keys must be one-dimensional, got shape {array.shape}")
    return array


def encode_keys(keys) -> pa.Array:
    """Ids of packed keys as an Arrow string array (null for invalid keys); text built in kernels."""
    keys = _key_array(keys)
    n = len(keys)
    cores = np.zeros((n, kmesh.CORE_WIDTH), np.uint8)
    core_lengths = np.zeros(n, np.int64)
    _launch(kmesh.write_cores, n, keys, cores, core_lengths)
    valid = core_lengths > 0
    rows = np.flatnonzero(valid)
    checksums = np.zeros(n, np.int64)
    if rows.size:
        starts = rows * kmesh.CORE_WIDTH
        checksums[rows] = _checksums(cores.reshape(-1), starts, starts + core_lengths[rows])
    id_lengths = np.where(valid, core_lengths + len(ID_PREFIX) + 4, 0)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(id_lengths, out=offsets[1:])
    large = offsets[-1] >= 2**31
    if not large:
        offsets = offsets.astype(np.int32)
    data = np.empty(int(offsets[-1]), np.uint8)
    _launch(kmesh.write_ids, n, cores, core_lengths, checksums, offsets, data)
    null_count = int(n - rows.size)
    validity = pa.py_buffer(np.packbits(valid, bitorder="little")) if null_count else None
    return pa.Array.from_buffers(pa.large_string() if large else pa.string(), n,
                                 [validity, pa.py_buffer(offsets), pa.py_buffer(data)], null_count)


# ----------------------------------------------------------------------------- key arithmetic


def _per_key(parallel_kernel, keys, row_shape: tuple = (), dtype=np.float64) -> np.ndarray:
    """Run a kernel that fills one output row per key."""
    keys = _key_array(keys)
    out = np.empty((len(keys), *row_shape), dtype)
    _launch(parallel_kernel, len(keys), keys, out)
    return out


def keys_valid(keys) -> np.ndarray:
    """True where a key is the canonical packing of a triangle."""
    return _per_key(kmesh.keys_valid, keys, dtype=np.bool_)


def key_levels(keys) -> np.ndarray:
    """Level (1..21) of each key; 0 for invalid keys."""
    keys = _key_array(keys)
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
    _launch(kmesh.triangle_at_many, n, _float_column(lat_deg, n), _float_column(lon_deg, n),
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
    keys = _key_array(np.broadcast_to(keys, (_row_count(keys, lat_deg, lon_deg),)))
    n = len(keys)
    encoded = pa.array(keys).dictionary_encode()
    unique_keys = encoded.dictionary.to_numpy()
    u = len(unique_keys)
    normals, s_opposite = np.empty((u, 3, 3), np.float64), np.empty((u, 3), np.float64)
    valid = np.empty(u, np.bool_)
    _launch(kmesh.edge_planes_of_keys, u, unique_keys, normals, s_opposite, valid)
    out = np.empty(n, np.bool_)
    _launch(kmesh.contains_many, n, encoded.indices.to_numpy().astype(np.int64), normals, s_opposite,
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
    _launch(kgeo.haversine_many_m, n, *columns, out)
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
        _launch(kmesh.cap_bbox_relations, len(keys), keys, west, south, east, north, relation)
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
    return int(_level_ranges(_check_level(level), bbox)[1].sum())


def iter_level_keys(level: int, bbox: Sequence[float] | None = None,
                    chunk: int = 100_000) -> Iterator[np.ndarray]:
    """Every level-`level` key, ascending, in int64 arrays of at most `chunk`.

    With bbox (W, S, E, N in degrees; W > E crosses the antimeridian) only triangles near the box:
    every triangle that meets it is listed, plus possibly some within a cap radius of its edges,
    because the test compares each triangle's bounding cap (centred on its centroid, through its
    farthest vertex) with the box. Memory grows with the number of such edge triangles, not with
    the count enumerated.
    """
    level = _check_level(level)
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk!r}")
    starts, counts = _level_ranges(level, bbox)
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    for first in range(0, total, chunk):
        position = np.arange(first, min(first + chunk, total), dtype=np.int64)
        run = np.searchsorted(ends, position, side="right")
        yield _keys_at(starts[run] + position - (ends[run] - counts[run]), level)
