"""stepbatch as the application of a real 4-validator CometBFT network on loopback (SPEC §8)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import orjson
import pymongo
import pytest

from stepbatch import crypto, mesh
from stepbatch.abci import rpc, transactions
from stepbatch.abci.localnet import cometbft_binary, process_running
from stepbatch.crypto import signing
from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import levels as mesh_levels
from stepbatch.protocol import Code
from stepbatch.store.statedigest import state_digest
from tests.naive import Gates, NaiveValidator, tx_results
from tests.processes import ROOT, wait_until
from tests.strategies import ACCOUNT_KEYS, WORLD_CENTRE, point_in

pytestmark = [pytest.mark.slow, pytest.mark.consensus]

LEVEL = 14
BBOX = "19.0,47.45,19.1,47.55"
SUBDIVIDE_AT = 3
ENV = {"SUBDIVIDE_AT_CLICKS": str(SUBDIVIDE_AT), "STEPBATCH_SIGNATURE_THREADS": "1"}


def _cometbft_or_skip() -> None:
    try:
        cometbft_binary()
    except Exception as err:
        pytest.fail(f"CometBFT is part of the set-up (scripts/bootstrap): {err}")


def localnet(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "stepbatch", "localnet", *args], cwd=ROOT, text=True,
                            capture_output=True, env={**os.environ, **ENV, **(env or {})}, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


class Net:
    def __init__(self, directory: pathlib.Path):
        self.dir = directory
        self.state = json.loads((directory / "localnet.json").read_text())
        self.rpcs = [node["rpc"] for node in self.state["nodes"]]
        self.chain_id = self.state["chain_id"]
        self.genesis = json.loads((directory / "node0" / "config" / "genesis.json").read_text())

    def reload(self) -> None:
        self.state = json.loads((self.dir / "localnet.json").read_text())

    def restart(self, k: int, app_args: list[str], check: bool = True) -> None:
        """Node k's CometBFT and app stopped, then started again with these extra app arguments. With a
        failpoint among them, the node may end before its RPC has answered once: `check=False`."""
        self.kill(k)
        self.reload()
        self.state["nodes"][k]["app_args"] = app_args
        (self.dir / "localnet.json").write_text(json.dumps(self.state, indent=1) + "\n")
        localnet("up", "--dir", str(self.dir), check=check)
        self.reload()

    def kill(self, k: int) -> None:
        """SIGKILL node k's CometBFT and app between two blocks: right after its app has committed one
        (a kill inside a commit is the failpoint's case, `STEPBATCH_ABCI_CRASH_BEFORE_COMMIT`)."""
        url = self.rpcs[k]
        committed = _app_height(url)
        if committed is not None:
            wait_until(lambda: (_app_height(url) or 0) > committed, timeout_s=30, every_s=0.01,
                       what=f"node {k} to commit a block")
        for pid in self.state["nodes"][k]["pids"]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: rpc_height(self.rpcs[k]) is None, what=f"node {k} to stop")

    def database(self, k: int):
        return pymongo.MongoClient(self.state["database"]["uri"], tz_aware=True)[self.state["nodes"][k]["db"]]


def _app_height(url: str) -> int | None:
    try:
        return int(rpc.call(url, "abci_info", timeout_s=5)["response"].get("last_block_height", 0))
    except rpc.RpcError:
        return None


def rpc_height(url: str) -> int | None:
    try:
        return rpc.height(url)
    except rpc.RpcError:
        return None


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    _cometbft_or_skip()
    directory = tmp_path_factory.mktemp("localnet") / "net"
    localnet("up", "--dir", str(directory), "--validators", "4", "--levels", f"{LEVEL - 1}-{LEVEL}", "--bbox", BBOX)
    try:
        yield Net(directory)
    finally:
        localnet("down", "--dir", str(directory), check=False)


def signed_proof(key: bytes, triangle_id: str, nonce: str, at_ms: int, where: tuple | None = None) -> dict:
    lat, lon = where or point_in(triangle_id, (1.0, 1.0, 1.0))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at_ms // 1000)) + f".{at_ms % 1000:03d}Z"
    payload = {"version": "STEP-PROOF-v1", "account": signing.address_of(key), "triangleId": triangle_id,
               "lat": lat, "lon": lon, "accuracy": 7, "timestamp": stamp, "nonce": nonce}
    return {"payload": payload, "signature": crypto.sign_proof(key, payload)}


