"""The one module that touches coincurve (libsecp256k1): key derivation, signing and recovery.

Scalar helpers go through coincurve's public classes and re-raise its `ValueError`s as this
module's types, so a caller can tell a malformed signature from a well-formed one that does not
recover. The row loops call the library's C functions directly on NumPy buffers: per row that is
three cffi calls, each releasing the GIL, and no Python objects, which is what lets one thread per
core keep libsecp256k1 busy. The shared context is only read by these calls, which libsecp256k1
documents as safe from many threads.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Sequence

import numpy as np
from coincurve import PrivateKey, PublicKey
from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT
from coincurve.flags import EC_UNCOMPRESSED

SIGNATURE_BYTES = 65  # r (32) | s (32) | recovery id (1)
PUBLIC_KEY_BYTES = 65  # 0x04 | X (32) | Y (32)
_MAX_RECOVERY_ID = 3  # libsecp256k1 aborts the process on a larger one, so it never reaches the C call


class MalformedSignatureError(ValueError):
    """The signature is not 65 bytes with a recovery id libsecp256k1 accepts."""


class UnrecoverableSignatureError(ValueError):
    """The signature is well-formed but no public key recovers from it (e.g. r or s out of range)."""


class InvalidPrivateKeyError(ValueError):
    """The private key is not 32 bytes in 1..n-1 (n the secp256k1 group order)."""


def public_key_of(private_key: bytes) -> bytes:
    """The 64-byte public key X | Y of a 32-byte private key."""
    return _private_key(private_key).public_key.format(compressed=False)[1:]


def sign_digest(private_key: bytes, digest: bytes) -> bytes:
    """r | s | recovery id (0/1) of the deterministic (RFC 6979), low-s signature of a 32-byte digest."""
    return _private_key(private_key).sign_recoverable(digest, hasher=None)


def _private_key(private_key: bytes) -> PrivateKey:
    # coincurve would left-pad a short secret; a key of the wrong length is refused instead, as the
    # batch signer, which reads keys as 32-byte rows, has to.
    if len(private_key) != 32:
        raise InvalidPrivateKeyError(f"private key: expected 32 bytes, got {len(private_key)}")
    try:
        return PrivateKey(private_key)
    except ValueError as err:
        raise InvalidPrivateKeyError(f"private key: expected a secret in 1..n-1: {err}") from err


def recover_public_key(digest: bytes, signature: bytes) -> bytes:
    """The 64-byte public key X | Y that signed `digest`, from r | s | recovery id (0..3)."""
    if len(signature) != SIGNATURE_BYTES or signature[64] > _MAX_RECOVERY_ID:
        raise MalformedSignatureError(
            f"signature: expected {SIGNATURE_BYTES} bytes ending in a recovery id 0..3, got "
            f"{len(signature)} bytes" + (f" ending in {signature[64]}" if len(signature) == 65 else ""))
    try:
        public_key = PublicKey.from_signature_and_message(signature, digest, hasher=None)
    except ValueError as err:
        raise UnrecoverableSignatureError(f"signature does not recover a public key: {err}") from err
    return public_key.format(compressed=False)[1:]


def recover_public_keys_into(digests: np.ndarray, signatures: np.ndarray, rows: Sequence[int],
                             public_keys: np.ndarray) -> list[int]:
    """For each listed row, write the uncompressed public key recovered from `signatures[row]` over
    `digests[row]` into `public_keys[row]`; return the rows that do not recover.

    Arrays are C-contiguous uint8: digests (n, 32), signatures (n, 65) with recovery id 0..3 in the
    last byte, public_keys (n, 65). Rows of different calls must not overlap.
    """
    ctx = GLOBAL_CONTEXT.ctx
    digest_buf = ffi.from_buffer("unsigned char[]", digests)
    signature_buf = ffi.from_buffer("unsigned char[]", signatures)
    public_key_buf = ffi.from_buffer("unsigned char[]", public_keys, require_writable=True)
    recoverable = ffi.new("secp256k1_ecdsa_recoverable_signature *")
    public_key = ffi.new("secp256k1_pubkey *")
    out_len = ffi.new("size_t *", PUBLIC_KEY_BYTES)
    parse = lib.secp256k1_ecdsa_recoverable_signature_parse_compact
    recover = lib.secp256k1_ecdsa_recover
    serialize = lib.secp256k1_ec_pubkey_serialize
    recovery_ids = signatures[rows, 64].tolist() if len(rows) else []
    failed = []
    for row, recovery_id in zip(rows, recovery_ids):
        if (recovery_id > _MAX_RECOVERY_ID
                or not parse(ctx, recoverable, signature_buf + SIGNATURE_BYTES * row, recovery_id)
                or not recover(ctx, public_key, recoverable, digest_buf + 32 * row)):
            failed.append(row)
            continue
        serialize(ctx, public_key_buf + PUBLIC_KEY_BYTES * row, out_len, public_key, EC_UNCOMPRESSED)
    return failed


def sign_digests_into(private_keys: np.ndarray, digests: np.ndarray, rows: Sequence[int],
                      signatures: np.ndarray) -> list[int]:
    """For each listed row, write r | s | 27 + recovery id (the wallet form) of the RFC 6979 signature
    of `digests[row]` under `private_keys[row]` into `signatures[row]`; return rows whose key is invalid.

    Arrays are C-contiguous uint8: private_keys (n, 32), digests (n, 32), signatures (n, 65).
    """
    ctx = GLOBAL_CONTEXT.ctx
    key_buf = ffi.from_buffer("unsigned char[]", private_keys)
    digest_buf = ffi.from_buffer("unsigned char[]", digests)
    signature_buf = ffi.from_buffer("unsigned char[]", signatures, require_writable=True)
    recoverable = ffi.new("secp256k1_ecdsa_recoverable_signature *")
    recovery_id = ffi.new("int *")
    sign = lib.secp256k1_ecdsa_sign_recoverable
    serialize = lib.secp256k1_ecdsa_recoverable_signature_serialize_compact
    failed = []
    for row in rows:
        if not sign(ctx, recoverable, digest_buf + 32 * row, key_buf + 32 * row, ffi.NULL, ffi.NULL):
            failed.append(row)
            continue
        out = signature_buf + SIGNATURE_BYTES * row
        serialize(ctx, out, recovery_id, recoverable)
        out[64] = 27 + recovery_id[0]
    return failed


def ceiling_seconds(digests: Sequence[bytes], signatures: Sequence[bytes], threads: int) -> float:
    """Seconds for bare coincurve to recover every signature, one contiguous chunk per thread.

    The benchmarks' yardstick: the libsecp256k1 recovery rate these cores allow, with nothing of
    stepbatch around it, over messages that are already hashed."""
    def recover_chunk(bounds: tuple[int, int]) -> None:
        for i in range(*bounds):
            PublicKey.from_signature_and_message(signatures[i], digests[i], hasher=None)

    edges = np.linspace(0, len(digests), threads + 1).astype(int)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(recover_chunk, zip(edges[:-1], edges[1:])))
        return time.perf_counter() - start

