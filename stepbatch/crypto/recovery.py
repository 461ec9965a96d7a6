"""Signature recovery on all cores: who signed each row, and is it the row's account (SPEC §2, check 5).

Only the libsecp256k1 recovery runs in worker threads (one contiguous chunk of rows each, writing
into one preallocated buffer); hashing the recovered public keys and comparing them with the accounts
run over whole arrays.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa

from stepbatch.crypto import secp256k1
from stepbatch.crypto.eip191 import (
    ADDRESS_BYTES,
    address_hashes,
    as_strings,
    canonical_messages,
    eip191_digest,
    eip191_digests,
    keccak256,
)
from stepbatch.crypto.hexcodec import (
    SIGNATURE_EXPECTED,
    addresses_to_hex,
    parse_accounts,
    parse_signatures,
    uint8_rows,
)
from stepbatch.crypto.secp256k1 import MalformedSignatureError
from stepbatch_kernels.keccak import DIGEST_BYTES


class RecoveryMemo:
    """What recent recoveries gave, keyed on (EIP-191 digest, 65-byte signature), least recently used
    first out. Recovery is a pure function of those 97 bytes, so a hit is exactly what recovering
    again would give, on any machine: a consensus node that checks a proof at CheckTx, again when a
    block proposes it and again when the block executes recovers its signature once."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._known: collections.OrderedDict[bytes, bytes | None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._known)

    def look_up(self, keys: list[bytes]) -> list[bytes | None | bool]:
        """Per key: the signer's 20 bytes, None (known not to recover), or False (not known)."""
        with self._lock:
            found = [self._known.get(key, False) for key in keys]
            for key, value in zip(keys, found):
                if value is not False:
                    self._known.move_to_end(key)
            known = sum(value is not False for value in found)
            self.hits += known
            self.misses += len(keys) - known
        return found

    def remember(self, keys: list[bytes], signers: list[bytes | None]) -> None:
        with self._lock:
            self._known.update(zip(keys, signers))
            while len(self._known) > self.capacity:
                self._known.popitem(last=False)


class SignatureRecoverer:
    """Recovers signer addresses on all cores; owns one thread pool for its lifetime. With a `memo`
    (a RecoveryMemo), a signature recovered before is not recovered again."""

    def __init__(self, threads: int | None = None, memo: RecoveryMemo | None = None):
        self.threads = threads or os.cpu_count() or 1
        self.memo = memo if memo is not None and memo.capacity > 0 else None
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
        digests = uint8_rows(digests, DIGEST_BYTES, "digests")
        sig65 = uint8_rows(sig65, secp256k1.SIGNATURE_BYTES, "sig65")
        n = len(digests)
        if len(sig65) != n:
            raise ValueError(f"digests has {n} rows but sig65 has {len(sig65)}")
        rows = np.arange(n) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows) and (rows[0] < 0 or rows[-1] >= n):
            raise ValueError(f"rows: expected indices in [0, {n}), got {rows[0]}..{rows[-1]}")
        if self.memo is None or not len(rows):
            return self._recover(digests, sig65, rows)
        keys = [bytes(key) for key in np.concatenate((digests[rows], sig65[rows]), axis=1)]
        found = self.memo.look_up(keys)
        known = np.array([value is not False for value in found], dtype=bool)
        signed = np.array([isinstance(value, bytes) for value in found], dtype=bool)
        addr20 = np.zeros((n, ADDRESS_BYTES), dtype=np.uint8)
        ok = np.zeros(n, dtype=bool)
        if signed.any():
            addr20[rows[signed]] = np.frombuffer(b"".join(v for v in found if isinstance(v, bytes)),
                                                 np.uint8).reshape(-1, ADDRESS_BYTES)
            ok[rows[signed]] = True
        missed = rows[~known]
        if len(missed):
            fresh_addr20, fresh_ok = self._recover(digests, sig65, missed)
            addr20[missed], ok[missed] = fresh_addr20[missed], fresh_ok[missed]
            self.memo.remember([key for key, hit in zip(keys, known.tolist()) if not hit],
                               [addr20[row].tobytes() if ok[row] else None for row in missed.tolist()])
        return addr20, ok

    def _recover(self, digests: np.ndarray, sig65: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(digests)
        public_keys = np.zeros((n, secp256k1.PUBLIC_KEY_BYTES), dtype=np.uint8)
        chunks = [chunk.tolist() for chunk in np.array_split(rows, self.threads) if len(chunk)]
        jobs = [self._pool.submit(secp256k1.recover_public_keys_into, digests, sig65, chunk,
                                  public_keys) for chunk in chunks]
        ok = np.zeros(n, dtype=bool)
        ok[rows] = True
        for job in jobs:
            ok[job.result()] = False
        recovered = np.flatnonzero(ok)
        addr20 = np.zeros((n, ADDRESS_BYTES), dtype=np.uint8)
        # The address hashes X | Y, i.e. the public key without its 0x04 tag byte.
        addr20[recovered] = address_hashes(public_keys[recovered, 1:])
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


def recover_addresses(messages: pa.Array | Sequence[str | None],
                      signatures: pa.Array | Sequence[str | None], threads: int | None = None,
                      recoverer: SignatureRecoverer | None = None) -> pa.Array:
    """Lower-case 0x signer address of each (message, signature); null where the message is null,
    the signature is malformed or does not recover. Uses `recoverer` or a pool of `threads`."""
    messages = as_strings(messages)
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
        raise MalformedSignatureError(f"{SIGNATURE_EXPECTED}, got {type(signature).__name__}")
    parsed = parse_signatures([signature])
    if not parsed.valid[0]:
        raise MalformedSignatureError(parsed.errors[0].as_py())
    public_key = secp256k1.recover_public_key(eip191_digest(message), parsed.sig65[0].tobytes())
    return "0x" + keccak256(public_key)[-ADDRESS_BYTES:].hex()
