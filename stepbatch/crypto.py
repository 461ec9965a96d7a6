"""Canonical message, EIP-191 hashing, signing and signature recovery of STEP proofs (SPEC §2, §6).

Column path, per batch: the messages are built with Arrow string kernels, hashed together by the
keccak kernel, then only the libsecp256k1 recovery runs in worker threads (one contiguous chunk of
rows each, writing into one preallocated buffer), the recovered public keys are hashed together and
compared with the accounts as arrays. Scalar functions are the same steps for one proof. Every
kernel call goes through `kernels.jit.launch`, so a small batch (or one proof) runs its hashing and
hex decoding on the calling thread instead of paying a parallel-region launch.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Mapping, NamedTuple, Sequence

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kernels.hexcodec import (HEX_BAD_DIGIT, HEX_BAD_LENGTH, HEX_NULL, HEX_OK, PREFIX_OPTIONAL,
                              PREFIX_REQUIRED, decode_hex_rows)
from kernels.jit import launch
from kernels.keccak import DIGEST_BYTES, keccak256_fixed, keccak256_ragged
from stepbatch import secp256k1
from stepbatch.ecmascript import number_to_string, numbers_to_strings
from stepbatch.secp256k1 import (InvalidPrivateKeyError, MalformedSignatureError,
                                 UnrecoverableSignatureError)

__all__ = [
    "canonical_message", "canonical_messages", "eip191_digest", "eip191_digests", "keccak256",
    "ParsedSignatures", "parse_signatures", "parse_accounts", "SignatureRecoverer",
    "recover_addresses", "recover_address", "check_signers", "SignerCheck", "signatures_match", "sign_proof", "sign_digests",
    "signatures_to_hex", "addresses_to_hex", "address_of", "addresses_of", "MalformedSignatureError",
    "UnrecoverableSignatureError", "InvalidPrivateKeyError",
]

MESSAGE_VERSION = "STEP-PROOF-v1"
EIP191_PREFIX = "\x19Ethereum Signed Message:\n"
ADDRESS_BYTES = 20
_SIGNATURE_EXPECTED = "signature: expected 65 bytes as 130 hex digits (0x optional)"
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


# --- canonical message and hashing -----------------------------------------------------------

def canonical_message(payload: Mapping) -> str:
    """The text the phone signed, from an API-shape payload (SPEC §2)."""
    return (f"{MESSAGE_VERSION}|account:{payload['account'].lower()}"
            f"|triangle:{payload['triangleId']}"
            f"|lat:{number_to_string(payload['lat'])}|lon:{number_to_string(payload['lon'])}"
            f"|acc:{number_to_string(payload['accuracy'])}"
            f"|ts:{payload['timestamp']}|nonce:{payload['nonce']}")


def canonical_messages(table: pa.Table) -> pa.Array:
    """`canonical_message` of every row of a flat table; a row with a null field gives null."""
    def text(name: str) -> pa.Array:
        return pc.cast(_as_strings(table.column(name)), pa.string())

    return pc.binary_join_element_wise(
        f"{MESSAGE_VERSION}|account:", pc.utf8_lower(text("account")),
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
    messages = _as_strings(messages)
    byte_lengths = pc.cast(pc.binary_length(messages), messages.type)
    prefixed = pc.binary_join_element_wise(pa.scalar(EIP191_PREFIX, messages.type), byte_lengths,
                                           messages, pa.scalar("", messages.type))
    data, offsets, present = _string_buffers(prefixed)
    digests = np.zeros((len(messages), DIGEST_BYTES), dtype=np.uint8)
    launch(keccak256_ragged, len(messages), data, offsets, _chunk_bounds(len(messages)), digests)
    digests[~present] = 0
    return digests


# --- parsing signatures and accounts ---------------------------------------------------------

class ParsedSignatures(NamedTuple):
    sig65: np.ndarray  # (n, 65) uint8: r | s | recovery id 0/1; zeros where invalid
    valid: np.ndarray  # (n,) bool
    errors: pa.Array  # string: null where valid, otherwise what was expected and what arrived


def parse_signatures(signatures: pa.Array | pa.ChunkedArray | Sequence[str | None]) -> ParsedSignatures:
    """Decode hex signatures (130 digits, `0x` optional, last byte v in {0, 1, 27, 28})."""
    signatures = _as_strings(signatures)
    sig65, status, detail = _decode_hex(signatures, secp256k1.SIGNATURE_BYTES, PREFIX_OPTIONAL)
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
        f"{_SIGNATURE_EXPECTED}, got ", characters, " characters", "")
    bad_digit = pc.binary_join_element_wise(
        f"{_SIGNATURE_EXPECTED}, got a non-hex character at position ", position, "")
    bad_recovery = pc.binary_join_element_wise(
        "signature: expected a last byte v in {0, 1, 27, 28}, got ", recovery_byte, "")
    message = pc.if_else(pa.array(status == HEX_BAD_LENGTH), wrong_length, bad_recovery)
    message = pc.if_else(pa.array(status == HEX_BAD_DIGIT), bad_digit, message)
    return pc.if_else(pa.array(status == HEX_NULL), f"{_SIGNATURE_EXPECTED}, got null", message)


def parse_accounts(accounts: pa.Array | pa.ChunkedArray | Sequence[str | None]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(addr20 (n, 20) uint8, valid bool[n]) for `0x` + 40 hex digits of either case."""
    addr20, status, _ = _decode_hex(_as_strings(accounts), ADDRESS_BYTES, PREFIX_REQUIRED)
    return addr20, status == HEX_OK


