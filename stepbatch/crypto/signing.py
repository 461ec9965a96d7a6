"""Signing as a wallet does (EIP-191 personal_sign, v = 27/28): one proof, or whole columns for `gen`."""

from __future__ import annotations

import concurrent.futures
import os
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa

from stepbatch.crypto import secp256k1
from stepbatch.crypto.eip191 import (
    ADDRESS_BYTES,
    address_hashes,
    canonical_message,
    eip191_digest,
    keccak256,
)
from stepbatch.crypto.hexcodec import addresses_to_hex, uint8_rows
from stepbatch.crypto.secp256k1 import InvalidPrivateKeyError
from stepbatch_kernels.keccak import DIGEST_BYTES

PRIVATE_KEY_BYTES = 32


def address_of(private_key: bytes | str) -> str:
    """Lower-case 0x address of a private key (32 bytes, or 64 hex digits with optional 0x)."""
    public_key = secp256k1.public_key_of(_private_key_bytes(private_key))
    return "0x" + keccak256(public_key)[-ADDRESS_BYTES:].hex()


def addresses_of(private_keys: Sequence[bytes] | np.ndarray) -> pa.Array:
    """Lower-case 0x addresses of many private keys, their public keys hashed in one kernel call."""
    public_keys = np.frombuffer(
        b"".join(secp256k1.public_key_of(_private_key_bytes(bytes(key))) for key in private_keys),
        np.uint8).reshape(len(private_keys), 64)
    return addresses_to_hex(address_hashes(public_keys))


def sign_proof(private_key: bytes | str, payload: Mapping) -> str:
    """0x + 130 hex digits: the wallet-style (v = 27/28) EIP-191 signature of the payload's message."""
    digest = eip191_digest(canonical_message(payload))
    signature = bytearray(secp256k1.sign_digest(_private_key_bytes(private_key), digest))
    signature[64] += 27
    return "0x" + signature.hex()


def sign_digests(private_keys: Sequence[bytes] | np.ndarray, digests: np.ndarray,
                 threads: int | None = None) -> np.ndarray:
    """(n, 65) uint8 signatures r | s | v (v = 27/28) of each digest under the row's private key.

    Raises InvalidPrivateKeyError naming the first row whose key is not a valid secret."""
    if not isinstance(private_keys, np.ndarray):
        wrong_length = [i for i, key in enumerate(private_keys) if len(key) != PRIVATE_KEY_BYTES]
        if wrong_length:
            raise InvalidPrivateKeyError(f"private_keys[{wrong_length[0]}]: expected 32 bytes, got "
                                         f"{len(private_keys[wrong_length[0]])}")
        private_keys = np.frombuffer(b"".join(private_keys), dtype=np.uint8).reshape(-1, 32)
    private_keys = uint8_rows(private_keys, PRIVATE_KEY_BYTES, "private_keys")
    digests = uint8_rows(digests, DIGEST_BYTES, "digests")
    if len(private_keys) != len(digests):
        raise ValueError(f"{len(private_keys)} private keys for {len(digests)} digests")
    signatures = np.zeros((len(digests), secp256k1.SIGNATURE_BYTES), dtype=np.uint8)
    threads = threads or os.cpu_count() or 1
    chunks = [c.tolist() for c in np.array_split(np.arange(len(digests)), threads) if len(c)]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        failures = sorted(row for rows in pool.map(
            lambda chunk: secp256k1.sign_digests_into(private_keys, digests, chunk, signatures), chunks)
            for row in rows)
    if failures:
        raise InvalidPrivateKeyError(
            f"private_keys[{failures[0]}]: expected a secret in 1..n-1 ({len(failures)} invalid keys)")
    return signatures


def _private_key_bytes(private_key: bytes | str) -> bytes:
    if isinstance(private_key, str):
        text = private_key[2:] if private_key.startswith("0x") else private_key
        try:
            return bytes.fromhex(text)
        except ValueError as err:
            raise InvalidPrivateKeyError(
                f"private key: expected 64 hex digits (0x optional), got {private_key!r}") from err
    return bytes(private_key)