def signed_tx(key: bytes, triangle_id: str, nonce: str, at_ms: int, where: tuple | None = None) -> bytes:
    return orjson.dumps(signed_proof(key, triangle_id, nonce, at_ms, where))


def proof_batch(*proofs: dict) -> bytes:
    return orjson.dumps(list(proofs))


def submit_round(net: Net, txs: list[bytes], via: int = 0) -> int:
    """Broadcast in order to one node; wait until each admitted one is in a committed block or gone
    from the mempool (CometBFT re-checks the mempool after every block and evicts what CheckTx now
    refuses, e.g. a nonce a block just used). The highest height that holds one of them."""
    admitted = []
    for tx in txs:
        answer = rpc.broadcast(net.rpcs[via], tx)
        assert answer["code"] in (0, int(Code.NONCE_REPLAY)), answer
        if answer["code"] == 0:
            admitted.append(tx)
    heights = [wait_until(_settled(net.rpcs[via], tx), timeout_s=60, what="a committed tx") for tx in admitted]
    assert max(heights) > 0, "no transaction of the round was committed"
    return max(heights)


def _settled(url: str, tx: bytes):
    """A predicate: the height of the block holding `tx`, or -1 once it has been neither there nor in
    the mempool for two blocks (the node indexes a committed tx a moment after the block)."""
    missing_since: list[int] = []

    def settled() -> int | None:
        height = _committed_height(url, tx)
        if height is not None:
            return height
        if base64.b64encode(tx).decode() in (rpc.call(url, "unconfirmed_txs", limit="100")["txs"] or []):
            missing_since.clear()
            return None
        now = rpc.height(url)
        missing_since[:] = missing_since or [now]
        return -1 if now >= missing_since[0] + 2 and _committed_height(url, tx) is None else None
    return settled


def _committed_height(url: str, tx: bytes) -> int | None:
    found = rpc.committed_tx(url, tx)
    return found["height"] if found else None


def interaction_rounds(step: int) -> list[list[bytes]]:
    """Same accounts many times and in several ProofBatches of one round, nonce replays within and
    across batches, a triangle subdivided inside one batch and its children clicked in the next
    round, one-proof transactions among the batches. Each step has accounts of its own, so its rounds
    can start now: they are 15 s apart in proof time (the moratorium is 10 s; CLOCK_DRIFT allows
    120 s ahead)."""
    base = mesh.triangle_at(*WORLD_CENTRE, LEVEL - 1)
    middle = mesh.children(base)[3]  # shares the base's centroid: walking there takes no time
    grandchild = mesh.children(middle)[3]  # level LEVEL + 1: exists only once `middle` subdivides
    k0, k1, k2, k3 = (hashlib.sha256(b"stepbatch-consensus-%d-%d" % (step, k)).digest() for k in range(4))
    t = int(time.time() * 1000)
    return [
        [proof_batch(signed_proof(k0, base, f"s{step}-a", t), signed_proof(k1, base, f"s{step}-b", t)),
         proof_batch(signed_proof(k0, base, f"s{step}-a", t + 1), signed_proof(k2, base, f"s{step}-c", t)),
         signed_tx(k3, middle, f"s{step}-d", t)],
        [proof_batch(signed_proof(k3, middle, f"s{step}-g", t + 15_000),
                     signed_proof(k3, middle, f"s{step}-j", t + 17_000),
                     signed_proof(k0, middle, f"s{step}-e", t + 15_000)),
         signed_tx(k1, middle, f"s{step}-b", t + 15_000), signed_tx(k1, middle, f"s{step}-f", t + 15_000)],
        [proof_batch(signed_proof(k2, middle, f"s{step}-h", t + 30_000),
                     signed_proof(k3, grandchild, f"s{step}-i", t + 30_000))],
    ]


def _query(url: str, path: str) -> dict | None:
    response = rpc.call(url, "abci_query", path=path)["response"]
    return orjson.loads(base64.b64decode(response["value"])) if response.get("value") else None


