"""The ABCI application and server without a network (SPEC §8): hostile transactions, blocks and
queries answered without an exception, complete genesis gates, InitChain on a used database, a lost
commit acknowledgement, the app hash over written state, ProofBatch results and the signature memo."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time

import orjson
import pymongo
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from stepbatch import crypto, mesh
from stepbatch.abci import genesis as chain_genesis
from stepbatch.abci import protos, server, transactions
from stepbatch.abci.app import FatalError, StepApplication
from stepbatch.config import Config
from stepbatch.crypto import signing
from stepbatch.mesh.regions import LevelRegion, Regions
from stepbatch.protocol import Code, reward_micro
from stepbatch.store.mongo import MongoStore
from tests.naive import Gates, NaiveValidator, tx_results
from tests.strategies import WORLD_CENTRE, point_in

pytestmark = pytest.mark.mongo

LEVEL = 14
BBOX = (19.03, 47.49, 19.05, 47.51)
T0_MS = 1_764_000_000_000
KEYS = [hashlib.sha256(b"stepbatch-abci-app-%d" % k).digest() for k in range(4)]

# What anyone may send to a node's RPC as a transaction.
HOSTILE_TXS = {
    "not JSON": b"x",
    "a JSON string": b'"hello"',
    "a JSON string naming a file": json.dumps(__file__).encode(),
    "an empty array": b"[]",
    "null": b"null",
    "a number": b"5",
    "invalid UTF-8": b"\xff\xfe\xfd{",
    "JSON nested 5,000 deep": b"[" * 5000 + b"]" * 5000,
    "200 kB of random bytes": hashlib.shake_256(b"stepbatch").digest(200_000),
    "an array of strings": b'["a", "b"]',
    "an array of 1,001 objects": b"[" + b",".join([b"{}"] * 1001) + b"]",
}


def proof(key: bytes, triangle_id: str, nonce: str, at_ms: int, where=None) -> dict:
    lat, lon = where or point_in(triangle_id, (1.0, 1.0, 1.0))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at_ms // 1000)) + f".{at_ms % 1000:03d}Z"
    payload = {"version": "STEP-PROOF-v1", "account": signing.address_of(key), "triangleId": triangle_id,
               "lat": lat, "lon": lon, "accuracy": 7, "timestamp": stamp, "nonce": nonce}
    return {"payload": payload, "signature": crypto.sign_proof(key, payload)}


def tx(value) -> bytes:
    return orjson.dumps(value)


class Node:
    """One app on a database of its own, driven as CometBFT drives it."""

    def __init__(self, uri: str, name: str, app_state: dict, memo_entries: int = 100_000, **options):
        self.uri, self.name, self.options = uri, name, {"memo_entries": memo_entries, **options}
        self.t = protos.load()
        self.app_state = app_state
        self.store = MongoStore(uri, name, config=Config())
        self.fatal: list[str] = []
        self.app = self._app()

    def _app(self) -> StepApplication:
        return StepApplication(self.store, Config(signature_threads=1), on_fatal=self.fatal.append, **self.options)

    def restart(self, **options) -> None:
        self.app.close()
        self.store.close()
        self.options.update(options)
        self.store = MongoStore(self.uri, self.name, config=Config())
        self.app = self._app()

    def init(self, chain_id: str = "test-chain", initial_height: int = 1):
        return self.app.init_chain(self.t.RequestInitChain(
            chain_id=chain_id, initial_height=initial_height, app_state_bytes=json.dumps(self.app_state).encode()))

    def block(self, height: int, txs: list[bytes], at_ms: int):
        stamp = Timestamp(seconds=at_ms // 1000, nanos=(at_ms % 1000) * 1_000_000)
        block_hash = hashlib.sha256(b"block %d" % height).digest()
        accepted = self.app.process_proposal(self.t.RequestProcessProposal(txs=txs, hash=block_hash, height=height,
                                                                           time=stamp))
        assert accepted.status == self.t.ResponseProcessProposal.ACCEPT
        finalized = self.app.finalize_block(self.t.RequestFinalizeBlock(txs=txs, hash=block_hash, height=height,
                                                                        time=stamp))
        self.app.commit(self.t.RequestCommit())
        return finalized

    def check(self, *txs: bytes, recheck: bool = False):
        kind = self.t.RECHECK if recheck else self.t.NEW
        return self.app.check_tx_many([self.t.RequestCheckTx(tx=raw, type=kind) for raw in txs])

    def query(self, path: str, data: bytes = b""):
        return self.app.query(self.t.RequestQuery(path=path, data=data))

    def close(self) -> None:
        self.app.close()
        self.store.close()


@pytest.fixture
def app_state():
    return chain_genesis.app_state(Regions.of([LevelRegion(LEVEL - 1, LEVEL, BBOX)]), Config(subdivide_at_clicks=3))


@pytest.fixture
def nodes(mongo_uri, app_state):
    made = []

    def make(suffix: str = "", **options) -> Node:
        node = Node(mongo_uri, f"abci_{hashlib.sha256(str(time.monotonic_ns()).encode()).hexdigest()[:10]}{suffix}",
                    app_state, **options)
        made.append(node)
        return node
    yield make
    with pymongo.MongoClient(mongo_uri) as client:
        for node in made:
            node.close()
            client.drop_database(node.name)


def reference(app_state: dict, blocks: list[tuple[list[bytes], int]], chain_id: str = "test-chain"):
    """Per block, the one-by-one reference's (tx results, verdict digest), rows in block order."""
    naive = NaiveValidator(_existing(BBOX), Gates(subdivide_at_clicks=app_state["config"]["subdivide_at_clicks"]))
    out = []
    for height, (txs, at_ms) in enumerate(blocks, start=1):
        decoded = transactions.decode_all(txs)
        rows, digest = naive.validate(decoded.proofs, f"{chain_id}:{height}", at_ms)
        out.append((rows, digest, decoded))
    return out


