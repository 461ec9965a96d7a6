"""Hex text ↔ bytes for whole columns: signatures and accounts in, addresses and signatures out.

Decoding runs in `stepbatch_kernels.hexcodec` over the Arrow string buffers; a malformed value gets
a message that says what was expected and what arrived, in an Arrow string column.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stepbatch.crypto.eip191 import ADDRESS_BYTES, as_strings, string_buffers
from stepbatch.crypto.secp256k1 import SIGNATURE_BYTES
from stepbatch_kernels.hexcodec import (
    HEX_BAD_DIGIT,
    HEX_BAD_LENGTH,
    HEX_NULL,
    HEX_OK,
    PREFIX_OPTIONAL,
    PREFIX_REQUIRED,
    decode_hex_rows,
)
from stepbatch_kernels.jit import launch

SIGNATURE_EXPECTED = "signature: expected 65 bytes as 130 hex digits (0x optional)"
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


class ParsedSignatures(NamedTuple):
    sig65: np.ndarray  # (n, 65) uint8: r | s | recovery id 0/1; zeros where invalid
    valid: np.ndarray  # (n,) bool
    errors: pa.Array  # string: null where valid, otherwise what was expected and what arrived


def parse_signatures(signatures: pa.Array | pa.ChunkedArray | Sequence[str | None]) -> ParsedSignatures:
    """Decode hex signatures (130 digits, `0x` optional, last byte v in {0, 1, 27, 28})."""
    signatures = as_strings(signatures)
    sig65, status, detail = _decode_hex(signatures, SIGNATURE_BYTES, PREFIX_OPTIONAL)
    v = sig65[:, 64].copy()
    bad_v = (status == HEX_OK) & ~np.isin(v, (0, 1, 27, 28))
    sig65[:, 64] = np.where(v >= 27, v - 27, v)
    sig65[bad_v] = 0
    valid = (status == HEX_OK) & ~bad_v
    errors = pa.nulls(len(signatures), pa.string())
    invalid_rows = np.flatnonzero(~valid)
    if len(invalid_rows):
        reasons = _signature_errors(signatures.take(pa.array(invalid_rows)), status[invalid_rows],
                                    detail[invalid_rows], v[invalid_rows])
        errors = pc.replace_with_mask(errors, pa.array(~valid), reasons)
    return ParsedSignatures(sig65, valid, errors)


def _signature_errors(sent: pa.Array, status: np.ndarray, detail: np.ndarray,
                      v: np.ndarray) -> pa.Array:
    """The INVALID_PAYLOAD message of each malformed signature in `sent`."""
    characters = pc.cast(pc.utf8_length(sent), pa.string())
    position = pa.array(detail.astype(str))
    recovery_byte = pa.array(v.astype(str))
    wrong_length = pc.binary_join_element_wise(
        f"{SIGNATURE_EXPECTED}, got ", characters, " characters", "")
    bad_digit = pc.binary_join_element_wise(
        f"{SIGNATURE_EXPECTED}, got a non-hex character at position ", position, "")
    bad_recovery = pc.binary_join_element_wise(
        "signature: expected a last byte v in {0, 1, 27, 28}, got ", recovery_byte, "")
    message = pc.if_else(pa.array(status == HEX_BAD_LENGTH), wrong_length, bad_recovery)
    message = pc.if_else(pa.array(status == HEX_BAD_DIGIT), bad_digit, message)
    return pc.if_else(pa.array(status == HEX_NULL), f"{SIGNATURE_EXPECTED}, got null", message)


def parse_accounts(accounts: pa.Array | pa.ChunkedArray | Sequence[str | None]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(addr20 (n, 20) uint8, valid bool[n]) for `0x` + 40 hex digits of either case."""
    addr20, status, _ = _decode_hex(as_strings(accounts), ADDRESS_BYTES, PREFIX_REQUIRED)
    return addr20, status == HEX_OK


def signatures_to_hex(sig65: np.ndarray) -> pa.Array:
    """0x-prefixed lower-case hex strings of (n, 65) signatures, byte for byte."""
    return _hex_strings(uint8_rows(sig65, SIGNATURE_BYTES, "sig65"))


def addresses_to_hex(addr20: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """0x-prefixed lower-case hex strings of (n, 20) addresses; null where `valid` is False."""
    return _hex_strings(uint8_rows(addr20, ADDRESS_BYTES, "addr20"), valid)


def uint8_rows(array: np.ndarray, width: int, name: str) -> np.ndarray:
    """`array` as a C-contiguous (n, width) uint8 array; ValueError naming `name` otherwise."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 2 or array.shape[1] != width:
        raise ValueError(f"{name}: expected a (n, {width}) uint8 array, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


def _decode_hex(strings: pa.Array, width: int, prefix_mode: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data, offsets, present = string_buffers(strings)
    out = np.zeros((len(strings), width), dtype=np.uint8)
    status = np.zeros(len(strings), dtype=np.uint8)
    detail = np.zeros(len(strings), dtype=np.int64)
    launch(decode_hex_rows, len(strings), data, offsets, present, prefix_mode, out, status, detail)
    return out, status, detail


def _hex_strings(rows: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    n, width = rows.shape
    text_width = 2 + 2 * width
    text = np.empty((n, text_width), dtype=np.uint8)
    text[:, 0], text[:, 1] = ord("0"), ord("x")
    text[:, 2::2] = _HEX_DIGITS[rows >> 4]
    text[:, 3::2] = _HEX_DIGITS[rows & 0x0F]
    offsets = np.arange(0, (n + 1) * text_width, text_width, dtype=np.int32)
    validity = None if valid is None else pa.array(np.asarray(valid, dtype=bool)).buffers()[1]
    null_count = -1 if valid is not None else 0
    return pa.Array.from_buffers(pa.string(), n, [validity, pa.py_buffer(offsets),
                                                  pa.py_buffer(text)], null_count)
