"""stepbatch as the ABCI 2.0 application of CometBFT (SPEC §8): one block is one batch.

Every method that decides a verdict uses only the block (its transactions, height and header time),
the committed state and the chain's genesis gates: no wall clock, no randomness, nothing that depends
on threads or CPU features (the kernels never use fast-math). `CheckTx` alone is local
(`stepbatch.abci.mempool`); `Query` reads committed state (`stepbatch.abci.queries`). The three have
locks of their own, so a slow query or a long mempool re-check never holds a block back.

The database holds, besides the state of SPEC §5, one `meta` document `chain`: chain id, the genesis
app_state's canonical text and app hash, the initial height and the last committed `{height,
appHash}`, written in the same transaction as the block's batch. `Info` answers from the database,
so a restarted app is caught up by CometBFT's handshake. Whatever leaves this process unsure of what
is durable (a Commit that failed, however; a FinalizeBlock for a height that is not the next) ends
the process: CometBFT's handshake then starts again from what the database holds, which is the one
state a node may go on from.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import itertools
import logging
import os
import signal
import threading
import time

import numpy as np

from stepbatch import logs
from stepbatch.abci import genesis as chain_genesis
from stepbatch.abci import protos, queries, results, transactions
from stepbatch.abci.mempool import Mempool
from stepbatch.config import Config
from stepbatch.crypto.recovery import RecoveryMemo
from stepbatch.protocol import Code
from stepbatch.store.base import StaleStateError
from stepbatch.store.database import LAYOUT_ID, OLD_COLLECTIONS, SEQ_ID, write_regions
from stepbatch.store.mongo import MongoStore
from stepbatch.store.statedigest import written_state_digest
from stepbatch.validator import BatchResult, Validator

log = logging.getLogger("stepbatch.abci")
CHAIN_ID = "chain"
APP_VERSION = 1
MEMO_ENTRIES = 500_000  # recovered signatures remembered (~200 bytes each)
# Checks a proposer may drop a transaction for: they fail the same way in any block, at any time.
NEVER_ACCEPTED = np.array([Code.INVALID_PAYLOAD, Code.UNSUPPORTED_VERSION, Code.LOW_GPS_ACCURACY,
                           Code.BAD_SIGNATURE], np.uint8)
STATE_COLLECTIONS = ("triangles", "accounts", "nonces", "verdicts", "batches", "regions", *OLD_COLLECTIONS)
PROPOSALS_KEPT = 16  # proposals whose stateless stage waits for their FinalizeBlock
FAILPOINTS = ("crash-before-commit", "lose-commit-ack")


class FatalError(RuntimeError):
    """The app cannot go on from what it holds in memory (see the module docstring)."""


def end_process(message: str) -> None:
    """What a fatal error does in `stepbatch abci`: say why, then end the process at once."""
    log.critical("%s; ending this app so that CometBFT's handshake starts again from the database", message)
    logging.shutdown()
    os._exit(70)


def package_version() -> str:
    try:
        return importlib.metadata.version("stepbatch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclasses.dataclass
class _Pending:
    height: int
    result: BatchResult
    app_hash: bytes


@dataclasses.dataclass
class _Proposal:
    block_ms: int
    decoded: transactions.Decoded
    stateless: object
    spent_ms: float


def _ms(timestamp) -> int:
    return timestamp.seconds * 1000 + timestamp.nanos // 1_000_000


class StepApplication:
    def __init__(self, store: MongoStore, local: Config, faulty_speed_limit: float | None = None,
                 failpoints: dict[str, int] | None = None, memo_entries: int = MEMO_ENTRIES,
                 on_fatal=end_process, byzantine_txs: list[bytes] = (), metrics=None):
        self.t = protos.load()
        self.store = store
        self.local = local
        self.faulty_speed_limit = faulty_speed_limit
        self.byzantine_txs = list(byzantine_txs)  # a faulty proposer's: put into every block it proposes
        self.failpoints = dict(failpoints or {})
        self.on_fatal = on_fatal
        self.metrics = metrics  # a `stepbatch.abci.metrics.AppMetrics`, or None
        self.memo = RecoveryMemo(memo_entries)
        self._memo_seen = (0, 0)
        self.version = package_version()
        self.lock = threading.Lock()  # the consensus connection's state: engine, pending block, proposals
        self.mempool = Mempool(self)
        self.validator: Validator | None = None
        self._pending: _Pending | None = None
        self._proposals: dict[bytes, _Proposal] = {}
        self._last_commit_ms = 0.0
        self.chain: dict | None = self._read_chain()
        if self.chain is not None:
            self._start_engine(self.chain["gates"])
        if self.metrics is not None:
            self.metrics.height.set(self.height)

    def _read_chain(self) -> dict | None:
        return self.store.db.meta.find_one({"_id": CHAIN_ID})

    def _start_engine(self, gates: dict) -> None:
        config = dataclasses.replace(self.local, **gates)
        if self.faulty_speed_limit is not None:
            config = dataclasses.replace(config, speed_limit_mps=self.faulty_speed_limit)
        if self.validator is not None:
            self.validator.close()
        self.validator = Validator(self.store, config, memo=self.memo)

    @property
    def height(self) -> int:
        return int(self.chain["height"]) if self.chain else 0

    @property
    def app_hash(self) -> bytes:
        return bytes.fromhex(self.chain["appHash"]) if self.chain else b""

    def _fatal(self, message: str):
        self.on_fatal(message)
        raise FatalError(message)

    def close(self) -> None:
        if self.validator is not None:
            self.validator.close()

    # ---------------------------------------------------------------------------- handshake

    def info(self, request):
        """The last committed height and app hash, from the database. CometBFT asks at its handshake,
        and RPC clients at any time (`abci_info`), so Info changes nothing."""
        chain = self._read_chain()
        height = int(chain["height"]) if chain else 0
        return self.t.ResponseInfo(data="stepbatch", version=self.version, app_version=APP_VERSION,
                                   last_block_height=height,
                                   last_block_app_hash=bytes.fromhex(chain["appHash"]) if chain else b"")

    def init_chain(self, request):
        genesis = chain_genesis.parse(request.app_state_bytes)
        with self.lock:
            chain = self._read_chain()
            if chain is not None:
                if chain["appState"] != genesis.canonical or chain["chainId"] != request.chain_id:
                    raise chain_genesis.GenesisError(
                        f"this validator's database {self.store.db.name} holds chain {chain['chainId']} with "
                        f"another genesis app_state; refusing {request.chain_id} (use another --db)")
                self.chain = chain
                return self.t.ResponseInitChain(app_hash=bytes.fromhex(chain["genesisHash"]))
            held = self._state_held()
            if held:
                raise chain_genesis.GenesisError(
                    f"database {self.store.db.name} already holds {held}: a validator's database belongs to its "
                    f"chain alone, so InitChain of {request.chain_id} starts only on an empty one (--db NAME)")
            write_regions(self.store.db, genesis.regions)
            app_hash = genesis.app_hash
            chain = {"_id": CHAIN_ID, "chainId": request.chain_id, "appState": genesis.canonical,
                     "gates": genesis.gates, "genesisHash": app_hash.hex(),
                     "initialHeight": max(int(request.initial_height), 1), "height": 0, "appHash": app_hash.hex()}
            self.store.db.meta.insert_one(chain)
            self.chain = chain
            self._start_engine(genesis.gates)
            log.info("chain %s initialised: %d regions, genesis app hash %s", request.chain_id,
                     len(genesis.regions.regions), app_hash.hex())
            return self.t.ResponseInitChain(app_hash=app_hash)

    def _state_held(self) -> str | None:
        """What state of any kind the database holds, in words, or None when it holds none."""
        db = self.store.db
        for name in STATE_COLLECTIONS:
            if db[name].find_one({}, {"_id": 1}) is not None:
                return f"documents in {name}"
        other = db.meta.find_one({"_id": {"$nin": [SEQ_ID, LAYOUT_ID]}}, {"_id": 1})
        return f"the meta document {other['_id']!r}" if other is not None else None

    # ------------------------------------------------------------------------------ mempool

    def check_tx(self, request):
        return self.check_tx_many([request])[0]

    def check_tx_many(self, requests) -> list:
        answers = self.mempool.check_many(requests)
        if self.metrics is not None:
            admitted = sum(answer.code == 0 for answer in answers)
            self.metrics.check_tx.labels(result="admitted").inc(admitted)
            self.metrics.check_tx.labels(result="refused").inc(len(answers) - admitted)
        return answers

    # ---------------------------------------------------------------------------- proposals

    def prepare_proposal(self, request):
        """The mempool's transactions in its order, less those no block could accept a proof of, within
        `max_tx_bytes` as CometBFT counts them. A transaction this node admitted is kept unchecked."""
        txs = list(request.txs)
        unknown = [i for i, tx in enumerate(txs) if not self.mempool.knows(transactions.tx_hash(tx))]
        hopeless = set()
        if unknown and self.validator is not None:
            decoded = transactions.decode_all([txs[i] for i in unknown])
            never = np.isin(self.validator.stateless(decoded.proofs, None, fresh=True).code, NEVER_ACCEPTED)
            hopeless = {i for j, i in enumerate(unknown) if never[decoded.rows_of(j)].all()}
        kept = [tx for i, tx in enumerate(txs) if i not in hopeless] + self.byzantine_txs
        return self.t.ResponsePrepareProposal(txs=transactions.within_block_limits(kept, request.max_tx_bytes))

    def process_proposal(self, request):
        """Every well-formed block is accepted (bad proofs are rejected row by row when it executes):
        well-formed is at most MAX_BLOCK_ROWS rows, which only the block's bytes decide. The stateless
        stage runs now, on all cores, and is kept for the block's FinalizeBlock."""
        block_ms = _ms(request.time)
        started = time.perf_counter()
        each = [transactions.decode(tx) for tx in request.txs]
        rows = sum(len(values) for _, values in each)
        if rows > transactions.MAX_BLOCK_ROWS:
            log.warning("refusing a proposed block of %d rows (at most %d)", rows, transactions.MAX_BLOCK_ROWS)
            return self.t.ResponseProcessProposal(status=self.t.ResponseProcessProposal.REJECT)
        decoded = transactions.decode_all(request.txs, each)
        with self.lock:
            if self.validator is not None:
                stateless = self.validator.stateless(decoded.proofs, block_ms, fresh=True)
                spent_ms = (time.perf_counter() - started) * 1000
                self._proposals[bytes(request.hash)] = _Proposal(block_ms, decoded, stateless, spent_ms)
                while len(self._proposals) > PROPOSALS_KEPT:
                    self._proposals.pop(next(iter(self._proposals)))
        return self.t.ResponseProcessProposal(status=self.t.ResponseProcessProposal.ACCEPT)

    # ----------------------------------------------------------------------------- execution

    def _next_height(self) -> int:
        return self.height + 1 if self.height else int(self.chain["initialHeight"])

    def finalize_block(self, request):
        try:
            return self._finalize_block(request)
        except FatalError:
            raise
        except Exception as err:  # the database failing, say: this app cannot go on from memory
            self._fatal(f"FinalizeBlock of height {request.height} failed: {type(err).__name__}: {err}")

    def _finalize_block(self, request):
        block_ms = _ms(request.time)
        with self.lock:
            stored = self._read_chain()
            if stored is None or self.chain is None or stored["height"] != self.chain["height"]:
                self._fatal(f"the database's chain is at height {stored and stored['height']}, this app's "
                            f"memory at {self.height}")
            if request.height != self._next_height():
                self._fatal(f"FinalizeBlock of height {request.height}, but this database has committed "
                            f"height {self.height}: a block is executed once, on the state before it")
            self._forget_uncommitted()
            batch_id = f"{self.chain['chainId']}:{request.height}"
            proposal = self._proposals.pop(bytes(request.hash), None)
            if proposal is not None and proposal.block_ms == block_ms:
                decoded, stateless, spent_ms = proposal.decoded, proposal.stateless, proposal.spent_ms
            else:
                decoded, stateless, spent_ms = transactions.decode_all(request.txs), None, 0.0
            started = time.perf_counter()
            result = self.validator.validate(decoded.proofs, batch_id, block_ms, stateless=stateless, fresh=True)
            validate_ms = (time.perf_counter() - started) * 1000 + spent_ms
            self.store.stage(result.outcome)
            app_hash = chain_genesis.next_app_hash(self.app_hash, result.digest, written_state_digest(result.outcome))
            self._pending = _Pending(request.height, result, app_hash)
        tx_results = results.block_tx_results(self.t, decoded, result)
        if self.metrics is not None:
            self.metrics.block_finalized(result.counts, validate_ms / 1000)
            hits, misses = self.memo.hits, self.memo.misses
            self.metrics.memo_lookups(hits - self._memo_seen[0], misses - self._memo_seen[1])
            self._memo_seen = (hits, misses)
        logs.event(log, "block", batch_id=batch_id, height=request.height, txs=len(request.txs),
                   proofs=decoded.proofs.num_rows, counts=result.counts, digest=result.digest,
                   app_hash=app_hash.hex(), validate_ms=round(validate_ms, 1))
        # This node's own timings, as a block event: not part of any hash, read by `bench --target cometbft`.
        timing = self.t.Event(type="stepbatch", attributes=[
            self.t.EventAttribute(key="validate_ms", value=f"{validate_ms:.3f}"),
            self.t.EventAttribute(key="previous_commit_ms", value=f"{self._last_commit_ms:.3f}"),
            self.t.EventAttribute(key="memo_hits", value=str(self.memo.hits)),
            self.t.EventAttribute(key="memo_misses", value=str(self.memo.misses))])
        return self.t.ResponseFinalizeBlock(tx_results=tx_results, app_hash=app_hash, events=[timing])

    def _forget_uncommitted(self) -> None:
        """A block finalized but never committed (its CometBFT went away between the two) left its
        effects staged in the store's cache; the block will be executed again from the database."""
        if self._pending is not None:
            log.warning("height %d was finalized but not committed; forgetting it", self._pending.height)
            self.store.discard_staged()
            self._pending = None

    def commit(self, request):
        with self.lock:
            pending = self._pending
            if pending is None:
                self._fatal("Commit without a finalized block")
            if self.failpoints.get("crash-before-commit") == pending.height:
                log.warning("failpoint: killing this app before committing height %d", pending.height)
                os.kill(os.getpid(), signal.SIGKILL)
            chain = {**self.chain, "height": pending.height, "appHash": pending.app_hash.hex()}

            def record(db, session):
                moved = db.meta.replace_one({"_id": CHAIN_ID, "height": self.height}, chain, session=session)
                if moved.matched_count != 1:
                    raise StaleStateError(f"height {pending.height} was committed by someone else")

            started = time.perf_counter()
            self._pending = None
            try:
                self._commit(pending, record)
            except Exception as err:
                if self.metrics is not None:
                    self.metrics.commit_errors.inc()
                self._fatal(f"the commit of height {pending.height} failed: {type(err).__name__}: {err}")
            if self.failpoints.get("lose-commit-ack") == pending.height:
                self._fatal(f"failpoint: height {pending.height} is committed, but this app acts as if the "
                            f"database's acknowledgement were lost")
            self._last_commit_ms = (time.perf_counter() - started) * 1000
            self.chain = chain
            if self.metrics is not None:
                self.metrics.block_committed(pending.height, self._last_commit_ms / 1000)
        return self.t.ResponseCommit(retain_height=0)

    def _commit(self, pending: _Pending, record) -> None:
        """Commit the block's batch. A write conflict on this validator's own database can only come
        from a transaction its previous process left open when it was killed mid-commit, which the
        server expires after its transaction lifetime; that one is outwaited. A commit sequence that
        moved means another writer uses this database: nothing to wait for."""
        deadline = time.monotonic() + self.validator.config.commit_wait_s
        for attempt in itertools.count():
            try:
                self.store.commit(pending.result.outcome, also=record)
                return
            except StaleStateError as err:
                seq = self.store.db.meta.find_one({"_id": SEQ_ID}) or {}
                if seq.get("seq") != pending.result.outcome.prior.seq or time.monotonic() > deadline:
                    raise
                if attempt == 0:
                    log.warning("height %d: %s; retrying until the conflicting transaction ends", pending.height, err)
                time.sleep(min(0.1 * 2 ** attempt, 2.0))

    # ------------------------------------------------------------------------------- queries

    def query(self, request):
        code, value, message = queries.answer(self, request)
        return self.t.ResponseQuery(code=code, value=value, log=message, height=self.height, codespace="stepbatch")

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