def _existing(bbox) -> list[str]:
    from stepbatch.mesh import ids as mesh_ids
    from stepbatch.mesh import levels as mesh_levels
    return [i for level in (LEVEL - 1, LEVEL) for keys in mesh_levels.iter_level_keys(level, bbox)
            for i in mesh_ids.encode_keys(keys).to_pylist()]


def interaction_blocks(t: int = T0_MS) -> list[tuple[list[bytes], int]]:
    """Same accounts in several ProofBatches of one block, a nonce replayed across batches, a triangle
    subdivided inside one batch and its child clicked in the next block, hostile bytes in between."""
    base = mesh.triangle_at(*WORLD_CENTRE, LEVEL - 1)
    middle = mesh.children(base)[3]
    k0, k1, k2, k3 = KEYS
    first = [tx([proof(k0, base, "a", t), proof(k1, base, "b", t)]),
             tx([proof(k0, base, "a", t + 1), proof(k2, base, "c", t)]),
             HOSTILE_TXS["not JSON"], tx(proof(k3, middle, "d", t))]
    second = [tx([proof(k3, middle, "g", t + 15_000), proof(k0, middle, "e", t + 15_000)]),
              tx(proof(k1, middle, "b", t + 15_000)), HOSTILE_TXS["an empty array"],
              tx([proof(k2, middle, "h", t + 15_000), proof(k2, middle, "i", t + 16_000)])]
    return [(first, t + 1_000), (second, t + 16_000)]


# ------------------------------------------------------------------------------------ mempool


def test_check_tx_refuses_every_hostile_transaction_with_a_code_and_a_message(nodes):
    node = nodes()
    node.init()
    answers = node.check(*HOSTILE_TXS.values())
    for (what, _), answer in zip(HOSTILE_TXS.items(), answers):
        assert answer.code == int(Code.INVALID_PAYLOAD), what
        assert "a transaction is one proof (a JSON object) or a ProofBatch" in answer.log, (what, answer.log)
    huge_nonce = proof(KEYS[0], mesh.triangle_at(*WORLD_CENTRE, LEVEL), "n" * 1_000_000, int(time.time() * 1000))
    answer, = node.check(tx(huge_nonce))
    assert answer.code == int(Code.INVALID_PAYLOAD) and "nonce" in answer.log


