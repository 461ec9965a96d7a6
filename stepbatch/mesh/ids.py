"""STEP-TRI-v1 triangle ids (SPEC §3): id text to packed keys and back, one id or whole columns.

`STEP-TRI-v1:{face letter}{level}-{20 path digits}-{checksum}` maps one-to-one onto the canonical
int64 keys of `stepbatch_kernels.mesh`. The Numba kernels of `stepbatch_kernels.mesh_ids` check and lay out the text;
the 15-bit sha256 checksum is computed here with hashlib. Decoding is strict and, for columns,
per row: a bad id becomes an invalid row with the message `decode_id` would raise. `stepbatch.mesh`
re-exports the codec, and shares the argument checks `check_level` and `key_array`.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from stepbatch.protocol import MAX_LEVEL
from stepbatch_kernels import mesh as kmesh
from stepbatch_kernels import mesh_ids as kids
from stepbatch_kernels.jit import launch
from stepbatch_kernels.mesh import FACE_COUNT

ID_PREFIX = kids.ID_PREFIX.decode()
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

# What decode_id raises and decode_ids reports for each stepbatch_kernels.mesh_ids parse outcome.
_ID_ERRORS = {
    kids.ID_MISSING: "missing triangleId",
    kids.ID_EMPTY: "triangleId is empty",
    kids.ID_PREFIX_WRONG: f"triangleId has the wrong prefix: expected '{ID_PREFIX}'",
    kids.ID_FACE_WRONG: "triangleId face must be a letter A-T",
    kids.ID_LEVEL_WRONG: "triangleId level must be 1-21 without leading zeros, followed by '-'",
    kids.ID_LENGTH_WRONG: "triangleId path must have 20 digits",
    kids.ID_DIGIT_WRONG: "triangleId path digits must be 0-3",
    kids.ID_PADDING_NONZERO: "triangleId is not canonical: path digits beyond the level must be 0",
    kids.ID_CHECKSUM_MISSING: "triangleId has no checksum",
    kids.ID_CHECKSUM_MALFORMED: "triangleId checksum must be 3 characters from A-Z and 2-7",
    kids.ID_CHECKSUM_MISMATCH: "triangleId checksum does not match",
    kids.ID_NOT_STRING: "triangleId must be a string",
}
_ERROR_TABLE = pa.array([_ID_ERRORS.get(status) for status in range(max(_ID_ERRORS) + 1)], pa.string())


class DecodedIds(NamedTuple):
    keys: np.ndarray      # int64, -1 where invalid
    valid: np.ndarray     # bool
    errors: pa.Array      # string: null where valid, else the message decode_id would raise


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


def check_level(level) -> int:
    """level as an int; ValueError unless it is an integer 1..21."""
    if not _is_int_in(level, 1, MAX_LEVEL):
        raise ValueError(f"level must be an integer 1-{MAX_LEVEL}, got {level!r}")
    return int(level)


def key_array(keys) -> np.ndarray:
    """keys as a contiguous int64 array; ValueError unless one-dimensional."""
    array = np.ascontiguousarray(keys, dtype=np.int64)
    if array.ndim != 1:
        raise ValueError(f"keys must be one-dimensional, got shape {array.shape}")
    return array


def encode_id(face: int, level: int, path) -> str:
    """The STEP-TRI-v1 id of a triangle; `path` is level - 1 digits 0..3 (ints or a digit string)."""
    if not _is_int_in(face, 0, FACE_COUNT - 1):
        raise ValueError(f"face must be an integer 0-{FACE_COUNT - 1}, got {face!r}")
    check_level(level)
    digits = [int(d) if isinstance(d, str) and d.isdigit() else d for d in path]
    if len(digits) != level - 1 or not all(_is_int_in(d, 0, 3) for d in digits):
        raise ValueError(f"a level-{level} triangle has {level - 1} path digits 0-3, got {path!r}")
    core = f"{chr(65 + face)}{level}-" + "".join(map(str, digits)).ljust(kids.PATH_DIGITS, "0")
    checksum = _checksum(core.encode())
    return (f"{ID_PREFIX}{core}-"
            f"{_BASE32[checksum >> 10]}{_BASE32[(checksum >> 5) & 31]}{_BASE32[checksum & 31]}")


def key_of(triangle_id: str) -> int:
    """The packed key of a canonical id; ValueError (saying what is wrong) otherwise."""
    if triangle_id is None:
        raise ValueError(_ID_ERRORS[kids.ID_MISSING])
    if not isinstance(triangle_id, str):
        raise ValueError(_ID_ERRORS[kids.ID_NOT_STRING])
    raw = triangle_id.encode("utf-8", "surrogatepass")
    status, key, checksum = kids.parse_id(np.frombuffer(raw, np.uint8), 0, len(raw))
    if status == kids.ID_OK and _checksum(raw[len(ID_PREFIX):-4]) != checksum:
        status = kids.ID_CHECKSUM_MISMATCH
    if status != kids.ID_OK:
        raise ValueError(_ID_ERRORS[status])
    return int(key)


def _unpack(key: int) -> tuple[int, int, tuple[int, ...]]:
    level = int(kmesh.key_level(key))
    return int(kmesh.key_face(key)), level, tuple(int(kmesh.key_digit(key, i)) for i in range(level - 1))


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
    launch(kids.parse_ids, n, data, offsets, strings.is_null().to_numpy(zero_copy_only=False),
           status, keys, checksums)
    parsed = np.flatnonzero(status == kids.ID_OK)
    if parsed.size:
        starts = offsets[parsed].astype(np.int64) + len(ID_PREFIX)
        expected = _checksums(data, starts, offsets[parsed + 1].astype(np.int64) - 4)
        wrong = parsed[expected != checksums[parsed]]
        status[wrong], keys[wrong] = kids.ID_CHECKSUM_MISMATCH, kmesh.INVALID_KEY
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
    status = np.full(len(present), kids.ID_MISSING, np.int8)
    keys = np.full(len(present), kmesh.INVALID_KEY, np.int64)
    status[present], keys[present] = unique_status[indices], unique_keys[indices]
    if not_string is not None:
        status[not_string], keys[not_string] = kids.ID_NOT_STRING, kmesh.INVALID_KEY
    return DecodedIds(keys=keys, valid=status == kids.ID_OK, errors=_ERROR_TABLE.take(status))


def encode_keys(keys) -> pa.Array:
    """Ids of packed keys as an Arrow string array (null for invalid keys); text built in stepbatch_kernels."""
    keys = key_array(keys)
    n = len(keys)
    cores = np.zeros((n, kids.CORE_WIDTH), np.uint8)
    core_lengths = np.zeros(n, np.int64)
    launch(kids.write_cores, n, keys, cores, core_lengths)
    valid = core_lengths > 0
    rows = np.flatnonzero(valid)
    checksums = np.zeros(n, np.int64)
    if rows.size:
        starts = rows * kids.CORE_WIDTH
        checksums[rows] = _checksums(cores.reshape(-1), starts, starts + core_lengths[rows])
    id_lengths = np.where(valid, core_lengths + len(ID_PREFIX) + 4, 0)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(id_lengths, out=offsets[1:])
    large = offsets[-1] >= 2**31
    if not large:
        offsets = offsets.astype(np.int32)
    data = np.empty(int(offsets[-1]), np.uint8)
    launch(kids.write_ids, n, cores, core_lengths, checksums, offsets, data)
    null_count = int(n - rows.size)
    validity = pa.py_buffer(np.packbits(valid, bitorder="little")) if null_count else None
    return pa.Array.from_buffers(pa.large_string() if large else pa.string(), n,
                                 [validity, pa.py_buffer(offsets), pa.py_buffer(data)], null_count)
