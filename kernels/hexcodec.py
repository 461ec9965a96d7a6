"""Hex decoding of fixed-width hex strings held in an Arrow-style buffer (data + int64 offsets).

Each row is checked and decoded on its own; a bad row sets its status code, never raises. The
status tells the wrapper what to say about a bad row. Every byte before the first non-hex byte is
ASCII, so the byte position in `detail` is also the character position.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from stepbatch_kernels.jit import parallel_kernel

HEX_OK = 0
HEX_NULL = 1
HEX_BAD_LENGTH = 2
HEX_BAD_DIGIT = 3  # detail: byte position in the row (0x included) of the first non-hex byte
HEX_MISSING_PREFIX = 4

PREFIX_FORBIDDEN = 0
PREFIX_OPTIONAL = 1
PREFIX_REQUIRED = 2

_ZERO, _LOWER_X = 48, 120


def _nibble_table() -> np.ndarray:
    """Value of each byte as a hex digit (either case), -1 for every other byte."""
    table = np.full(256, -1, dtype=np.int16)  # wide enough for high * 16 + low
    for value, digit in enumerate(b"0123456789abcdef"):
        table[digit] = value
    for value, digit in enumerate(b"ABCDEF"):
        table[digit] = 10 + value
    return table


_NIBBLE = _nibble_table()


@parallel_kernel
def decode_hex_rows(data, offsets, present, prefix_mode, out, status, detail):
    """Decode row i (`data[offsets[i]:offsets[i+1]]`) into `out[i]` (width w = out.shape[1] bytes).

    A valid row is exactly 2w hex digits (either case), preceded by `0x` as `prefix_mode` demands.
    `status[i]` gets HEX_OK or the first failure; `out[i]` is zeroed for a failing row.
    """
    width = out.shape[1]
    for row in prange(out.shape[0]):
        status[row] = HEX_OK
        detail[row] = 0
        if not present[row]:
            status[row] = HEX_NULL
            out[row, :] = 0
            continue
        start = offsets[row]
        length = offsets[row + 1] - start
        has_prefix = length >= 2 and data[start] == _ZERO and data[start + 1] == _LOWER_X
        if has_prefix and prefix_mode != PREFIX_FORBIDDEN:
            start += 2
            length -= 2
        elif prefix_mode == PREFIX_REQUIRED:
            status[row] = HEX_MISSING_PREFIX
            out[row, :] = 0
            continue
        if length != 2 * width:
            status[row] = HEX_BAD_LENGTH
            out[row, :] = 0
            continue
        for b in range(width):
            high = _NIBBLE[data[start + 2 * b]]
            low = _NIBBLE[data[start + 2 * b + 1]]
            if (high | low) < 0:
                status[row] = HEX_BAD_DIGIT
                detail[row] = start - offsets[row] + (2 * b if high < 0 else 2 * b + 1)
                break
            out[row, b] = np.uint8(high * 16 + low)
        if status[row] != HEX_OK:
            out[row, :] = 0