def test_a_proofbatch_is_admitted_whole_or_refused_with_each_bad_proof_named(nodes):
    node = nodes()
    node.init()
    here = mesh.triangle_at(*WORLD_CENTRE, LEVEL)
    now = int(time.time() * 1000)
    good = [proof(KEYS[k], here, f"n{k}", now) for k in range(3)]
    forged = {**good[1], "signature": good[0]["signature"]}
    assert [a.code for a in node.check(tx(good))] == [0]
    refused, = node.check(tx([good[0], forged, good[2], good[2]]))
    assert refused.code == int(Code.BAD_SIGNATURE)
    lines = refused.log.split("\n")
    assert lines[0].startswith("2 of the batch's 4 proofs are refused")
    assert lines[1].startswith("BAD_SIGNATURE proof 2:") and lines[2].startswith("NONCE_REPLAY proof 4:")
    # A re-check keeps an admitted batch while one of its proofs can still be accepted.
    assert [a.code for a in node.check(tx(good), recheck=True)] == [0]


# -------------------------------------------------------------------------------- execution


def test_blocks_of_proofbatches_and_hostile_bytes_equal_the_one_by_one_reference(nodes, app_state):
    node = nodes()
    node.init()
    blocks = interaction_blocks()
    expected = reference(app_state, blocks)
    app_hash = chain_genesis.parse(json.dumps(app_state).encode()).app_hash
    for height, ((txs, at_ms), (rows, digest, decoded)) in enumerate(zip(blocks, expected), start=1):
        finalized = node.block(height, txs, at_ms)
        got = [(r.code, r.data.decode()) for r in finalized.tx_results]
        assert got == tx_results(rows, decoded.kinds, decoded.row_count), height
        assert len(finalized.tx_results) == len(txs)
        assert finalized.app_hash != app_hash
        app_hash = finalized.app_hash
    codes = {line.split(":")[0] for r in finalized.tx_results for line in r.data.decode().split("\n")}
    assert {"ACCEPTED", "INVALID_PAYLOAD", "NONCE_REPLAY"} <= codes
    info = node.app.info(node.t.RequestInfo())
    assert info.last_block_height == 2 and info.last_block_app_hash == app_hash
    assert info.version == node.app.version != protos.COMETBFT_VERSION


def test_the_memo_recovers_each_signature_once_and_changes_no_result(nodes):
    with_memo, without = nodes("m"), nodes("n", memo_entries=0)
    blocks = interaction_blocks(int(time.time() * 1000) - 20_000)  # CheckTx recovers only proofs of now
    hashes = []
    for node in (with_memo, without):
        node.init()
        for txs, _ in blocks:
            node.check(*txs)
        hashes.append([node.block(h, txs, at).app_hash for h, (txs, at) in enumerate(blocks, start=1)])
    assert hashes[0] == hashes[1]
    memo = with_memo.app.memo
    signed = sum(1 for txs, _ in blocks for raw in txs for _ in transactions.decode(raw)[1])
    assert memo.misses <= signed and memo.hits >= 5  # CheckTx recovered, the blocks found them
    assert without.app.memo.hits == 0 and len(without.app.memo) == 0


def test_a_byzantine_block_of_hostile_bytes_becomes_invalid_payload_rows(nodes):
    one, two = nodes("a"), nodes("b")
    txs = list(HOSTILE_TXS.values())
    results = []
    for node in (one, two):
        node.init()
        results.append(node.block(1, txs, T0_MS))
    assert results[0].app_hash == results[1].app_hash
    assert [r.code for r in results[0].tx_results] == [int(Code.INVALID_PAYLOAD)] * len(txs)
    assert all(r.data.decode() == "INVALID_PAYLOAD:0:" for r in results[0].tx_results)