def check_chain(net: Net, nodes: list[int], up_to: int) -> None:
    """Every block 1..up_to: tx_results on each of `nodes` equal the one-by-one reference applied in
    block order at the block's time, each node's verdict digest is the reference's, and every node
    has the same app hash, the genesis one being SHA-256(`STEP-APP-v1` ‖ canonical app_state)."""
    app_state = net.genesis["app_state"]
    canonical = json.dumps(app_state, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    genesis_hash = hashlib.sha256(b"STEP-APP-v1" + canonical.encode()).hexdigest()
    assert rpc.block(net.rpcs[nodes[0]], 1)["app_hash"].lower() == genesis_hash
    bbox = tuple(float(v) for v in BBOX.split(","))
    existing = [i for level in (LEVEL - 1, LEVEL) for keys in mesh_levels.iter_level_keys(level, bbox)
                for i in mesh_ids.encode_keys(keys).to_pylist()]
    naive = NaiveValidator(existing, Gates(subdivide_at_clicks=SUBDIVIDE_AT))
    for height in range(1, up_to + 1):
        block = rpc.block(net.rpcs[nodes[0]], height)
        decoded = transactions.decode_all(block["txs"])
        expected, digest = naive.validate(decoded.proofs, f"{net.chain_id}:{height}", block["time_ms"])
        want = tx_results(expected, decoded.kinds, decoded.row_count)
        hashes = set()
        for k in nodes:
            results = rpc.block_results(net.rpcs[k], height)
            assert [(r["code"], r["data"]) for r in results["tx_results"]] == want, f"node {k}, height {height}"
            if decoded.kinds:
                assert _query(net.rpcs[k], f"/batch/{height}")["digest"] == digest, f"node {k}, height {height}"
            hashes.add(results["app_hash"].lower())
        assert len(hashes) == 1, f"height {height}: app hashes {hashes}"


def hostile_txs(net: Net) -> dict[str, bytes]:
    """What anyone who reaches a node's RPC may send as a transaction."""
    here = mesh.triangle_at(*WORLD_CENTRE, LEVEL)
    return {
        "not JSON": b"x", "a JSON string": b'"x"',
        "a JSON string naming a file on the node's disk": json.dumps(str(net.dir / "node0" / "config" /
                                                                         "genesis.json")).encode(),
        "[]": b"[]", "null": b"null", "a number": b"17", "invalid UTF-8": b"\xc3\x28\xff",
        "JSON nested 5,000 deep": b"[" * 5000 + b"]" * 5000,
        "200 kB of random bytes": hashlib.shake_256(b"stepbatch-hostile").digest(200_000),
        "a proof with a 1 MB nonce": signed_tx(ACCOUNT_KEYS[1], here, "n" * 1_000_000, int(time.time() * 1000)),
    }


def _honest_proof_committed_everywhere(net: Net, nonce: str, via: int = 0) -> int:
    here = mesh.triangle_at(*WORLD_CENTRE, LEVEL)
    key = hashlib.sha256(nonce.encode()).digest()
    tx = signed_tx(key, here, nonce, int(time.time() * 1000))
    height = submit_round(net, [tx], via=via)
    live = [k for k, url in enumerate(net.rpcs) if rpc_height(url) is not None]
    wait_until(lambda: all((rpc_height(net.rpcs[k]) or 0) >= height + 1 for k in live), timeout_s=60,
               what="every live node to commit the honest proof")
    assert {rpc.committed_tx(net.rpcs[k], tx)["code"] for k in live} == {0}
    assert len({rpc.block_results(net.rpcs[k], height)["app_hash"] for k in live}) == 1
    return height


def test_transactions_that_are_not_proofs_stop_no_node(net):
    before = max(rpc.height(url) for url in net.rpcs)
    for what, tx in hostile_txs(net).items():
        for url in net.rpcs:
            answer = rpc.broadcast(url, tx)
            assert answer["code"] == int(Code.INVALID_PAYLOAD), (what, answer)
            assert answer["log"], what
    # The single byte `x`, sent the way a curl user would.
    for url in net.rpcs:
        with urllib.request.urlopen(f"{url}/broadcast_tx_sync?tx=0x78", timeout=10) as reply:
            assert json.loads(reply.read())["result"]["code"] == int(Code.INVALID_PAYLOAD)
    wait_until(lambda: min(rpc_height(url) or 0 for url in net.rpcs) >= before + 2, timeout_s=60,
               what="every node to go on making blocks")
    assert all(process_running(pid) for node in net.state["nodes"] for pid in node["pids"])
    _honest_proof_committed_everywhere(net, "after-the-hostile-ones")
    # Every app runs glibc's SSE2 build of sin, cos, asin and atan2, whatever the CPU has.
    for node in net.state["nodes"]:
        environ = pathlib.Path(f"/proc/{node['pids'][1]}/environ").read_bytes().split(b"\0")
        assert b"GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2,-FMA" in environ


def test_a_byzantine_proposer_cannot_halt_the_honest_nodes(net, tmp_path):
    injected = list(hostile_txs(net).values())[:-1]
    bytes_file = tmp_path / "byzantine.txs"
    bytes_file.write_text("".join(tx.hex() + "\n" for tx in injected))
    start = rpc.height(net.rpcs[0])
    net.restart(3, ["--byzantine-propose", str(bytes_file)])
    try:
        found = wait_until(lambda: _block_holding(net.rpcs[0], injected[0], start), timeout_s=90,
                           what="a block proposed by the Byzantine node")
        wait_until(lambda: min(rpc_height(url) or 0 for url in net.rpcs) >= found + 1, timeout_s=60,
                   what="every node to go past the Byzantine block")
        block = rpc.block(net.rpcs[0], found)
        rows = [k for k, tx in enumerate(block["txs"]) if tx in injected]
        assert len(rows) == len(injected)
        answers = [rpc.block_results(url, found) for url in net.rpcs]
        assert len({a["app_hash"] for a in answers}) == 1
        for k in rows:
            assert answers[0]["tx_results"][k]["code"] == int(Code.INVALID_PAYLOAD)
            assert answers[0]["tx_results"][k]["data"] == "INVALID_PAYLOAD:0:"
        check_chain(net, [0, 1, 2, 3], found)
    finally:
        net.restart(3, [])
    _honest_proof_committed_everywhere(net, "after-the-byzantine-block")


def _block_holding(url: str, tx: bytes, after: int) -> int | None:
    for height in range(after + 1, rpc.height(url) + 1):
        if tx in rpc.block(url, height)["txs"]:
            return height
    return None


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, body, {"content-type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_gateway_answers_each_phone_once_its_block_is_committed(net):
    apis = [node["api"] for node in net.state["nodes"]]
    where = (WORLD_CENTRE[0] + 0.02, WORLD_CENTRE[1] + 0.03)  # a triangle no other test clicks
    here = mesh.triangle_at(*where, LEVEL)
    key = hashlib.sha256(b"stepbatch-gateway-phone").digest()
    proof = signed_proof(key, here, "gw-1", int(time.time() * 1000), where)
    status, answer = _http("POST", f"{apis[0]}/proof/submit", orjson.dumps(proof))
    assert status == 200 and answer["ok"] is True, answer
    assert answer["reward"] == "0.000122" and answer["balance"] == "0.000122" and answer["clicks"] >= 1
    height = answer["height"]
    assert rpc.committed_tx(net.rpcs[0], orjson.dumps(proof)) is not None or height > 0
    # The same proof again: the node refuses it at admission, and the phone is told why.
    status, again = _http("POST", f"{apis[1]}/proof/submit", orjson.dumps(proof))
    assert status == 409 and again["code"] == "NONCE_REPLAY", again
    forged = {**signed_proof(key, here, "gw-2", int(time.time() * 1000), where), "signature": proof["signature"]}
    status, refused = _http("POST", f"{apis[2]}/proof/submit", orjson.dumps(forged))
    assert status == 401 and refused["code"] == "BAD_SIGNATURE", refused
    # A bulk request whose batch the node refuses for one proof: that one is answered with the node's
    # reason, the others are sent again and committed.
    others = [signed_proof(hashlib.sha256(b"gw-bulk-%d" % k).digest(), here, f"gw-bulk-{k}", int(time.time() * 1000),
                           where) for k in range(3)]
    bulk = [others[0], {**others[1], "signature": others[2]["signature"]}, others[2]]
    request = urllib.request.Request(f"{apis[1]}/proofs", orjson.dumps(bulk), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        rows = [json.loads(line) for line in reply.read().splitlines()]
    assert [row["code"] for row in rows] == ["ACCEPTED", "BAD_SIGNATURE", "ACCEPTED"], rows
    # Reads come from each node's committed state.
    account = signing.address_of(key).lower()
    wait_until(lambda: (rpc_height(net.rpcs[3]) or 0) >= height, timeout_s=60, what="node 3 to commit the block")
    status, read = _http("GET", f"{apis[3]}/account/{account}")
    assert status == 200 and read["result"]["balanceMicro"] == 122, read


def test_blocks_equal_the_one_by_one_reference_on_every_validator(net):
    last = 0
    for step in range(2):
        for txs in interaction_rounds(step):
            last = max(last, submit_round(net, txs))
    check_chain(net, [0, 1, 2, 3], last)
    assert any("\n" in r["data"] for h in range(1, last + 1) for r in rpc.block_results(net.rpcs[0], h)["tx_results"])
    results = [rpc.block_results(net.rpcs[0], h)["tx_results"] for h in range(1, last + 1)]
    seen = {line.split(":")[0] for block in results for r in block for line in r["data"].split("\n")}
    # A replayed nonce is refused either in its block or, once a block has used the nonce, by CheckTx.
    assert {"ACCEPTED", "MORATORIUM"} <= seen, [[(r["data"], r["log"]) for r in block] for block in results if block]
    assert _query(net.rpcs[2], f"/triangle/{mesh.triangle_at(*WORLD_CENTRE, LEVEL - 1)}")["state"] == "subdivided"
    account = _query(net.rpcs[3], f"/account/{signing.address_of(hashlib.sha256(b'stepbatch-consensus-0-0').digest())}")
    assert account["proofCount"] >= 2 and _query(net.rpcs[1], f"/proof/0x{'0' * 40}/none")["used"] is False


def test_a_crashed_validator_catches_up_to_the_same_state(net):
    start = max(rpc.height(url) for url in net.rpcs)
    net.kill(1)
    last = submit_round(net, interaction_rounds(5)[0], via=0)
    wait_until(lambda: min(rpc.height(net.rpcs[k]) for k in (0, 2, 3)) >= last + 2, timeout_s=60,
               what="the three others to go on")

    # Node 1 comes back without the signature memo: it recovers every signature again and agrees.
    net.reload()
    net.state["nodes"][1]["app_args"] = ["--signature-memo", "0"]
    (net.dir / "localnet.json").write_text(json.dumps(net.state, indent=1) + "\n")
    localnet("up", "--dir", str(net.dir))  # restarts node 1 alone
    net.reload()
    wait_until(lambda: (rpc_height(net.rpcs[1]) or 0) >= last + 2, timeout_s=120, what="node 1 to catch up")

    # Node 2's app kills itself between FinalizeBlock and Commit of a coming height.
    crash_at = rpc.height(net.rpcs[0]) + 3
    net.restart(2, ["--failpoint", f"crash-before-commit:{crash_at}"], check=False)
    wait_until(lambda: _app_died(net, 2), timeout_s=90, what=f"node 2's app to stop before committing {crash_at}")
    net.kill(2)
    assert net.database(2).meta.find_one({"_id": "chain"})["height"] == crash_at - 1

    # Node 3's app commits a height, then acts as if the database's acknowledgement were lost: it ends
    # itself, and the handshake finds the height committed.
    lost_at = rpc.height(net.rpcs[0]) + 3
    net.restart(3, ["--failpoint", f"lose-commit-ack:{lost_at}"], check=False)
    wait_until(lambda: _app_died(net, 3), timeout_s=90, what=f"node 3's app to end after committing {lost_at}")
    net.kill(3)
    assert net.database(3).meta.find_one({"_id": "chain"})["height"] == lost_at
    for k in (2, 3):
        net.state["nodes"][k]["app_args"] = []
    (net.dir / "localnet.json").write_text(json.dumps(net.state, indent=1) + "\n")
    localnet("up", "--dir", str(net.dir))
    net.reload()
    later = submit_round(net, interaction_rounds(6)[1], via=3)
    wait_until(lambda: all((rpc_height(url) or 0) >= later for url in net.rpcs), timeout_s=120,
               what="every node to catch up")
    check_chain(net, [0, 1, 2, 3], later)
    assert later > start

    # Two of four down: the chain halts; the two left hold the same committed height and state.
    net.kill(0)
    net.kill(3)
    halted = wait_until(lambda: _stuck(net.rpcs[1], live=2) or _stuck(net.rpcs[2], live=2), timeout_s=180,
                        what="node 1 or 2 to find no quorum")
    assert wait_until(lambda: _same_app_height(net, [1, 2]), timeout_s=60, what="nodes 1 and 2 to agree") == halted
    assert state_digest(net.database(1)) == state_digest(net.database(2))
    localnet("up", "--dir", str(net.dir))
    net.reload()
    wait_until(lambda: min(rpc_height(url) or 0 for url in net.rpcs) > halted, timeout_s=120,
               what="the chain to resume")


def _app_died(net: Net, k: int) -> bool:
    return not process_running(net.state["nodes"][k]["pids"][1])


def _same_app_height(net: Net, nodes: list[int]) -> int | None:
    """The last height every app of `nodes` committed, when they agree on it and on its app hash."""
    infos = [rpc.call(net.rpcs[k], "abci_info")["response"] for k in nodes]
    answers = {(int(info.get("last_block_height", 0)), info.get("last_block_app_hash")) for info in infos}
    return next(iter(answers))[0] if len(answers) == 1 else None


@pytest.fixture(scope="module")
def faulty_net(tmp_path_factory):
    _cometbft_or_skip()
    directory = tmp_path_factory.mktemp("localnet") / "faulty"
    localnet("up", "--dir", str(directory), "--validators", "4", "--levels", f"{LEVEL - 1}-{LEVEL}", "--bbox", BBOX,
             "--byzantine", "3", "--no-gateways")
    try:
        yield Net(directory)
    finally:
        localnet("down", "--dir", str(directory), check=False)


PREVOTE_STEP, COMMIT_STEP = 4, 8  # CometBFT's RoundStepPrevote and RoundStepCommit


def _stuck(url: str, live: int) -> int | None:
    """The last committed height, once the node shows that the next one cannot be committed: it has
    prevoted and sees no more prevotes or precommits than the `live` validators can give (fewer than
    2/3 of the voting power; a live one's vote may not have reached it yet), or it has gone through
    two rounds without a commit (a faulty validator that is still connected prevotes nil, so rounds
    time out one after another)."""
    state = rpc.call(url, "consensus_state")["round_state"]
    height, round_, step = (int(v) for v in state["height/round/step"].split("/"))
    if round_ >= 2:
        return height - 1
    votes = next((v for v in state["height_vote_set"] if int(v["round"]) == round_), None)
    if votes is None or not PREVOTE_STEP <= step < COMMIT_STEP:
        return None
    prevotes, precommits = (re.search(r"\{\d+:([x_]+)\}", votes[kind])[1]
                            for kind in ("prevotes_bit_array", "precommits_bit_array"))
    few = 0 < prevotes.count("x") <= live and precommits.count("x") <= live
    return height - 1 if few and live * 3 <= 2 * len(prevotes) else None


def test_a_faulty_validator_stops_alone_and_two_down_halt_the_chain(faulty_net):
    net = faulty_net
    lat, lon = WORLD_CENTRE
    start = int(time.time() * 1000)
    here, there = (lat, lon), (lat + 0.0009, lon)  # 100 m apart: 5 m/s in 20 s, over the faulty 1.5 m/s limit
    txs = [signed_tx(ACCOUNT_KEYS[0], mesh.triangle_at(*here, LEVEL), "walk-1", start, here),
           signed_tx(ACCOUNT_KEYS[0], mesh.triangle_at(*there, LEVEL), "walk-2", start + 20_000, there)]
    submit_round(net, txs[:1])
    walked = submit_round(net, txs[1:])
    assert rpc.committed_tx(net.rpcs[0], txs[1])["code"] == 0  # the honest majority accepted it

    # Node 3's app called it TOO_FAST: its app hash differs from the block's, and it stops there.
    wait_until(lambda: min(rpc.height(net.rpcs[k]) for k in (0, 1, 2)) >= walked + 3, timeout_s=60,
               what="the honest three to go on")
    stopped = _app_height(net.rpcs[3])
    assert stopped is not None and stopped <= walked + 1
    assert "TOO_FAST" in (pathlib.Path(net.state["nodes"][3]["home"]) / "app.log").read_text()
    check_chain(net, [0, 1, 2], walked + 3)

    # With node 2 down as well, two of four validators are left: the chain halts, nothing diverges.
    net.kill(2)
    halted = wait_until(lambda: _stuck(net.rpcs[0], live=2), timeout_s=120, what="node 0 to find no quorum")
    assert wait_until(lambda: _same_app_height(net, [0, 1]), timeout_s=60, what="nodes 0 and 1 to agree") == halted
    localnet("up", "--dir", str(net.dir))
    net.reload()
    wait_until(lambda: min(rpc_height(net.rpcs[k]) or 0 for k in (0, 1, 2)) > halted + 1, timeout_s=120,
               what="the chain to resume")
    check_chain(net, [0, 1, 2], halted + 1)
    assert (_app_height(net.rpcs[3]) or 0) <= walked + 1
