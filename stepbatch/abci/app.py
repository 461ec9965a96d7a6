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

import dataclasses
import datetime as dt
import json
import logging
import os
import itertools
import signal
import threading
import time

import orjson

from stepbatch.abci import genesis as chain_genesis
from stepbatch.abci import protos
from stepbatch.config import Config
from stepbatch.ingest.sources import read_proofs
from stepbatch.protocol import Code
from stepbatch.store.base import StaleStateError
from stepbatch.store.database import read_regions, write_regions
from stepbatch.store.mongo import MongoStore
from stepbatch.store.seed import existing_triangles
from stepbatch.validator import BatchResult, Validator

log = logging.getLogger("stepbatch.abci")
CHAIN_ID = "chain"
APP_VERSION = 1
# Checks that a proposer may drop a transaction for: they fail the same way in any block, at any time.
_NEVER_ACCEPTED = {Code.INVALID_PAYLOAD, Code.UNSUPPORTED_VERSION, Code.LOW_GPS_ACCURACY, Code.BAD_SIGNATURE}
# What CheckTx refuses: checks 1-6 of SPEC §4.
_REFUSED_AT_ADMISSION = {Code.INVALID_PAYLOAD, Code.UNSUPPORTED_VERSION, Code.LOW_GPS_ACCURACY,
                         Code.CLOCK_DRIFT, Code.BAD_SIGNATURE, Code.NONCE_REPLAY}


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
        self._proposals: dict[bytes, tuple[int, object]] = {}  # block hash → (time ms, stateless result)
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
        now = dt.datetime.now(dt.timezone.utc)
        with self.lock:
            if self.validator is None:
                return self.t.ResponseCheckTx(code=int(Code.INVALID_PAYLOAD), log="the chain is not initialised")
            result = self.validator.validate(read_proofs(transaction_rows([request.tx])), batch_time=now)
        row = result.verdicts.to_pylist()[0]
        code = Code[row["code"]]
        if code in _REFUSED_AT_ADMISSION:
            return self.t.ResponseCheckTx(code=int(code), log=row["message"], codespace="stepbatch")
        return self.t.ResponseCheckTx(code=0)

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
            stateless = self.validator.stateless(read_proofs(transaction_rows(request.txs)), block_ms)
            self._proposals = {**{h: p for h, p in self._proposals.items() if p[0] >= block_ms - 600_000},
                               bytes(request.hash): (block_ms, stateless)}
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
            result = self.validator.validate(proofs, batch_id, block_ms, stateless=stateless)
            app_hash = chain_genesis.next_app_hash(self.app_hash, result.digest)
            self._pending = _Pending(request.height, result, app_hash)
        tx_results = []
        for row in result.verdicts.to_pylist():
            line = f"{row['code']}:{row['reward_micro']}:{'' if row['click_number'] is None else row['click_number']}"
            tx_results.append(self.t.ExecTxResult(code=int(Code[row["code"]]), data=line.encode(),
                                                  log=row["message"], codespace="stepbatch"))
        log.info(json.dumps({"event": "block", "height": request.height, "txs": len(request.txs),
                             "counts": result.counts, "digest": result.digest, "app_hash": app_hash.hex()}))
        return self.t.ResponseFinalizeBlock(tx_results=tx_results, app_hash=app_hash)

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

            self._commit(pending, record)
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