def test_prepare_proposal_counts_bytes_as_cometbft_does_and_drops_hopeless_strangers(nodes):
    node = nodes()
    node.init()
    here = mesh.triangle_at(*WORLD_CENTRE, LEVEL)
    admitted = tx(proof(KEYS[0], here, "p", int(time.time() * 1000)))
    assert node.check(admitted)[0].code == 0
    txs = [admitted, b"x", tx(proof(KEYS[1], here, "q", T0_MS))]
    sizes = [transactions.proto_size(raw) for raw in txs]
    answer = node.app.prepare_proposal(node.t.RequestPrepareProposal(txs=txs, max_tx_bytes=sum(sizes)))
    assert list(answer.txs) == [admitted, txs[2]]  # a stale proof may still be a block's row; b"x" never
    tight = node.app.prepare_proposal(node.t.RequestPrepareProposal(txs=[admitted], max_tx_bytes=sizes[0] - 1))
    assert list(tight.txs) == []


# --------------------------------------------------------------------------------- genesis


def test_an_empty_app_state_gives_every_node_the_spec_defaults_whatever_its_environment(nodes, monkeypatch):
    monkeypatch.setenv("PROOF_SPEED_LIMIT_MPS", "1.5")
    monkeypatch.setenv("SUBDIVIDE_AT_CLICKS", "2")
    node = nodes()
    node.app.local = Config.from_env()
    node.app_state = {}
    node.init()
    config = node.app.validator.config
    assert (config.speed_limit_mps, config.subdivide_at_clicks, config.moratorium_ms) == (15.0, 11, 10_000)
    parsed = chain_genesis.parse(b"{}")
    assert set(json.loads(parsed.canonical)["config"]) == set(chain_genesis.GATES)
    assert chain_genesis.parse(b'{"config": {"speed_limit_mps": 15}}').app_hash == parsed.app_hash


def test_init_chain_refuses_a_database_that_already_holds_state(nodes):
    node = nodes()
    node.store.add_triangles([mesh.triangle_at(*WORLD_CENTRE, LEVEL)])
    with pytest.raises(chain_genesis.GenesisError, match="already holds documents in triangles"):
        node.init()


def test_a_chain_may_start_at_another_initial_height(nodes):
    node = nodes()
    node.init(initial_height=100)
    finalized = node.block(100, [tx(proof(KEYS[0], mesh.triangle_at(*WORLD_CENTRE, LEVEL), "h", T0_MS))], T0_MS)
    assert finalized.tx_results[0].code == 0
    assert node.app.info(node.t.RequestInfo()).last_block_height == 100


# ------------------------------------------------------------------------- honest restarts


