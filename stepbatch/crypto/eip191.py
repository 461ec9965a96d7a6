"""The canonical message of a STEP proof and its EIP-191 (personal_sign) hash, per proof or per column.

Column path: the messages are built with Arrow string kernels and hashed together by the keccak
kernel, whose every call goes through `launch`, so a small batch (or one proof) hashes on the
calling thread instead of paying a parallel-region launch.
"""

from __future__ import annotations

from typing import Mapping

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stepbatch.crypto.ecmascript import number_to_string, numbers_to_strings
from stepbatch.protocol import PROOF_VERSION
from stepbatch_kernels.jit import launch
from stepbatch_kernels.keccak import DIGEST_BYTES, keccak256_fixed, keccak256_ragged

EIP191_PREFIX = "\x19Ethereum Signed Message:\n"
ADDRESS_BYTES = 20


def canonical_message(payload: Mapping) -> str:
    """The text the phone signed, from an API-shape payload (SPEC §2)."""
    return (f"{PROOF_VERSION}|account:{payload['account'].lower()}"
            f"|triangle:{payload['triangleId']}"
            f"|lat:{number_to_string(payload['lat'])}|lon:{number_to_string(payload['lon'])}"
            f"|acc:{number_to_string(payload['accuracy'])}"
            f"|ts:{payload['timestamp']}|nonce:{payload['nonce']}")


def canonical_messages(table: pa.Table) -> pa.Array:
    """`canonical_message` of every row of a flat table; a row with a null field gives null."""
    def text(name: str) -> pa.Array:
        return pc.cast(as_strings(table.column(name)), pa.string())

    return pc.binary_join_element_wise(
        f"{PROOF_VERSION}|account:", pc.utf8_lower(text("account")),
        "|triangle:", text("triangle_id"),
        "|lat:", numbers_to_strings(table.column("lat")),
        "|lon:", numbers_to_strings(table.column("lon")),
        "|acc:", numbers_to_strings(table.column("accuracy")),
        "|ts:", text("timestamp"),
        "|nonce:", text("nonce"),
        "")


def keccak256(data: bytes) -> bytes:
    """keccak256 of one byte string (the Ethereum hash, not hashlib's sha3_256)."""
    digest = np.zeros((1, DIGEST_BYTES), dtype=np.uint8)
    launch(keccak256_ragged, 1, np.frombuffer(data, dtype=np.uint8),
           np.array([0, len(data)], dtype=np.int64), np.array([0, 1], dtype=np.int64), digest)
    return digest[0].tobytes()


def eip191_digest(message: str) -> bytes:
    """keccak256("\\x19Ethereum Signed Message:\\n" + byte length + message): personal_sign's hash."""
    encoded = message.encode("utf-8")
    return keccak256(EIP191_PREFIX.encode() + str(len(encoded)).encode() + encoded)


def eip191_digests(messages: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n, 32) uint8 EIP-191 digests of a string column; null rows give zeros."""
    messages = as_strings(messages)
    byte_lengths = pc.cast(pc.binary_length(messages), messages.type)
    prefixed = pc.binary_join_element_wise(pa.scalar(EIP191_PREFIX, messages.type), byte_lengths,
                                           messages, pa.scalar("", messages.type))
    data, offsets, present = string_buffers(prefixed)
    digests = np.zeros((len(messages), DIGEST_BYTES), dtype=np.uint8)
    launch(keccak256_ragged, len(messages), data, offsets, chunk_bounds(len(messages)), digests)
    digests[~present] = 0
    return digests


def address_hashes(public_keys: np.ndarray) -> np.ndarray:
    """(n, 20) uint8 Ethereum addresses of (n, 64) uncompressed public keys without their 0x04 byte."""
    hashes = np.zeros((len(public_keys), DIGEST_BYTES), np.uint8)
    launch(keccak256_fixed, len(public_keys), np.ascontiguousarray(public_keys),
           chunk_bounds(len(public_keys)), hashes)
    return np.ascontiguousarray(hashes[:, DIGEST_BYTES - ADDRESS_BYTES:])


def as_strings(values) -> pa.Array:
    """A string or large_string array (a chunked, all-null or string_view column, or a list, is cast)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    elif not isinstance(values, pa.Array):
        values = pa.array(values, pa.string())
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return values
    return pc.cast(values, pa.string())


def string_buffers(strings: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data uint8, offsets int64 (n+1), present bool[n]) of a string array, without copying the
    character data."""
    n = len(strings)
    present = strings.is_valid().to_numpy(zero_copy_only=False)
    _, offset_buffer, data_buffer = strings.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=np.int64 if pa.types.is_large_string(strings.type)
                            else np.int32)
    offsets = offsets[strings.offset:strings.offset + n + 1].astype(np.int64)
    data = (np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None
            else np.zeros(0, dtype=np.uint8))
    return data, offsets, present


def chunk_bounds(n: int) -> np.ndarray:
    """Contiguous row ranges for a parallel kernel: a few per Numba thread, so one slow chunk does
    not leave the other cores idle."""
    chunks = max(1, min(n, 4 * numba.get_num_threads()))
    return np.linspace(0, n, chunks + 1).astype(np.int64)
