"""Mempool admission (`CheckTx`, SPEC §8): checks 1-6 of SPEC §4 against committed state, now.

The admission rule, the same for a one-proof transaction and a ProofBatch:

- **New transaction.** It must decode as a proof or a ProofBatch (`stepbatch.abci.transactions`), and
  *every* proof in it must pass checks 1-6 at the wall-clock time: the field rules, the version, the
  accuracy gate, the clock drift against now, the signature, and a nonce that no committed block and
  no earlier proof of the same CheckTx call used. One proof that fails refuses the whole
  transaction; the answer's log names each refused proof (`CODE proof K: message`, one per line
  after the first), so a gateway answers those phones and sends the rest again. A transaction made
  of bad signatures or replays therefore costs a node one signature recovery per proof, once (the
  memo), and never reaches a block through an honest proposer.
- **Re-check** (CometBFT re-checks its mempool after every block). Only what can have changed is
  checked again: each proof's drift against now and whether a block has used its nonce since. The
  transaction stays while at least one of its proofs can still be accepted; the others get their
  verdict in the block, on chain, like every proof that reaches one.

Nothing here decides a verdict in a block: that is FinalizeBlock's alone.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import threading

import numpy as np
import pyarrow.compute as pc

from stepbatch.abci import transactions
from stepbatch.protocol import Code
from stepbatch.store.reads import find_in

# Proof rows of admitted transactions remembered for re-checks (about 100 bytes each); one that was
# forgotten is checked again in full.
ADMITTED_ROWS_KEPT = 1_000_000
INTERNAL_ERROR = 100  # the code of a CheckTx or Query this node could not answer (never a verdict code)
CODESPACE = "stepbatch"
MESSAGES = {
    Code.INVALID_PAYLOAD: "the proof breaks a field rule", Code.UNSUPPORTED_VERSION: "unsupported proof version",
    Code.LOW_GPS_ACCURACY: "GPS accuracy outside the allowed range", Code.CLOCK_DRIFT: "timestamp too far from now",
    Code.BAD_SIGNATURE: "the signature does not recover to the account",
    Code.NONCE_REPLAY: "nonce already used by an accepted proof of this account"}


@dataclasses.dataclass(frozen=True)
class Admitted:
    nonce_ids: tuple[str, ...]  # per proof: the `nonces` _id its acceptance would write
    ts_ms: tuple[int, ...]  # per proof: its timestamp


class Mempool:
    """This node's admission decisions; its own lock, so queries and consensus never wait for it."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self._admitted: collections.OrderedDict[bytes, Admitted] = collections.OrderedDict()
        self._rows_kept = 0

    def knows(self, tx_hash: bytes) -> bool:
        return tx_hash in self._admitted

    def check_many(self, requests) -> list:
        """Answers to several CheckTx requests, in order, as one batch on all cores."""
        t = self.app.t
        now = dt.datetime.now(dt.timezone.utc)
        hashes = [transactions.tx_hash(r.tx) for r in requests]
        answers: list = [None] * len(requests)
        with self.lock:
            validator = self.app.validator
            if validator is None:
                return [t.ResponseCheckTx(code=INTERNAL_ERROR, codespace=CODESPACE,
                                          log="the chain is not initialised") for _ in requests]
            recheck = [i for i, r in enumerate(requests) if r.type == t.RECHECK and hashes[i] in self._admitted]
            fresh = sorted(set(range(len(requests))) - set(recheck))
            if recheck:
                for i, answer in zip(recheck, self._recheck([hashes[i] for i in recheck], now)):
                    answers[i] = answer
            if fresh:
                for i, answer in zip(fresh, self._admit(validator, [requests[i].tx for i in fresh],
                                                        [hashes[i] for i in fresh], now)):
                    answers[i] = answer
        return answers

    def _admit(self, validator, txs: list[bytes], hashes: list[bytes], now: dt.datetime) -> list:
        t = self.app.t
        decoded = transactions.decode_all(txs)
        proofs = decoded.proofs
        stateless = validator.stateless(proofs, now, fresh=True)
        nonce_ids = pc.binary_join_element_wise(pc.utf8_lower(proofs.column("account")), proofs.column("nonce"),
                                                ":").to_pylist()
        passed = np.flatnonzero(stateless.code == 0)
        used = {doc["_id"] for doc in find_in(self.app.store.db, "nonces", [nonce_ids[k] for k in passed],
                                              {"_id": 1})}
        codes = stateless.code.astype(np.int64)
        errors, times = proofs.column("payload_error").to_pylist(), proofs.column("ts_ms").to_pylist()
        answers = []
        for tx, (kind, digest) in enumerate(zip(decoded.kinds, hashes)):
            rows = range(*decoded.rows_of(tx).indices(len(nonce_ids)))
            refused = []
            taken = set()
            for row in rows:
                code = Code(int(codes[row]))
                if code == Code.ACCEPTED and (nonce_ids[row] in used or nonce_ids[row] in taken):
                    code = Code.NONCE_REPLAY
                if code != Code.ACCEPTED:
                    refused.append((code, errors[row] or f"proof {row - rows.start + 1}: {MESSAGES[code]}"))
                taken.add(nonce_ids[row])
            if refused:
                answers.append(t.ResponseCheckTx(code=int(refused[0][0]), codespace=CODESPACE,
                                                 log=_refusal(kind, refused, len(rows))))
                continue
            used |= taken
            answers.append(t.ResponseCheckTx(code=0))
            self._remember(digest, Admitted(tuple(nonce_ids[row] for row in rows),
                                            tuple(times[row] for row in rows)))
        return answers

    def _recheck(self, hashes: list[bytes], now: dt.datetime) -> list:
        t = self.app.t
        limit = self.app.validator.config.clock_drift_ms
        now_ms = int(now.timestamp() * 1000)
        kept = [self._admitted[h] for h in hashes]
        used = {doc["_id"] for doc in find_in(self.app.store.db, "nonces",
                                              [nonce_id for entry in kept for nonce_id in entry.nonce_ids],
                                              {"_id": 1})}
        answers = []
        for digest, entry in zip(hashes, kept):
            drifted = [abs(ts - now_ms) > limit for ts in entry.ts_ms]
            replayed = [nonce_id in used for nonce_id in entry.nonce_ids]
            if not all(d or r for d, r in zip(drifted, replayed)):
                answers.append(t.ResponseCheckTx(code=0))
                continue
            if all(drifted):
                spread = min(abs(ts - now_ms) for ts in entry.ts_ms)
                answers.append(t.ResponseCheckTx(code=int(Code.CLOCK_DRIFT), codespace=CODESPACE,
                                                 log=f"timestamp is {spread} ms from now; at most {limit} ms allowed"))
            else:
                answers.append(t.ResponseCheckTx(code=int(Code.NONCE_REPLAY), codespace=CODESPACE,
                                                 log=MESSAGES[Code.NONCE_REPLAY]))
            self._forget(digest)
        return answers

    def _remember(self, digest: bytes, entry: Admitted) -> None:
        self._forget(digest)
        self._admitted[digest] = entry
        self._rows_kept += len(entry.nonce_ids)
        while self._rows_kept > ADMITTED_ROWS_KEPT and self._admitted:
            _, old = self._admitted.popitem(last=False)
            self._rows_kept -= len(old.nonce_ids)

    def _forget(self, digest: bytes) -> None:
        old = self._admitted.pop(digest, None)
        if old is not None:
            self._rows_kept -= len(old.nonce_ids)


def _refusal(kind: str, refused: list[tuple[Code, str]], total: int) -> str:
    """The log of a refused transaction: a one-proof one says why; a ProofBatch lists its refused
    proofs, one line each, `CODE proof K: message`."""
    if kind != transactions.Kind.BATCH:
        return refused[0][1].removeprefix("proof 1: ")
    lines = [f"{len(refused)} of the batch's {total} proofs are refused; a ProofBatch is admitted whole or not at all"]
    lines += [f"{code.name} {message}" for code, message in refused]
    return "\n".join(lines)


def refused_proofs(log_text: str) -> dict[int, tuple[Code, str]]:
    """The refused proofs a ProofBatch's CheckTx log names: index in the batch (from 0) → (code,
    message). Empty for a log that names none (a one-proof transaction's, or an internal error's)."""
    named = {}
    for line in log_text.split("\n")[1:]:
        name, _, rest = line.partition(" ")
        number, _, message = rest.partition(": ")
        if name in Code.__members__ and number.startswith("proof ") and number[6:].isdigit():
            named[int(number[6:]) - 1] = (Code[name], message)
    return named