def test_a_commit_whose_acknowledgement_is_lost_is_recovered_from_the_database(nodes):
    node = nodes(failpoints={"lose-commit-ack": 1})
    node.init()
    txs = [tx(proof(KEYS[0], mesh.triangle_at(*WORLD_CENTRE, LEVEL), "ack", T0_MS))]
    with pytest.raises(FatalError):
        node.block(1, txs, T0_MS)
    assert "acknowledgement were lost" in node.fatal[-1]
    lost = node.app
    # CometBFT, unsure, would replay height 1: this app's memory says 0, the database 1.
    with pytest.raises(FatalError, match="database's chain is at height 1"):
        lost.finalize_block(node.t.RequestFinalizeBlock(txs=txs, height=1, time=Timestamp(seconds=T0_MS // 1000)))
    node.restart(failpoints={})
    info = node.app.info(node.t.RequestInfo())
    assert info.last_block_height == 1 and info.last_block_app_hash
    with pytest.raises(FatalError, match="a block is executed once"):
        node.app.finalize_block(node.t.RequestFinalizeBlock(txs=txs, height=1,
                                                            time=Timestamp(seconds=T0_MS // 1000)))
    assert node.block(2, [], T0_MS + 1000).app_hash


def test_a_node_whose_stored_balance_was_altered_is_caught_at_its_next_block(nodes):
    honest, altered = nodes("h"), nodes("x")
    here = mesh.triangle_at(*WORLD_CENTRE, LEVEL)
    first = [tx(proof(KEYS[0], here, "1", T0_MS))]
    second = [tx(proof(KEYS[0], here, "2", T0_MS + 20_000))]
    for node in (honest, altered):
        node.init()
        node.block(1, first, T0_MS)
    altered.store.db.accounts.update_one({"_id": signing.address_of(KEYS[0]).lower()},
                                         {"$inc": {"balanceMicro": 1_000_000}})
    altered.restart()
    results = [node.block(2, second, T0_MS + 20_000) for node in (honest, altered)]
    assert [r.tx_results[0].data for r in results][0] == results[1].tx_results[0].data  # same verdicts
    assert results[0].app_hash != results[1].app_hash  # but not the same state


# -------------------------------------------------------------------------------- queries


def test_queries_answer_bad_paths_with_a_code_and_find_a_proof_inside_its_batch(nodes):
    node = nodes()
    node.init()
    here = mesh.triangle_at(*WORLD_CENTRE, LEVEL)
    account = signing.address_of(KEYS[0])
    node.block(1, [tx([proof(KEYS[1], here, "x", T0_MS), proof(KEYS[0], here, "a/b", T0_MS)])], T0_MS)
    found = orjson.loads(node.query(f"/proof/{account}/a/b").value)
    assert found["used"] is True and found["rows"] == [
        {"height": 1, "row": 1, "code": "ACCEPTED", "message": found["rows"][0]["message"]}]
    assert orjson.loads(node.query(f"/proof/{account}", data=b"a/b").value)["used"] is True
    assert orjson.loads(node.query(f"/account/{account}").value)["balanceMicro"] == reward_micro(LEVEL)
    for path in ("", "/", "/nothing", "/account/0x12", "/triangle/STEP-TRI-v1:nope", "/batch/-1",
                 "/batch/99999999999999999999", "/" + "a" * 100_000, "/proof/\x00"):
        answer = node.query(path)
        assert answer.code != 0 and answer.log, path
    assert node.query("/batch/7").code == 1


# ------------------------------------------------------------------------------ the server


def _frame(message) -> bytes:
    data = message.SerializeToString()
    return server.encode_uvarint(len(data)) + data


def _read(sock: socket.socket, t, count: int) -> list:
    buffer, out = bytearray(), []
    while len(out) < count:
        data = sock.recv(1 << 16)
        assert data, "the server closed the connection"
        buffer += data
        out += [t.Response.FromString(body) for body in server.split_messages(buffer)]
    return out


def test_the_socket_server_answers_every_request_type_without_an_exception(nodes):
    node = nodes()
    node.init()
    t = node.t
    listener = server.serve(node.app, "tcp://127.0.0.1:0")
    thread = threading.Thread(target=listener.serve_forever, daemon=True)
    thread.start()
    try:
        requests = [t.Request(echo=t.RequestEcho(message="hi")), t.Request(info=t.RequestInfo()),
                    *[t.Request(check_tx=t.RequestCheckTx(tx=raw)) for raw in HOSTILE_TXS.values()],
                    t.Request(query=t.RequestQuery(path="/\xff" * 10)),
                    t.Request(prepare_proposal=t.RequestPrepareProposal(txs=list(HOSTILE_TXS.values()),
                                                                        max_tx_bytes=1 << 20)),
                    t.Request(process_proposal=t.RequestProcessProposal(txs=list(HOSTILE_TXS.values()))),
                    t.Request(extend_vote=t.RequestExtendVote()),
                    t.Request(verify_vote_extension=t.RequestVerifyVoteExtension(vote_extension=b"\xff" * 64)),
                    t.Request(list_snapshots=t.RequestListSnapshots()),
                    t.Request(offer_snapshot=t.RequestOfferSnapshot(app_hash=b"x")),
                    t.Request(load_snapshot_chunk=t.RequestLoadSnapshotChunk(height=5)),
                    t.Request(apply_snapshot_chunk=t.RequestApplySnapshotChunk(chunk=b"junk")),
                    t.Request(flush=t.RequestFlush())]
        with socket.create_connection(listener.server_address[:2], timeout=30) as sock:
            sock.sendall(b"".join(_frame(r) for r in requests))
            answers = _read(sock, t, len(requests))
        kinds = [a.WhichOneof("value") for a in answers]
        assert kinds == [r.WhichOneof("value") for r in requests]
        assert all(a.check_tx.code == int(Code.INVALID_PAYLOAD) for a in answers if a.HasField("check_tx"))
        assert next(a for a in answers if a.HasField("prepare_proposal")).prepare_proposal.txs == []
        assert not any(a.HasField("exception") for a in answers)
    finally:
        listener.shutdown()
        listener.server_close()


def test_the_app_counts_blocks_verdicts_admissions_and_memo_lookups_in_its_metrics(nodes):
    from prometheus_client import CollectorRegistry

    from stepbatch.abci.metrics import AppMetrics

    registry = CollectorRegistry()
    node = nodes(metrics=AppMetrics(registry))
    node.init()
    here = mesh.triangle_at(*WORLD_CENTRE, LEVEL)
    now = int(time.time() * 1000)
    txs = [tx(proof(KEYS[0], here, "m1", now)), b"x"]
    node.check(*txs)
    node.block(1, txs, now)
    value = registry.get_sample_value
    assert value("stepbatch_abci_height") == 1
    assert value("stepbatch_abci_proofs_total", {"code": "ACCEPTED"}) == 1
    assert value("stepbatch_abci_proofs_total", {"code": "INVALID_PAYLOAD"}) == 1
    assert value("stepbatch_abci_check_tx_total", {"result": "admitted"}) == 1
    assert value("stepbatch_abci_check_tx_total", {"result": "refused"}) == 1
    assert value("stepbatch_abci_signature_memo_hits_total") == 1  # CheckTx recovered it, the block did not


def test_info_asked_between_finalize_and_commit_changes_nothing(nodes):
    node = nodes()
    node.init()
    txs = [tx(proof(KEYS[0], mesh.triangle_at(*WORLD_CENTRE, LEVEL), "i", T0_MS))]
    node.app.finalize_block(node.t.RequestFinalizeBlock(txs=txs, height=1, time=Timestamp(seconds=T0_MS // 1000)))
    assert node.app.info(node.t.RequestInfo()).last_block_height == 0  # an RPC client's abci_info
    node.app.commit(node.t.RequestCommit())
    assert not node.fatal and node.app.info(node.t.RequestInfo()).last_block_height == 1


def test_a_block_finalized_but_never_committed_is_executed_again_from_the_database(nodes):
    node, twin = nodes("a"), nodes("b")
    here = mesh.triangle_at(*WORLD_CENTRE, LEVEL)
    txs = [tx(proof(KEYS[0], here, "once", T0_MS))]
    stamp = Timestamp(seconds=T0_MS // 1000)
    for each in (node, twin):
        each.init()
    # CometBFT went away after FinalizeBlock; its handshake asks Info, then executes the block again.
    first = node.app.finalize_block(node.t.RequestFinalizeBlock(txs=txs, height=1, time=stamp))
    assert node.app.info(node.t.RequestInfo()).last_block_height == 0
    again = node.block(1, txs, T0_MS)
    assert [r.data for r in again.tx_results] == [r.data for r in first.tx_results] == [b"ACCEPTED:122:1"]
    assert again.app_hash == first.app_hash == twin.block(1, txs, T0_MS).app_hash


def test_a_block_of_more_rows_than_a_block_may_hold_is_refused_and_never_proposed(nodes):
    node = nodes()
    node.init()
    empty_batch = b"[" + b",".join([b"{}"] * transactions.MAX_BATCH_PROOFS) + b"]"
    txs = [empty_batch] * (transactions.MAX_BLOCK_ROWS // transactions.MAX_BATCH_PROOFS + 1)
    answer = node.app.process_proposal(node.t.RequestProcessProposal(txs=txs, hash=b"big", height=1,
                                                                     time=Timestamp(seconds=T0_MS // 1000)))
    assert answer.status == node.t.ResponseProcessProposal.REJECT
    kept = transactions.within_block_limits(txs, 1 << 30)
    assert len(kept) == len(txs) - 1
    assert node.block(1, kept[:2], T0_MS).tx_results[0].code == 0  # what fits is an ordinary block
