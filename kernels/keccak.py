"""Keccak-256 (the Ethereum hash: original Keccak padding 0x01, not SHA3's 0x06) over many messages.

Two layouts, both parallel over rows and writing only their own output row:
- variable-length rows in an Arrow-style buffer: `data` (uint8) with `offsets` (int64, n+1), row i
  being `data[offsets[i]:offsets[i+1]]`;
- fixed-width rows of a 2-D uint8 array (e.g. 64-byte public keys).

Rows are grouped into a few contiguous chunks so the 25-lane state is allocated once per chunk,
never per row.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from stepbatch_kernels.jit import kernel, parallel_kernel

RATE_BYTES = 136  # 1600-bit state minus 2 × 256-bit capacity
DIGEST_BYTES = 32
_ROUNDS = 24


def _round_constants() -> np.ndarray:
    """The 24 iota constants, from the degree-8 LFSR of the Keccak reference."""
    constants = np.zeros(_ROUNDS, dtype=np.uint64)
    lfsr = 1
    for rnd in range(_ROUNDS):
        value = 0
        for j in range(7):
            if lfsr & 1:
                value |= 1 << ((1 << j) - 1)
            lfsr = ((lfsr << 1) ^ 0x71) & 0xFF if lfsr & 0x80 else lfsr << 1
        constants[rnd] = value
    return constants


def _rho_pi_tables() -> tuple[np.ndarray, np.ndarray]:
    """For lane i = x + 5y: its rotation (rho) and its destination lane y + 5((2x + 3y) mod 5) (pi)."""
    rotation = np.zeros(25, dtype=np.uint64)
    destination = np.zeros(25, dtype=np.int64)
    x, y = 1, 0
    for t in range(24):
        rotation[x + 5 * y] = ((t + 1) * (t + 2) // 2) % 64
        x, y = y, (2 * x + 3 * y) % 5
    for x in range(5):
        for y in range(5):
            destination[x + 5 * y] = y + 5 * ((2 * x + 3 * y) % 5)
    return rotation, destination


_RC = _round_constants()
_ROTATION, _DESTINATION = _rho_pi_tables()


@kernel
def _rotl64(value, shift):
    # `(64 - shift) & 63` keeps the right shift defined when shift is 0 (the result is then value | value).
    return (value << shift) | (value >> ((np.uint64(64) - shift) & np.uint64(63)))


@kernel
def _keccak_f1600(state, parity, shuffled):
    """The permutation, in place on `state` (25 uint64 lanes); `parity`/`shuffled` are scratch."""
    one = np.uint64(1)
    for rnd in range(_ROUNDS):
        for x in range(5):
            parity[x] = state[x] ^ state[x + 5] ^ state[x + 10] ^ state[x + 15] ^ state[x + 20]
        for x in range(5):
            theta = parity[(x + 4) % 5] ^ _rotl64(parity[(x + 1) % 5], one)
            for y in range(0, 25, 5):
                state[x + y] ^= theta
        for i in range(25):
            shuffled[_DESTINATION[i]] = _rotl64(state[i], _ROTATION[i])
        for y in range(0, 25, 5):
            for x in range(5):
                state[y + x] = shuffled[y + x] ^ (~shuffled[y + (x + 1) % 5] & shuffled[y + (x + 2) % 5])
        state[0] ^= _RC[rnd]


@kernel
def _absorb_block(state, block, start):
    """XOR the 136 bytes `block[start:start+136]` into the first 17 lanes (little-endian lanes)."""
    for lane in range(RATE_BYTES // 8):
        word = np.uint64(0)
        base = start + 8 * lane
        for b in range(8):
            word |= np.uint64(block[base + b]) << np.uint64(8 * b)
        state[lane] ^= word


@kernel
def _keccak256_into(message, state, parity, shuffled, tail, out_row):
    """keccak256(message) into `out_row` (32 uint8); every other argument is reused scratch."""
    state[:] = 0
    length = message.shape[0]
    full_blocks = length // RATE_BYTES
    for block in range(full_blocks):
        _absorb_block(state, message, block * RATE_BYTES)
        _keccak_f1600(state, parity, shuffled)
    remainder = length - full_blocks * RATE_BYTES
    tail[:] = 0
    tail[:remainder] = message[full_blocks * RATE_BYTES:]
    tail[remainder] ^= np.uint8(0x01)
    tail[RATE_BYTES - 1] ^= np.uint8(0x80)
    _absorb_block(state, tail, 0)
    _keccak_f1600(state, parity, shuffled)
    for lane in range(DIGEST_BYTES // 8):
        word = state[lane]
        for b in range(8):
            out_row[8 * lane + b] = np.uint8((word >> np.uint64(8 * b)) & np.uint64(0xFF))


@kernel
def _scratch():
    """Per-thread working buffers of the sponge: state, column parity, permuted lanes, last block."""
    return (np.zeros(25, dtype=np.uint64), np.zeros(5, dtype=np.uint64),
            np.zeros(25, dtype=np.uint64), np.zeros(RATE_BYTES, dtype=np.uint8))


@parallel_kernel
def keccak256_ragged(data, offsets, chunk_bounds, out):
    """Row i of `out` (n, 32) := keccak256(data[offsets[i]:offsets[i+1]]).

    `chunk_bounds` (k+1, int64) splits the rows into k contiguous chunks, one prange iteration each.
    """
    for chunk in prange(chunk_bounds.shape[0] - 1):
        state, parity, shuffled, tail = _scratch()
        for row in range(chunk_bounds[chunk], chunk_bounds[chunk + 1]):
            _keccak256_into(data[offsets[row]:offsets[row + 1]], state, parity, shuffled, tail,
                            out[row])


@parallel_kernel
def keccak256_fixed(rows, chunk_bounds, out):
    """Row i of `out` (n, 32) := keccak256(rows[i]) for a 2-D uint8 array of equal-width rows."""
    for chunk in prange(chunk_bounds.shape[0] - 1):
        state, parity, shuffled, tail = _scratch()
        for row in range(chunk_bounds[chunk], chunk_bounds[chunk + 1]):
            _keccak256_into(rows[row], state, parity, shuffled, tail, out[row])
