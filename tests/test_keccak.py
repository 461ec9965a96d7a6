"""The Numba keccak-256 kernel equals pycryptodome's keccak (an independent implementation)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from Crypto.Hash import keccak as reference_keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from stepbatch.crypto import eip191
from stepbatch_kernels.keccak import RATE_BYTES, keccak256_fixed, keccak256_ragged


def reference(data: bytes) -> bytes:
    return reference_keccak.new(digest_bits=256, data=data).digest()


def ragged_digests(messages: list[bytes], chunks: int = 3) -> np.ndarray:
    data = np.frombuffer(b"".join(messages), dtype=np.uint8)
    offsets = np.zeros(len(messages) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(m) for m in messages])
    bounds = np.linspace(0, len(messages), min(chunks, len(messages)) + 1).astype(np.int64)
    out = np.zeros((len(messages), 32), dtype=np.uint8)
    keccak256_ragged(data, offsets, bounds, out)
    return out


BOUNDARY_LENGTHS = sorted({0, 1, 7, 8, 9, 31, 32, 33, 64, 65}
                          | {k * RATE_BYTES + d for k in (1, 2, 3) for d in (-1, 0, 1)})


def test_known_digest_of_the_empty_string():
    assert eip191.keccak256(b"").hex() == (
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470")


def test_ragged_rows_equal_reference_at_block_boundaries():
    rng = np.random.default_rng(7)
    messages = [rng.bytes(length) for length in BOUNDARY_LENGTHS]
    digests = ragged_digests(messages)
    assert [row.tobytes() for row in digests] == [reference(m) for m in messages]


def test_ragged_rows_equal_reference_on_random_lengths():
    rng = np.random.default_rng(11)
    messages = [rng.bytes(int(n)) for n in rng.integers(0, 700, 400)]
    digests = ragged_digests(messages, chunks=7)
    assert [row.tobytes() for row in digests] == [reference(m) for m in messages]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=3 * RATE_BYTES + 5), min_size=1, max_size=12),
       st.integers(1, 5))
def test_ragged_rows_equal_reference_for_any_chunking(messages, chunks):
    digests = ragged_digests(messages, chunks)
    assert [row.tobytes() for row in digests] == [reference(m) for m in messages]


@pytest.mark.parametrize("width", [20, 64, 135, 136, 137])
def test_fixed_width_rows_equal_reference(width):
    rng = np.random.default_rng(width)
    rows = rng.integers(0, 256, size=(50, width), dtype=np.uint8)
    out = np.zeros((50, 32), dtype=np.uint8)
    keccak256_fixed(rows, np.array([0, 17, 50], dtype=np.int64), out)
    assert [row.tobytes() for row in out] == [reference(r.tobytes()) for r in rows]


def test_fixed_width_rows_accept_a_strided_view():
    rng = np.random.default_rng(3)
    public_keys = rng.integers(0, 256, size=(10, 65), dtype=np.uint8)
    out = np.zeros((10, 32), dtype=np.uint8)
    keccak256_fixed(public_keys[:, 1:], np.array([0, 10], dtype=np.int64), out)
    assert [row.tobytes() for row in out] == [reference(k[1:].tobytes()) for k in public_keys]


def test_eip191_digests_hash_a_sliced_arrow_array_by_its_own_offsets():
    messages = pa.array(["skipped", "héllo ✓", "", None, "x" * 300])[1:]
    digests = eip191.eip191_digests(messages)
    expected = [reference(b"\x19Ethereum Signed Message:\n%d%s" % (len(m.encode()), m.encode()))
                if m is not None else bytes(32) for m in messages.to_pylist()]
    assert [row.tobytes() for row in digests] == expected


def test_empty_batch_gives_no_digests():
    assert eip191.eip191_digests(pa.array([], pa.string())).shape == (0, 32)
