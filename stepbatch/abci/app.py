"""stepbatch as the ABCI 2.0 application of CometBFT (SPEC §8): one block is one batch.

Every method that decides a verdict uses only the block (its transactions, height and header time),
the committed state and the chain's genesis gates: no wall clock, no randomness, nothing that depends
on threads or CPU features (the kernels never use fast-math). `CheckTx` alone is local: it admits a
transaction to this node's mempool by checks 1-6 against committed state at the wall-clock time.

The database holds, besides the state of SPEC §5, one `meta` document `chain`: chain id, the genesis
app_state's canonical text and app hash, and the last committed `{height, appHash}`, written in the
same transaction as the block's batch. `Info` answers from it, so a restarted app is caught up by
CometBFT's handshake replaying the blocks it lacks.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import logging
import os
import signal
import threading
import time

import numpy as np
import orjson
import pyarrow.compute as pc

from stepbatch.abci import genesis as chain_genesis
from stepbatch.abci import protos
from stepbatch.config import Config
from stepbatch.ingest.sources import read_proofs
from stepbatch.protocol import Code
from stepbatch.store.base import StaleStateError
from stepbatch.store.database import read_regions, write_regions
from stepbatch.store.mongo import MongoStore
from stepbatch.store.reads import find_in
from stepbatch.store.seed import existing_triangles
from stepbatch.validator import BatchResult, Validator

log = logging.getLogger("stepbatch.abci")
CHAIN_ID = "chain"
APP_VERSION = 1
ADMITTED_KEPT = 200_000  # admitted transactions remembered for re-checks (a mempool holds 5,000 by default)
# Checks that a proposer may drop a transaction for: they fail the same way in any block, at any time.
_NEVER_ACCEPTED = {Code.INVALID_PAYLOAD, Code.UNSUPPORTED_VERSION, Code.LOW_GPS_ACCURACY, Code.BAD_SIGNATURE}
# What CheckTx refuses (checks 1-6 of SPEC §4) and says about it.
_ADMISSION_MESSAGES = {
    Code.INVALID_PAYLOAD: "the proof breaks a field rule", Code.UNSUPPORTED_VERSION: "unsupported proof version",
    Code.LOW_GPS_ACCURACY: "GPS accuracy outside the allowed range", Code.CLOCK_DRIFT: "timestamp too far from now",
    Code.BAD_SIGNATURE: "the signature does not recover to the account",
    Code.NONCE_REPLAY: "nonce already used by an accepted proof of this account"}


@dataclasses.dataclass
class _Pending:
    height: int
    result: BatchResult
    app_hash: bytes


def _ms(timestamp) -> int:
    return timestamp.seconds * 1000 + timestamp.nanos // 1_000_000


def transaction_rows(txs) -> list:
    """One `read_proofs` row per transaction: its JSON value without `received_at` (not consensus
    data), or, for bytes that are not JSON, their text, which becomes an INVALID_PAYLOAD row."""
    rows = []
    for tx in txs:
        try:
            value = orjson.loads(tx)
        except orjson.JSONDecodeError:
            value = bytes(tx).decode("utf-8", "replace")
        if isinstance(value, dict):
            value.pop("received_at", None)
        rows.append(value)
    return rows


class StepApplication:
    def __init__(self, store: MongoStore, local: Config, faulty_speed_limit: float | None = None,
                 crash_before_commit: int | None = None):
        self.t = protos.load()
        self.store = store
        self.local = local
        self.faulty_speed_limit = faulty_speed_limit
        self.crash_before_commit = crash_before_commit
        self.lock = threading.RLock()
        self.validator: Validator | None = None
        self.chain: dict | None = store.db.meta.find_one({"_id": CHAIN_ID})
        self._pending: _Pending | None = None
        # block hash → (block time ms, stateless result, ms it took), from ProcessProposal for FinalizeBlock
        self._proposals: dict[bytes, tuple[int, object, float]] = {}
        self._last_commit_ms = 0.0
        # tx hash → (nonce _id, proof time ms) of the transactions CheckTx admitted, for re-checks
        self._admitted: collections.OrderedDict[bytes, tuple[str, int]] = collections.OrderedDict()
        if self.chain is not None:
            self._start_engine(self.chain["gates"])

    def _start_engine(self, gates: dict) -> None:
        config = dataclasses.replace(self.local, **gates)
        if self.faulty_speed_limit is not None:
            config = dataclasses.replace(config, speed_limit_mps=self.faulty_speed_limit)
        if self.validator is not None:
            self.validator.close()
        self.validator = Validator(self.store, config)

    @property
    def height(self) -> int:
        return int(self.chain["height"]) if self.chain else 0

    @property
    def app_hash(self) -> bytes:
        return bytes.fromhex(self.chain["appHash"]) if self.chain else b""

    def close(self) -> None:
        if self.validator is not None:
            self.validator.close()

    # ---------------------------------------------------------------------------- handshake

    def info(self, request):
        with self.lock:
            return self.t.ResponseInfo(data="stepbatch", version=protos.COMETBFT_VERSION, app_version=APP_VERSION,
                                       last_block_height=self.height, last_block_app_hash=self.app_hash)

    def init_chain(self, request):
        genesis = chain_genesis.parse(request.app_state_bytes)
        with self.lock:
            if self.chain is not None:
                if self.chain["appState"] != genesis.canonical or self.chain["chainId"] != request.chain_id:
                    raise chain_genesis.GenesisError(
                        f"this validator's database holds chain {self.chain['chainId']} with another genesis "
                        f"app_state; refusing {request.chain_id} (use another --db)")
                return self.t.ResponseInitChain(app_hash=bytes.fromhex(self.chain["genesisHash"]))
            app_hash = genesis.app_hash
            regions = read_regions(self.store.db)
            for region in genesis.regions:
                regions = regions.plus(region)
            write_regions(self.store.db, regions)
            chain = {"_id": CHAIN_ID, "chainId": request.chain_id, "appState": genesis.canonical,
                     "gates": genesis.gates, "genesisHash": app_hash.hex(), "height": 0, "appHash": app_hash.hex()}
            self.store.db.meta.insert_one(chain)
            self.chain = chain
            self._start_engine(genesis.gates)
            log.info("chain %s initialised: %d regions, genesis app hash %s", request.chain_id,
                     len(genesis.regions.regions), app_hash.hex())
            return self.t.ResponseInitChain(app_hash=app_hash)

    # ------------------------------------------------------------------------------ mempool

    def check_tx(self, request):
        return self.check_tx_many([request])[0]

    def check_tx_many(self, requests) -> list:
        """Mempool admission of several transactions at once (in order, as one batch against committed
        state at the wall-clock time): checks 1-6 of SPEC §4; code 0 admits.

        A re-check (CometBFT re-checks its mempool after every block) of a transaction this app admitted
        re-runs only what can have changed since: the clock drift against now and whether a committed
        block used its nonce meanwhile."""
        now = dt.datetime.now(dt.timezone.utc)
        hashes = [hashlib.sha256(r.tx).digest() for r in requests]
        recheck = [i for i, r in enumerate(requests) if r.type == self.t.RECHECK and hashes[i] in self._admitted]
        fresh = sorted(set(range(len(requests))) - set(recheck))
        answers: list = [None] * len(requests)
        with self.lock:
            if self.validator is None:
                return [self.t.ResponseCheckTx(code=int(Code.INVALID_PAYLOAD), log="the chain is not initialised")
                        for _ in requests]
            if recheck:
                for i, answer in zip(recheck, self._recheck([hashes[i] for i in recheck], now)):
                    answers[i] = answer
            if fresh:
                for i, answer in zip(fresh, self._admit([requests[i].tx for i in fresh], [hashes[i] for i in fresh],
                                                        now)):
                    answers[i] = answer
        return answers

    def _admit(self, txs: list[bytes], hashes: list[bytes], now: dt.datetime) -> list:
        """Checks 1-5 (the stateless stage, on all cores) and 6 (the nonce, against committed state and
        the transactions before it in this call) of new transactions."""
        proofs = read_proofs(transaction_rows(txs))
        stateless = self.validator.stateless(proofs, now)
        # The `nonces` _id of each row (layout.nonce_id over the columns): account lower-cased, ':', nonce.
        nonce_ids = pc.binary_join_element_wise(pc.utf8_lower(proofs.column("account")), proofs.column("nonce"),
                                                ":").to_pylist()
        passed = np.flatnonzero(stateless.code == 0)
        used = {doc["_id"] for doc in find_in(self.store.db, "nonces", [nonce_ids[k] for k in passed], {"_id": 1})}
        errors, times = proofs.column("payload_error").to_pylist(), proofs.column("ts_ms").to_pylist()
        answers = []
        for k in range(len(txs)):
            code = Code(int(stateless.code[k]))
            if code == Code.ACCEPTED and nonce_ids[k] in used:
                code = Code.NONCE_REPLAY
            if code != Code.ACCEPTED:
                answers.append(self.t.ResponseCheckTx(code=int(code), codespace="stepbatch",
                                                      log=errors[k] or _ADMISSION_MESSAGES[code]))
                continue
            used.add(nonce_ids[k])
            answers.append(self.t.ResponseCheckTx(code=0))
            self._admitted[hashes[k]] = (nonce_ids[k], times[k])
            while len(self._admitted) > ADMITTED_KEPT:
                self._admitted.popitem(last=False)
        return answers

    def _recheck(self, hashes: list[bytes], now: dt.datetime) -> list:
        limit = self.validator.config.clock_drift_ms
        now_ms = int(now.timestamp() * 1000)
        kept = [self._admitted[h] for h in hashes]
        used = {doc["_id"] for doc in find_in(self.store.db, "nonces", [nonce_id for nonce_id, _ in kept], {"_id": 1})}
        answers = []
        for digest, (nonce_id, ts_ms) in zip(hashes, kept):
            if abs(ts_ms - now_ms) > limit:
                answers.append(self.t.ResponseCheckTx(code=int(Code.CLOCK_DRIFT), codespace="stepbatch",
                                                      log=f"timestamp is {abs(ts_ms - now_ms)} ms from now; at most "
                                                          f"{limit} ms allowed"))
            elif nonce_id in used:
                answers.append(self.t.ResponseCheckTx(code=int(Code.NONCE_REPLAY), codespace="stepbatch",
                                                      log="nonce already used by an accepted proof of this account"))
            else:
                answers.append(self.t.ResponseCheckTx(code=0))
                continue
            self._admitted.pop(digest, None)
        return answers

    # ---------------------------------------------------------------------------- proposals

    def prepare_proposal(self, request):
        rows = read_proofs(transaction_rows(request.txs))
        with self.lock:
            stateless = self.validator.stateless(rows, None) if len(request.txs) else None
        kept, size = [], 0
        for i, tx in enumerate(request.txs):
            if stateless is not None and Code(int(stateless.code[i])) in _NEVER_ACCEPTED:
                continue
            if size + len(tx) > request.max_tx_bytes:
                break
            kept.append(tx)
            size += len(tx)
        return self.t.ResponsePrepareProposal(txs=kept)

    def process_proposal(self, request):
        """Every well-formed block is accepted (bad proofs are rejected row by row when it executes);
        the stateless stage runs now, on all cores, and is kept for the block's FinalizeBlock."""
        block_ms = _ms(request.time)
        with self.lock:
            started = time.perf_counter()
            stateless = self.validator.stateless(read_proofs(transaction_rows(request.txs)), block_ms)
            spent_ms = (time.perf_counter() - started) * 1000
            self._proposals = {**{h: p for h, p in self._proposals.items() if p[0] >= block_ms - 600_000},
                               bytes(request.hash): (block_ms, stateless, spent_ms)}
        return self.t.ResponseProcessProposal(status=self.t.ResponseProcessProposal.ACCEPT)

    # ----------------------------------------------------------------------------- execution

    def finalize_block(self, request):
        block_ms = _ms(request.time)
        batch_id = f"{self.chain['chainId']}:{request.height}"
        with self.lock:
            if request.height != self.height + 1:
                raise RuntimeError(f"FinalizeBlock of height {request.height} after committed height {self.height}")
            proofs = read_proofs(transaction_rows(request.txs))
            kept = self._proposals.pop(bytes(request.hash), None)
            stateless = kept[1] if kept is not None and kept[0] == block_ms else None
            started = time.perf_counter()
            result = self.validator.validate(proofs, batch_id, block_ms, stateless=stateless)
            validate_ms = (time.perf_counter() - started) * 1000 + (kept[2] if kept and stateless else 0.0)
            app_hash = chain_genesis.next_app_hash(self.app_hash, result.digest)
            self._pending = _Pending(request.height, result, app_hash)
        tx_results = []
        for row in result.verdicts.to_pylist():
            line = f"{row['code']}:{row['reward_micro']}:{'' if row['click_number'] is None else row['click_number']}"
            tx_results.append(self.t.ExecTxResult(code=int(Code[row["code"]]), data=line.encode(),
                                                  log=row["message"], codespace="stepbatch"))
        log.info(json.dumps({"event": "block", "height": request.height, "txs": len(request.txs),
                             "counts": result.counts, "digest": result.digest, "app_hash": app_hash.hex()}))
        # This node's own timings, as a block event: not part of any hash, read by `bench --target cometbft`.
        timing = self.t.Event(type="stepbatch", attributes=[
            self.t.EventAttribute(key="validate_ms", value=f"{validate_ms:.3f}"),
            self.t.EventAttribute(key="previous_commit_ms", value=f"{self._last_commit_ms:.3f}")])
        return self.t.ResponseFinalizeBlock(tx_results=tx_results, app_hash=app_hash, events=[timing])

    def commit(self, request):
        with self.lock:
            pending = self._pending
            if pending is None:
                raise RuntimeError("Commit without a finalized block")
            if self.crash_before_commit == pending.height:
                log.warning("failpoint: killing this app before committing height %d", pending.height)
                os.kill(os.getpid(), signal.SIGKILL)
            chain = {**self.chain, "height": pending.height, "appHash": pending.app_hash.hex()}

            def record(db, session):
                moved = db.meta.replace_one({"_id": CHAIN_ID, "height": self.height}, chain, session=session)
                if moved.matched_count != 1:
                    raise RuntimeError(f"height {pending.height} was committed by someone else")

            started = time.perf_counter()
            self._commit(pending, record)
            self._last_commit_ms = (time.perf_counter() - started) * 1000
            self.chain, self._pending = chain, None
        return self.t.ResponseCommit(retain_height=0)

    def _commit(self, pending: _Pending, record) -> None:
        """Commit the block's batch; a write conflict is outwaited, not answered with an error. On this
        validator's own database it can only come from a transaction its previous process left open
        when it was killed mid-commit, which the server expires after its transaction lifetime (60 s)."""
        deadline = time.monotonic() + self.validator.config.commit_wait_s
        for attempt in itertools.count():
            try:
                self.store.commit(pending.result.outcome, also=record)
                return
            except StaleStateError as err:
                if time.monotonic() > deadline:
                    raise
                if attempt == 0:
                    log.warning("height %d: %s; retrying until the conflicting transaction ends",
                                pending.height, err)
                time.sleep(min(0.1 * 2 ** attempt, 2.0))

    # ------------------------------------------------------------------------------- queries

    def query(self, request):
        path = request.path.strip("/").split("/")
        with self.lock:
            height = self.height
            try:
                value = self._answer(path)
            except (ValueError, KeyError) as err:
                return self.t.ResponseQuery(code=1, log=f"bad query {request.path!r}: {err}", height=height)
        if value is None:
            return self.t.ResponseQuery(code=1, log=f"not found: {request.path}", height=height)
        return self.t.ResponseQuery(code=0, value=orjson.dumps(value, default=str), height=height)

    def _answer(self, path: list[str]):
        db = self.store.db
        if path[0] == "account" and len(path) == 2:
            doc = db.accounts.find_one({"_id": path[1].lower()})
            return None if doc is None else {"account": doc["_id"], "balanceMicro": int(doc["balanceMicro"]),
                                             "proofCount": doc["proofCount"], "lastProof": doc.get("lastProof")}
        if path[0] == "triangle" and len(path) == 2:
            found = existing_triangles(db, [path[1]])
            return None if not found else {k: found[0].get(k) for k in (
                "_id", "level", "state", "clicks", "parentId", "childrenIds")}
        if path[0] == "proof" and len(path) == 3:
            used = db.nonces.find_one({"_id": f"{path[1].lower()}:{path[2]}"}) is not None
            return {"account": path[1].lower(), "nonce": path[2], "used": used}
        if path[0] == "batch" and len(path) == 2:
            stored = self.store.committed(f"{self.chain['chainId']}:{int(path[1])}") if self.chain else None
            return None if stored is None else {"batchId": stored.batch_id, "digest": stored.digest,
                                                "counts": stored.counts, "rows": stored.verdicts.num_rows}
        raise ValueError("paths are /account/{address}, /triangle/{id}, /proof/{account}/{nonce}, /batch/{height}")

    # ---------------------------------------------------------- vote extensions, snapshots

    def extend_vote(self, request):
        return self.t.ResponseExtendVote()

    def verify_vote_extension(self, request):
        return self.t.ResponseVerifyVoteExtension(status=self.t.ResponseVerifyVoteExtension.ACCEPT)

    def list_snapshots(self, request):
        return self.t.ResponseListSnapshots()

    def offer_snapshot(self, request):
        return self.t.ResponseOfferSnapshot(result=self.t.ResponseOfferSnapshot.REJECT)

    def load_snapshot_chunk(self, request):
        return self.t.ResponseLoadSnapshotChunk()

    def apply_snapshot_chunk(self, request):
        return self.t.ResponseApplySnapshotChunk(result=self.t.ResponseApplySnapshotChunk.ABORT)