# --- recovery --------------------------------------------------------------------------------

class SignatureRecoverer:
    """Recovers signer addresses on all cores; owns one thread pool for its lifetime."""

    def __init__(self, threads: int | None = None):
        self.threads = threads or os.cpu_count() or 1
        self._pool = concurrent.futures.ThreadPoolExecutor(self.threads,
                                                           thread_name_prefix="stepbatch-recover")

    def __enter__(self) -> "SignatureRecoverer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def recover(self, digests: np.ndarray, sig65: np.ndarray, rows: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """(addr20 (n, 20) uint8, ok bool[n]): the signer of each listed row (all rows when `rows` is
        None); unlisted rows and rows that do not recover have ok False and a zero address."""
        digests = _uint8_rows(digests, DIGEST_BYTES, "digests")
        sig65 = _uint8_rows(sig65, secp256k1.SIGNATURE_BYTES, "sig65")
        n = len(digests)
        if len(sig65) != n:
            raise ValueError(f"digests has {n} rows but sig65 has {len(sig65)}")
        rows = np.arange(n) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows) and (rows[0] < 0 or rows[-1] >= n):
            raise ValueError(f"rows: expected indices in [0, {n}), got {rows[0]}..{rows[-1]}")
        public_keys = np.zeros((n, secp256k1.PUBLIC_KEY_BYTES), dtype=np.uint8)
        chunks = [chunk.tolist() for chunk in np.array_split(rows, self.threads) if len(chunk)]
        jobs = [self._pool.submit(secp256k1.recover_public_keys_into, digests, sig65, chunk,
                                  public_keys) for chunk in chunks]
        ok = np.zeros(n, dtype=bool)
        ok[rows] = True
        for job in jobs:
            ok[job.result()] = False
        recovered = np.flatnonzero(ok)
        key_hashes = np.zeros((len(recovered), DIGEST_BYTES), dtype=np.uint8)
        # The address hashes X | Y, i.e. the public key without its 0x04 tag byte.
        launch(keccak256_fixed, len(recovered), public_keys[recovered, 1:], _chunk_bounds(len(recovered)),
               key_hashes)
        addr20 = np.zeros((n, ADDRESS_BYTES), dtype=np.uint8)
        addr20[recovered] = key_hashes[:, DIGEST_BYTES - ADDRESS_BYTES:]
        return addr20, ok


class SignerCheck(NamedTuple):
    matches: np.ndarray  # bool[n]: the signature parses, recovers, and its signer is the account
    signers: np.ndarray  # (n, 20) uint8 recovered addresses, meaningful where `recovered`
    recovered: np.ndarray  # bool[n]: a public key was recovered


def check_signers(table: pa.Table, recoverer: SignatureRecoverer,
                  rows: np.ndarray | None = None) -> SignerCheck:
    """Recover each row's signer and compare it with `account` (any case).

    `table` is flat (account, triangle_id, lat, lon, accuracy, timestamp, nonce, signature); only the
    listed rows are checked (all when None), the others do not match.
    """
    digests = eip191_digests(canonical_messages(table))
    parsed = parse_signatures(table.column("signature"))
    accounts, account_valid = parse_accounts(table.column("account"))
    candidates = parsed.valid & account_valid
    if rows is not None:
        listed = np.zeros(len(candidates), dtype=bool)
        listed[np.asarray(rows, dtype=np.int64)] = True
        candidates &= listed
    signers, ok = recoverer.recover(digests, parsed.sig65, np.flatnonzero(candidates))
    return SignerCheck(ok & (signers == accounts).all(axis=1), signers, ok)


def signatures_match(table: pa.Table, recoverer: SignatureRecoverer,
                     rows: np.ndarray | None = None) -> np.ndarray:
    """bool[n]: `check_signers(...).matches`."""
    return check_signers(table, recoverer, rows).matches


def recover_addresses(messages: pa.Array | Sequence[str | None],
                      signatures: pa.Array | Sequence[str | None], threads: int | None = None,
                      recoverer: SignatureRecoverer | None = None) -> pa.Array:
    """Lower-case 0x signer address of each (message, signature); null where the message is null,
    the signature is malformed or does not recover. Uses `recoverer` or a pool of `threads`."""
    messages = _as_strings(messages)
    digests = eip191_digests(messages)
    parsed = parse_signatures(signatures)
    rows = np.flatnonzero(parsed.valid & messages.is_valid().to_numpy(zero_copy_only=False))
    if recoverer is not None:
        addr20, ok = recoverer.recover(digests, parsed.sig65, rows)
    else:
        with SignatureRecoverer(threads) as own:
            addr20, ok = own.recover(digests, parsed.sig65, rows)
    return addresses_to_hex(addr20, ok)


def recover_address(message: str, signature: str) -> str:
    """Lower-case 0x address that signed `message` (EIP-191).

    Raises MalformedSignatureError when the signature cannot be parsed and
    UnrecoverableSignatureError when it parses but recovers no key (both ValueError)."""
    if not isinstance(signature, str):
        raise MalformedSignatureError(f"{_SIGNATURE_EXPECTED}, got {type(signature).__name__}")
    parsed = parse_signatures([signature])
    if not parsed.valid[0]:
        raise MalformedSignatureError(parsed.errors[0].as_py())
    public_key = secp256k1.recover_public_key(eip191_digest(message), parsed.sig65[0].tobytes())
    return "0x" + keccak256(public_key)[-ADDRESS_BYTES:].hex()


# --- signing ---------------------------------------------------------------------------------

def address_of(private_key: bytes | str) -> str:
    """Lower-case 0x address of a private key (32 bytes, or 64 hex digits with optional 0x)."""
    public_key = secp256k1.public_key_of(_private_key_bytes(private_key))
    return "0x" + keccak256(public_key)[-ADDRESS_BYTES:].hex()


def addresses_of(private_keys: Sequence[bytes] | np.ndarray) -> pa.Array:
    """Lower-case 0x addresses of many private keys, their public keys hashed in one kernel call."""
    public_keys = np.frombuffer(
        b"".join(secp256k1.public_key_of(_private_key_bytes(bytes(key))) for key in private_keys),
        np.uint8).reshape(len(private_keys), 64)
    hashes = np.zeros((len(private_keys), DIGEST_BYTES), np.uint8)
    launch(keccak256_fixed, len(private_keys), public_keys,
           _chunk_bounds(len(private_keys)), hashes)
    return addresses_to_hex(np.ascontiguousarray(hashes[:, DIGEST_BYTES - ADDRESS_BYTES:]))


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
        wrong_length = [i for i, key in enumerate(private_keys) if len(key) != 32]
        if wrong_length:
            raise InvalidPrivateKeyError(f"private_keys[{wrong_length[0]}]: expected 32 bytes, got "
                                         f"{len(private_keys[wrong_length[0]])}")
        private_keys = np.frombuffer(b"".join(private_keys), dtype=np.uint8).reshape(-1, 32)
    private_keys = _uint8_rows(private_keys, 32, "private_keys")
    digests = _uint8_rows(digests, DIGEST_BYTES, "digests")
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


def signatures_to_hex(sig65: np.ndarray) -> pa.Array:
    """0x-prefixed lower-case hex strings of (n, 65) signatures, byte for byte."""
    return _hex_strings(_uint8_rows(sig65, secp256k1.SIGNATURE_BYTES, "sig65"))


def addresses_to_hex(addr20: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """0x-prefixed lower-case hex strings of (n, 20) addresses; null where `valid` is False."""
    return _hex_strings(_uint8_rows(addr20, ADDRESS_BYTES, "addr20"), valid)


# --- Arrow / NumPy plumbing ------------------------------------------------------------------

def _as_array(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    return pa.array(values, pa.string())


def _as_strings(values) -> pa.Array:
    """A string or large_string array (an all-null or string_view column is cast)."""
    values = _as_array(values)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return values
    return pc.cast(values, pa.string())


def _string_buffers(strings: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _decode_hex(strings: pa.Array, width: int, prefix_mode: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data, offsets, present = _string_buffers(strings)
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


def _uint8_rows(array: np.ndarray, width: int, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 2 or array.shape[1] != width:
        raise ValueError(f"{name}: expected a (n, {width}) uint8 array, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


def _private_key_bytes(private_key: bytes | str) -> bytes:
    if isinstance(private_key, str):
        text = private_key[2:] if private_key.startswith("0x") else private_key
        try:
            return bytes.fromhex(text)
        except ValueError as err:
            raise InvalidPrivateKeyError(
                f"private key: expected 64 hex digits (0x optional), got {private_key!r}") from err
    return bytes(private_key)


def _chunk_bounds(n: int) -> np.ndarray:
    """Contiguous row ranges for a parallel kernel: a few per Numba thread, so one slow chunk does
    not leave the other cores idle."""
    chunks = max(1, min(n, 4 * numba.get_num_threads()))
    return np.linspace(0, n, chunks + 1).astype(np.int64)
