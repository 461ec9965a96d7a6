"""STEP-TRI-v1 id text kernels (SPEC §3): parse ids into packed keys, spell keys as ids.

An id is `STEP-TRI-v1:` + core + `-` + 3 base32 checksum characters, the core being the face letter
A-T, the level 1-21 without leading zeros, `-` and 20 path digits 0-3 (digits beyond the level 0).
The checksum is the first 15 bits of sha256(core); hashing stays with the caller (hashlib), so these
kernels only check and lay out text. Keys are `stepbatch_kernels.mesh`'s packing.
"""

from __future__ import annotations

import numba
import numpy as np

from stepbatch_kernels.jit import kernel, parallel_kernel
from stepbatch_kernels.mesh import (
    FACE_COUNT,
    INVALID_KEY,
    MAX_LEVEL,
    digit_shift,
    key_digit,
    key_face,
    key_is_valid,
    key_level,
    make_key,
)

ID_PREFIX = b"STEP-TRI-v1:"
PATH_DIGITS = 20
CORE_WIDTH = 24  # the hashed part of an id: face letter, 1-2 level digits, '-', 20 path digits
_PREFIX_BYTES = np.frombuffer(ID_PREFIX, dtype=np.uint8).copy()
_BASE32 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", dtype=np.uint8).copy()

# Outcomes of parse_id, in the order its checks run; stepbatch.mesh.ids words each one. CHECKSUM_MISMATCH
# and NOT_STRING are decided outside the kernel (sha256, Python types).
(ID_OK, ID_MISSING, ID_EMPTY, ID_PREFIX_WRONG, ID_FACE_WRONG, ID_LEVEL_WRONG, ID_LENGTH_WRONG,
 ID_DIGIT_WRONG, ID_PADDING_NONZERO, ID_CHECKSUM_MISSING, ID_CHECKSUM_MALFORMED,
 ID_CHECKSUM_MISMATCH, ID_NOT_STRING) = range(13)


@kernel
def base32_value(byte):
    """0..31 for a character of A-Z2-7, else -1."""
    code = np.int64(byte)
    if 65 <= code <= 90:
        return code - 65
    if 50 <= code <= 55:
        return code - 24
    return -1


@kernel
def parse_id(data, start, end):
    """(status, key, checksum) of the UTF-8 id in data[start:end] (bytes are widened to int64
    before arithmetic so that the pure-Python run under NUMBA_DISABLE_JIT cannot wrap around).

    `checksum` is the 15-bit value the last three characters spell; the caller compares it with the
    sha256 of the core, data[start + 12:end - 4], once status is ID_OK.
    """
    bad = np.int64(INVALID_KEY)
    if end == start:
        return ID_EMPTY, bad, -1
    if end - start < _PREFIX_BYTES.shape[0]:
        return ID_PREFIX_WRONG, bad, -1
    for i in range(_PREFIX_BYTES.shape[0]):
        if data[start + i] != _PREFIX_BYTES[i]:
            return ID_PREFIX_WRONG, bad, -1
    pos = start + _PREFIX_BYTES.shape[0]
    if pos >= end or not 65 <= data[pos] < 65 + FACE_COUNT:
        return ID_FACE_WRONG, bad, -1
    face = np.int64(data[pos]) - 65
    pos += 1
    level_start = pos
    level = 0
    while pos < end and 48 <= data[pos] <= 57 and pos - level_start < 3:
        level = level * 10 + (np.int64(data[pos]) - 48)
        pos += 1
    level_digits = pos - level_start
    if (level_digits == 0 or level_digits > 2 or data[level_start] == 48
            or level > MAX_LEVEL or (pos < end and data[pos] != 45)):
        return ID_LEVEL_WRONG, bad, -1
    pos += 1
    path_start = pos
    while pos < end and data[pos] != 45:
        pos += 1
    if pos - path_start != PATH_DIGITS:
        return ID_LENGTH_WRONG, bad, -1
    for i in range(PATH_DIGITS):
        if not 48 <= data[path_start + i] <= 51:
            return ID_DIGIT_WRONG, bad, -1
    key = make_key(face, level)
    for i in range(PATH_DIGITS):
        digit = np.int64(data[path_start + i]) - 48
        if i >= level - 1 and digit != 0:
            return ID_PADDING_NONZERO, bad, -1
        key |= np.int64(digit) << digit_shift(i)
    if end - pos <= 1:
        return ID_CHECKSUM_MISSING, bad, -1
    pos += 1
    if end - pos != 3:
        return ID_CHECKSUM_MALFORMED, bad, -1
    checksum = 0
    for i in range(3):
        value = base32_value(data[pos + i])
        if value < 0:
            return ID_CHECKSUM_MALFORMED, bad, -1
        checksum = (checksum << 5) | value
    return ID_OK, key, checksum


@parallel_kernel
def parse_ids(data, offsets, is_null, out_status, out_keys, out_checksums):
    """parse_id over every string of an Arrow string array's (data, offsets) buffers."""
    for i in numba.prange(out_status.shape[0]):
        if is_null[i]:
            out_status[i], out_keys[i], out_checksums[i] = ID_MISSING, INVALID_KEY, -1
        else:
            out_status[i], out_keys[i], out_checksums[i] = parse_id(data, offsets[i], offsets[i + 1])


@parallel_kernel
def write_cores(keys, out_cores, out_lengths):
    """out_cores[i, :out_lengths[i]] = the hashed core text of keys[i]; length 0 for invalid keys."""
    for i in numba.prange(keys.shape[0]):
        key = keys[i]
        if not key_is_valid(key):
            out_lengths[i] = 0
            continue
        out_cores[i, 0] = 65 + key_face(key)
        level = key_level(key)
        pos = 1
        if level >= 10:
            out_cores[i, pos] = 48 + level // 10
            pos += 1
        out_cores[i, pos] = 48 + level % 10
        out_cores[i, pos + 1] = 45
        pos += 2
        for d in range(PATH_DIGITS):
            out_cores[i, pos + d] = 48 + key_digit(key, d)
        out_lengths[i] = pos + PATH_DIGITS


@parallel_kernel
def write_ids(cores, core_lengths, checksums, offsets, out_data):
    """Lay out prefix + core + '-' + 3 base32 checksum characters at out_data[offsets[i]:]."""
    for i in numba.prange(core_lengths.shape[0]):
        n = core_lengths[i]
        if n == 0:
            continue
        pos = offsets[i]
        for j in range(_PREFIX_BYTES.shape[0]):
            out_data[pos + j] = _PREFIX_BYTES[j]
        pos += _PREFIX_BYTES.shape[0]
        for j in range(n):
            out_data[pos + j] = cores[i, j]
        pos += n
        out_data[pos] = 45
        out_data[pos + 1] = _BASE32[(checksums[i] >> 10) & 31]
        out_data[pos + 2] = _BASE32[(checksums[i] >> 5) & 31]
        out_data[pos + 3] = _BASE32[checksums[i] & 31]
