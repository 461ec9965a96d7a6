"""The gateway's committer (`stepbatch serve --chain RPC_URL`, SPEC §8): phones in front of a chain.

The service's micro-batcher closes batches as always; here a batch is not committed to a database but
broadcast to a CometBFT node as ProofBatch transactions of at most MAX_BATCH_PROOFS proofs, and each
request is answered once the block holding its proofs is committed, with its line of the block's
results. The node's admission rule (`stepbatch.abci.mempool`) takes a ProofBatch whole or not at all
and names every refused proof, so a refused batch is answered for those proofs with the node's code
and message and sent again without them. A row that breaks a field rule never leaves the gateway: it
is answered INVALID_PAYLOAD here, as the node would.

One follower thread reads every committed block (`block` and `block_results` over the RPC) and settles
the transactions the gateway is waiting for; it is the only reader of the chain's progress, whatever
the number of batches in flight.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import logging
import threading
import time

import numpy as np
import orjson
import pyarrow as pa

from stepbatch import logs
from stepbatch.abci import rpc
from stepbatch.abci.mempool import INTERNAL_ERROR, refused_proofs
from stepbatch.abci.transactions import MAX_BATCH_PROOFS
from stepbatch.protocol import CODE_NAMES, Code
from stepbatch.schema import API_KEYS, VERDICT_SCHEMA
from stepbatch.validator import BatchResult

log = logging.getLogger("stepbatch.service")
COMMIT_WAIT_S = 60.0  # a transaction not in a block by then is answered with an error
POLL_S = 0.05  # how often the chain's height is read while transactions wait (when none do, once a second)


class ChainError(RuntimeError):
    """The node refused or lost a batch in a way that leaves its proofs without a verdict."""


class _Landed:
    """What a committed block says of one transaction."""

    def __init__(self, height: int, lines: list[str], messages: list[str], balances: list[str]):
        self.height, self.lines, self.messages, self.balances = height, lines, messages, balances


class BlockFollower:
    """Reads each committed block once and hands waiting transactions their results."""

    def __init__(self, rpc_url: str):
        self.rpc_url = rpc_url
        self._waiting: dict[str, list[concurrent.futures.Future]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.height = rpc.height(rpc_url)
        self._thread = threading.Thread(target=self._follow, name="stepbatch-chain-follower", daemon=True)
        self._thread.start()

    def wait_for(self, tx_hash: str) -> concurrent.futures.Future:
        """A future for the block results of `tx_hash`; several senders of the same bytes each get one."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._waiting.setdefault(tx_hash, []).append(future)
        self._wake.set()
        return future

    def forget(self, tx_hash: str, future: concurrent.futures.Future) -> None:
        with self._lock:
            waiting = self._waiting.get(tx_hash, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._waiting.pop(tx_hash, None)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                latest = rpc.height(self.rpc_url)
                with self._lock:
                    idle = not self._waiting
                if idle:
                    # Nothing waits: what is registered from now on is broadcast later, so it lands in
                    # a block after `latest`.
                    self.height = latest
                while self.height < latest and not self._stop.is_set():
                    self._settle(self.height + 1)
                    self.height += 1
            except rpc.RpcError as err:  # the node is restarting: try again
                log.warning("following %s: %s", self.rpc_url, err)
                self._stop.wait(1.0)
                continue
            if idle:
                self._wake.wait(1.0)
                self._wake.clear()
            else:
                self._stop.wait(POLL_S)

    def _settle(self, height: int) -> None:
        with self._lock:
            if not self._waiting:
                return
        txs = rpc.block(self.rpc_url, height)["txs"]
        hashes = [hashlib.sha256(tx).hexdigest().upper() for tx in txs]
        with self._lock:
            if not any(h in self._waiting for h in hashes):
                return
        results = rpc.call(self.rpc_url, "block_results", height=str(height))["txs_results"] or []
        for tx_hash, outcome in zip(hashes, results):
            with self._lock:
                futures = self._waiting.pop(tx_hash, [])
            if not futures:
                continue
            lines = base64.b64decode(outcome.get("data") or "").decode().split("\n")
            messages = _messages(outcome.get("log") or "")
            balances = next((attr["value"].split(",") for event in outcome.get("events") or []
                             if event.get("type") == "stepbatch.balances" for attr in event.get("attributes") or []
                             if attr.get("key") == "balance_micro"), [""] * len(lines))
            for future in futures:
                future.set_result(_Landed(height, lines, messages, balances))


class ChainPipeline:
    """`submit(table, batch_id, batch_time_ms)` → a future BatchResult, as `stepbatch.pipeline.Pipeline`
    gives, whose rows come from the chain. The result's `batch_id` is `{chain_id}:{height}` of the
    (last) block that holds its proofs, and it carries `balance_micro` and `height` per row."""

    def __init__(self, rpc_url: str, in_flight: int = 16):
        self.rpc_url = rpc_url.rstrip("/")
        self.chain_id = rpc.call(self.rpc_url, "status", timeout_s=10)["node_info"]["network"]
        self.follower = BlockFollower(self.rpc_url)
        self._pool = concurrent.futures.ThreadPoolExecutor(in_flight, thread_name_prefix="stepbatch-broadcast")
        self.failed = False

    def submit(self, table: pa.Table, batch_id: str, batch_time_ms: int) -> concurrent.futures.Future:
        return self._pool.submit(self._finalize, table)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.follower.close()

    # ------------------------------------------------------------------------------------------

    def _finalize(self, table: pa.Table) -> BatchResult:
        started = time.perf_counter()
        n = table.num_rows
        codes = np.full(n, -1, np.int64)
        messages: list[str | None] = [None] * n
        rewards, clicks = np.zeros(n, np.int64), [None] * n
        balances, heights = np.full(n, -1, np.int64), np.zeros(n, np.int64)
        errors = table.column("payload_error").to_pylist()
        for i, error in enumerate(errors):
            if error is not None:
                codes[i], messages[i] = Code.INVALID_PAYLOAD, error
        documents = _documents(table)
        pending = [i for i in range(n) if codes[i] < 0]
        for start in range(0, len(pending), MAX_BATCH_PROOFS):
            rows = pending[start:start + MAX_BATCH_PROOFS]
            # Each refusal settles at least one proof, so a batch goes again at most once per proof.
            while rows:
                rows = self._send(rows, documents, codes, messages, rewards, clicks, balances, heights)
        verdicts = pa.table({
            "index": pa.array(np.arange(n), pa.int64()), "account": table.column("account"),
            "nonce": table.column("nonce"), "triangle_id": table.column("triangle_id"),
            "code": pa.array([CODE_NAMES[c] for c in codes.tolist()], pa.string()),
            "message": pa.array(messages, pa.string()), "reward_micro": pa.array(rewards, pa.int64()),
            "click_number": pa.array(clicks, pa.int64()), "speed_mps": pa.nulls(n, pa.float64())},
            schema=VERDICT_SCHEMA)
        counts = {name: int(count) for name, count in
                  zip(*np.unique(verdicts.column("code").to_numpy(zero_copy_only=False), return_counts=True))}
        height = int(heights.max()) if n else 0
        result = BatchResult(verdicts=verdicts, digest="", batch_id=f"{self.chain_id}:{height}", counts=counts,
                             timings={"chain": time.perf_counter() - started}, committed=True)
        result.balance_micro, result.height = balances, heights
        return result

    def _send(self, rows, documents, codes, messages, rewards, clicks, balances, heights) -> list[int]:
        """Broadcast `rows` as one transaction and settle them; the rows to send again (the others of a
        batch the node refused for some of its proofs)."""
        tx = documents[rows[0]] if len(rows) == 1 else b"[" + b",".join(documents[i] for i in rows) + b"]"
        tx_hash = hashlib.sha256(tx).hexdigest().upper()
        landed = self.follower.wait_for(tx_hash)
        try:
            answer = rpc.broadcast(self.rpc_url, tx)
        except rpc.RpcError as err:
            if "tx already exists in cache" not in str(err):
                self.follower.forget(tx_hash, landed)
                raise ChainError(f"the node did not take the batch: {err}") from err
            # These very bytes were sent before: their proofs are settled by that transaction, which
            # makes this sending a replay of every proof it accepted.
            earlier = rpc.committed_tx(self.rpc_url, tx)
            if earlier is not None:
                self.follower.forget(tx_hash, landed)
                result = _Landed(earlier["height"], earlier["data"].split("\n"), _messages(earlier["log"]), [])
            else:
                result = self._landed(landed, tx_hash)
            self._settle(rows, result, codes, messages, rewards, clicks, balances, heights, replay=True)
            return []
        code = int(answer.get("code", 0))
        if code != 0:
            self.follower.forget(tx_hash, landed)
            return _refused(rows, code, answer.get("log") or "", codes, messages)
        result = self._landed(landed, tx_hash)
        self._settle(rows, result, codes, messages, rewards, clicks, balances, heights)
        logs.event(log, "tx", tx_hash=tx_hash, height=result.height, proofs=len(rows))
        return []

    def _landed(self, landed: concurrent.futures.Future, tx_hash: str) -> "_Landed":
        try:
            return landed.result(timeout=COMMIT_WAIT_S)
        except concurrent.futures.TimeoutError as err:
            self.follower.forget(tx_hash, landed)
            raise ChainError(f"transaction {tx_hash} was admitted but is in no block after "
                             f"{COMMIT_WAIT_S:g} s") from err

    @staticmethod
    def _settle(rows, result: "_Landed", codes, messages, rewards, clicks, balances, heights, replay=False) -> None:
        for k, i in enumerate(rows):
            name, reward, click = (result.lines[k].split(":") + ["", "", ""])[:3]
            heights[i] = result.height
            if replay and name == Code.ACCEPTED.name:
                codes[i], messages[i] = Code.NONCE_REPLAY, "nonce already used by an accepted proof of this account"
                continue
            codes[i], messages[i] = Code[name], result.messages[k] if k < len(result.messages) else ""
            if replay:
                continue
            rewards[i], clicks[i] = int(reward or 0), int(click) if click else None
            balances[i] = int(result.balances[k]) if k < len(result.balances) and result.balances[k] else -1


def _messages(log_text: str) -> list[str]:
    """A transaction result's messages: a ProofBatch's log is a JSON array of them, a proof's the one."""
    return orjson.loads(log_text) if log_text.startswith("[") else [log_text]


def _refused(rows: list[int], code: int, text: str, codes, messages) -> list[int]:
    """Settle the proofs a CheckTx answer refuses; the rows that may go again. A node that could not
    check the transaction at all (code INTERNAL_ERROR) said nothing of its proofs: an error, not a
    verdict."""
    if code == INTERNAL_ERROR:
        raise ChainError(f"the node could not check the batch: {text[:300]}")
    if len(rows) == 1:
        codes[rows[0]], messages[rows[0]] = code if code < len(CODE_NAMES) else Code.INVALID_PAYLOAD, text
        return []
    named = {k: refusal for k, refusal in refused_proofs(text).items() if k < len(rows)}
    if not named:  # a refusal that names no proof of the batch (an internal error): nothing can go again
        for i in rows:
            codes[i], messages[i] = Code.INVALID_PAYLOAD, text
        return []
    for k, (refused_code, message) in named.items():
        codes[rows[k]], messages[rows[k]] = refused_code, message
    return [i for k, i in enumerate(rows) if k not in named]


def _documents(table: pa.Table) -> list[bytes]:
    """Each row as the JSON bytes of SPEC §2's API shape (what the phone sent, less `received_at`)."""
    columns = {name: table.column(name).to_pylist() for name in (*API_KEYS, "signature")}
    out = []
    for i in range(table.num_rows):
        payload = {API_KEYS[name]: columns[name][i] for name in API_KEYS}
        out.append(orjson.dumps({"payload": payload, "signature": columns["signature"][i]}))
    return out
