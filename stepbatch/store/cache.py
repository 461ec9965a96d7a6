"""The write-through state cache of a long-running validator: what the database holds, kept in memory.

Accounts and triangles are kept as the engine's state tuples; the used nonces of an account are kept
as a sorted array of 64-bit hashes of "account:nonce", complete for every account the cache holds
(loaded with the account, extended by every commit), so "not in the array" is an authoritative
"unused" and a hit is confirmed against the database (a hash collision is then told from a replay).

The whole cache describes the database at one commit sequence number (`seq`). Every committing
writer advances the database's sequence number in its transaction, guarded on the number it
validated against; a cache whose `seq` is not the database's is stale and is emptied, so another
writer on the same database can never make a cached value wrong, it can only make the cache empty.

Bounded by accounts (with their nonces) and by triangles, least recently used first out.
"""

from __future__ import annotations

import collections
import hashlib
import sys

import numpy as np
import pyarrow as pa

# Account state: (balance_micro, proof_count, has_last, last_lat, last_lon, last_ts_ms).
AccountState = tuple[int, int, bool, float, float, int]
# Triangle state: (TriangleState value, clicks, whether it has a document of its own).
TriangleEntry = tuple[int, int, bool]


def nonce_hashes(account: str, nonces: list[str]) -> np.ndarray:
    """uint64 hashes of "account:nonce" (BLAKE2b, 8 bytes), one per nonce."""
    prefix = account.encode() + b":"
    return np.array([int.from_bytes(hashlib.blake2b(prefix + n.encode("utf-8", "surrogatepass"),
                                                    digest_size=8).digest(), "little")
                     for n in nonces], np.uint64)


class StateCache:
    def __init__(self, max_accounts: int = 1_000_000, max_triangles: int = 2_000_000):
        self.max_accounts = max_accounts
        self.max_triangles = max_triangles
        self.seq: int | None = None
        self.accounts: collections.OrderedDict[str, AccountState] = collections.OrderedDict()
        self.nonces: dict[str, np.ndarray] = {}  # account → sorted uint64 hashes of its used nonces
        self.triangles: collections.OrderedDict[str, TriangleEntry] = collections.OrderedDict()
        self.hits = self.misses = 0

    def clear(self, seq: int | None = None) -> None:
        self.seq = seq
        self.accounts.clear()
        self.nonces.clear()
        self.triangles.clear()

    # ---------------------------------------------------------------------------------- reads

    def account(self, address: str) -> AccountState | None:
        state = self.accounts.get(address)
        if state is None:
            self.misses += 1
            return None
        self.hits += 1
        self.accounts.move_to_end(address)
        return state

    def triangle(self, triangle_id: str) -> TriangleEntry | None:
        state = self.triangles.get(triangle_id)
        if state is None:
            self.misses += 1
            return None
        self.hits += 1
        self.triangles.move_to_end(triangle_id)
        return state

    def maybe_used(self, account: str, hashes: np.ndarray) -> np.ndarray:
        """bool per hash: the account may have used that nonce (True is to be confirmed, False is
        certain). Where the account's nonces are not held, every one may have been used."""
        known = self.nonces.get(account)
        if known is None:
            return np.ones(len(hashes), bool)
        if not len(known):
            return np.zeros(len(hashes), bool)
        at = np.minimum(np.searchsorted(known, hashes), len(known) - 1)
        return known[at] == hashes

    # --------------------------------------------------------------------------------- writes

    def put_account(self, address: str, state: AccountState, used: np.ndarray | None = None) -> None:
        """Cache an account, with its complete set of used nonce hashes (`used`, any order) when
        given; without, the hashes it already has stay."""
        self.accounts[address] = state
        self.accounts.move_to_end(address)
        if used is not None:
            self.nonces[address] = np.sort(used.astype(np.uint64))
        while len(self.accounts) > self.max_accounts:
            evicted, _ = self.accounts.popitem(last=False)
            self.nonces.pop(evicted, None)

    def add_nonces(self, address: str, hashes: np.ndarray) -> None:
        """Add to an account's used nonces, where its complete set is held."""
        known = self.nonces.get(address)
        if known is not None:
            self.nonces[address] = np.sort(np.concatenate([known, hashes.astype(np.uint64)]))

    def put_triangle(self, triangle_id: str, state: TriangleEntry) -> None:
        self.triangles[triangle_id] = state
        self.triangles.move_to_end(triangle_id)
        while len(self.triangles) > self.max_triangles:
            self.triangles.popitem(last=False)

    def apply(self, outcome, stored: np.ndarray) -> None:
        """Write through a batch's effects (a `BatchOutcome`): its accounts, triangles (`stored`: bool
        per triangle, it has a document after the batch) and nonces as they are after it, at the
        sequence number after the one it was validated at."""
        final, keys = outcome.final, outcome.keys
        new = outcome.prior.account_proof_count == 0
        for i, address in enumerate(keys.accounts.to_pylist()):
            self.put_account(address, (int(final.account_balance_micro[i]), int(final.account_proof_count[i]),
                                       bool(final.account_has_last[i]), float(final.account_last_lat[i]),
                                       float(final.account_last_lon[i]), int(final.account_last_ts_ms[i])),
                             np.zeros(0, np.uint64) if new[i] else None)
        for entry in zip(keys.triangles.to_pylist(), final.triangle_state.tolist(),
                         final.triangle_clicks.tolist(), stored.tolist()):
            self.put_triangle(entry[0], entry[1:])
        used = np.flatnonzero(final.nonce_used & ~outcome.prior.nonce_used)
        if len(used):
            owners = keys.nonce_accounts.take(pa.array(used)).to_pylist()
            nonces = keys.nonces.take(pa.array(used)).to_pylist()
            by_owner: dict[str, list[str]] = {}
            for owner, nonce in zip(owners, nonces):
                by_owner.setdefault(owner, []).append(nonce)
            for owner, owned in by_owner.items():
                self.add_nonces(owner, nonce_hashes(owner, owned))
        if outcome.prior.seq is not None:
            self.seq = outcome.prior.seq + 1

    # ------------------------------------------------------------------------------ figures

    def memory_bytes(self) -> int:
        """What the cache holds in bytes: its dicts, every key and entry, and the nonce arrays."""
        total = sys.getsizeof(self.accounts) + sys.getsizeof(self.triangles) + sys.getsizeof(self.nonces)
        for entries in (self.accounts, self.triangles):
            for key, entry in entries.items():
                total += sys.getsizeof(key) + sys.getsizeof(entry) + sum(sys.getsizeof(v) for v in entry)
        return total + sum(sys.getsizeof(array) for array in self.nonces.values())

    def figures(self) -> dict[str, int]:
        return {"accounts": len(self.accounts), "triangles": len(self.triangles),
                "nonces": int(sum(len(a) for a in self.nonces.values())), "hits": self.hits,
                "misses": self.misses, "bytes": self.memory_bytes()}
