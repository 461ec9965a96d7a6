"""A local validator network: N CometBFT nodes and their stepbatch apps on loopback (SPEC §8).

`up` makes the node directories with `cometbft testnet`, gives every node its own loopback ports, puts
the genesis app_state (the mesh to seed and the gates in force) into each genesis, starts one database
server (unless MONGODB_URI is set; each validator has a database of its own on it, named after the
chain and the node, so two networks on one server never share one), every app and every node in the
background, writes `DIR/localnet.json` and returns once every RPC answers. Run on a directory that has
a network already, it restarts what is not running and changes nothing else; a node's `app_args` in
`localnet.json` are passed to its app when it is (re)started.

The CometBFT settings it writes, for throughput on one machine (README, "Run a validator network"):
`timeout_commit` 500 ms and empty blocks every 2 s; the mempool re-checks after every block (cheap:
the app re-checks only drift and nonces) and holds 20,000 transactions or 256 MB; p2p send and receive
rates of 50 MB/s (the default 5 MB/s caps gossip of ProofBatches); blocks of at most 16 MB; transactions
indexed by hash only (`kv`, so `/tx` finds one), RPC bodies up to 4 MB (a 1 MiB transaction in
base64), CometBFT's Prometheus metrics on a port of each node's
own, and logs at `error` but for block execution.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from stepbatch.abci import genesis as chain_genesis
from stepbatch.abci.protos import COMETBFT_MODULE, COMETBFT_VERSION
from stepbatch.config import Config
from stepbatch.mesh.regions import Regions
from stepbatch.store.base import StoreError

STATE_FILE = "localnet.json"
FAULTY_SPEED_LIMIT_MPS = 1.5  # a byzantine node's app: a tenth of the default speed limit
TIMEOUT_COMMIT = "500ms"
EMPTY_BLOCKS_INTERVAL = "2s"
MEMPOOL_SIZE = 20_000
MEMPOOL_MAX_TXS_BYTES = 256 << 20
P2P_RATE_BYTES_S = 50 << 20
BLOCK_MAX_BYTES = 16 << 20
LOG_LEVEL = "state:info,*:error"
RPC_MAX_BODY_BYTES = 4_000_000  # a transaction of the mempool's 1 MiB limit, base64 in JSON-RPC


class LocalnetError(StoreError):
    """The network cannot be made, started or reached; the message says why."""


def cometbft_binary() -> str:
    found = shutil.which("cometbft", path=os.pathsep.join([str(pathlib.Path(sys.prefix) / "bin"),
                                                            os.environ.get("PATH", "")]))
    if found is None:
        raise LocalnetError(f"cometbft is not installed: run scripts/bootstrap, or `GOBIN={sys.prefix}/bin go "
                            f"install {COMETBFT_MODULE}/cmd/cometbft@{COMETBFT_VERSION}`")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_running(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not running
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _set(text: str, section: str | None, key: str, value: str) -> str:
    """config.toml with `key = value` in `[section]` (None: the top level)."""
    parts = re.split(r"(?m)^(\[[^\]]+\])\s*$", text)
    index = 0 if section is None else parts.index(f"[{section}]") + 1
    body, count = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {value}", parts[index], count=1)
    if count != 1:
        raise LocalnetError(f"config.toml has no {key} in [{section or 'top level'}]")
    parts[index] = body
    return "".join(parts)


@dataclasses.dataclass
class Node:
    index: int
    home: str
    node_id: str
    p2p_port: int
    rpc_port: int
    app_port: int
    db: str
    byzantine: bool = False
    pids: list = dataclasses.field(default_factory=lambda: [None, None])  # [cometbft, app]
    metrics_port: int = 0  # CometBFT's Prometheus metrics
    app_metrics_port: int = 0  # the app's
    app_args: list = dataclasses.field(default_factory=list)
    api_port: int = 0  # the node's gateway (`stepbatch serve --chain`); 0: none
    gateway_pid: int | None = None

    @property
    def rpc(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def api(self) -> str | None:
        return f"http://127.0.0.1:{self.api_port}" if self.api_port else None

    @property
    def metrics(self) -> dict:
        return {"cometbft": f"http://127.0.0.1:{self.metrics_port}/metrics",
                "app": f"http://127.0.0.1:{self.app_metrics_port}/metrics"}


class Localnet:
    def __init__(self, directory: str | os.PathLike):
        self.dir = pathlib.Path(directory).resolve()
        self.state_path = self.dir / STATE_FILE

    # ----------------------------------------------------------------------------- state file

    def load(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            raise LocalnetError(f"{self.dir} has no local network ({STATE_FILE} is missing); "
                                f"run `stepbatch localnet up --dir {self.dir}` first") from None

    def _save(self, state: dict) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        tmp.replace(self.state_path)

    def nodes(self, state: dict) -> list[Node]:
        return [Node(**{k: v for k, v in node.items() if k not in ("rpc", "metrics", "api")})
                for node in state["nodes"]]

    # ------------------------------------------------------------------------------------ up

    def up(self, validators: int, regions: Regions, config: Config, mongodb_uri: str | None,
           byzantine: list[int], wait_s: float = 120.0, gateways: bool = True) -> dict:
        if self.state_path.exists():
            state = self.load()
        else:
            state = self._create(validators, regions, config, mongodb_uri, byzantine, gateways)
        self._start_missing(state)
        self._wait_for_rpc(state, wait_s)
        self._start_gateways(state)
        return state

    def _create(self, validators: int, regions: Regions, config: Config, mongodb_uri: str | None,
                byzantine: list[int], gateways: bool) -> dict:
        if validators < 1:
            raise LocalnetError("a network needs at least one validator")
        if any(not 0 <= k < validators for k in byzantine):
            raise LocalnetError(f"--byzantine names nodes 0-{validators - 1}")
        self.dir.mkdir(parents=True, exist_ok=True)
        if any(self.dir.iterdir()):
            raise LocalnetError(f"{self.dir} is not empty and holds no {STATE_FILE}")
        binary = cometbft_binary()
        made = subprocess.run([binary, "testnet", "--v", str(validators), "--o", str(self.dir)],
                              capture_output=True, text=True)
        if made.returncode != 0:
            raise LocalnetError(f"cometbft testnet failed: {made.stderr.strip()[-500:]}")
        homes = [self.dir / f"node{k}" for k in range(validators)]
        # testnet lists every node as `{id}@node{k}:26656` in each node's persistent peers.
        peers = re.search(r'persistent_peers = "([^"]*)"', (homes[0] / "config" / "config.toml").read_text())[1]
        node_ids = [peer.split("@")[0] for peer in peers.split(",")]
        chain_id = json.loads((homes[0] / "config" / "genesis.json").read_text())["chain_id"]
        nodes = [Node(index=k, home=str(home), node_id=node_ids[k], p2p_port=free_port(), rpc_port=free_port(),
                      app_port=free_port(), db=database_name(chain_id, k), byzantine=k in byzantine,
                      metrics_port=free_port(), app_metrics_port=free_port(),
                      api_port=free_port() if gateways else 0)
                 for k, home in enumerate(homes)]
        app_state = chain_genesis.app_state(regions, config)
        for node in nodes:
            self._configure(node, nodes)
            path = pathlib.Path(node.home) / "config" / "genesis.json"
            document = json.loads(path.read_text())
            document["app_state"] = app_state
            document["consensus_params"]["version"]["app"] = "1"
            document["consensus_params"]["block"]["max_bytes"] = str(BLOCK_MAX_BYTES)
            path.write_text(json.dumps(document, indent=2) + "\n")
        state = {"chain_id": chain_id, "database": {"uri": mongodb_uri, "pid": None, "port": None},
                 "nodes": [self._node_json(node) for node in nodes]}
        self._save(state)
        return state

    def _configure(self, node: Node, nodes: list[Node]) -> None:
        path = pathlib.Path(node.home) / "config" / "config.toml"
        text = path.read_text()
        peers = ",".join(f"{other.node_id}@127.0.0.1:{other.p2p_port}" for other in nodes if other is not node)
        for section, key, value in (
                (None, "proxy_app", f'"tcp://127.0.0.1:{node.app_port}"'), (None, "moniker", f'"node{node.index}"'),
                ("rpc", "laddr", f'"tcp://127.0.0.1:{node.rpc_port}"'),
                ("p2p", "laddr", f'"tcp://127.0.0.1:{node.p2p_port}"'), ("p2p", "persistent_peers", f'"{peers}"'),
                ("p2p", "addr_book_strict", "false"), ("p2p", "allow_duplicate_ip", "true"),
                ("consensus", "timeout_commit", f'"{TIMEOUT_COMMIT}"'),
                ("consensus", "create_empty_blocks_interval", f'"{EMPTY_BLOCKS_INTERVAL}"'),
                (None, "log_level", f'"{LOG_LEVEL}"'),
                ("mempool", "size", str(MEMPOOL_SIZE)), ("mempool", "max_txs_bytes", str(MEMPOOL_MAX_TXS_BYTES)),
                ("p2p", "send_rate", str(P2P_RATE_BYTES_S)), ("p2p", "recv_rate", str(P2P_RATE_BYTES_S)),
                ("tx_index", "indexer", '"kv"'), ("rpc", "max_body_bytes", str(RPC_MAX_BODY_BYTES)),
                ("instrumentation", "prometheus", "true"),
                ("instrumentation", "prometheus_listen_addr", f'"127.0.0.1:{node.metrics_port}"')):
            text = _set(text, section, key, value)
        path.write_text(text)

    @staticmethod
    def _node_json(node: Node) -> dict:
        return {**dataclasses.asdict(node), "rpc": node.rpc, "metrics": node.metrics, "api": node.api}

    # ------------------------------------------------------------------------------ processes

    def _start_missing(self, state: dict) -> None:
        database = state["database"]
        if not database["uri"] or (database["pid"] and not process_running(database["pid"])):
            self._start_database(database)
        nodes = self.nodes(state)
        for node in nodes:
            cometbft_pid, app_pid = node.pids
            if process_running(cometbft_pid) and process_running(app_pid):
                continue
            self._stop_pids([cometbft_pid, app_pid])
            node.pids = [None, self._start_app(node, state)]
            node.pids[0] = self._start_node(node)
        state["nodes"] = [self._node_json(node) for node in nodes]
        self._save(state)

    def _spawn(self, args: list[str], log_path: pathlib.Path) -> subprocess.Popen:
        with open(log_path, "ab") as log:
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=self.dir)

    def _start_database(self, database: dict) -> None:
        port = database.get("port") or free_port()
        process = self._spawn([sys.executable, "-m", "stepbatch", "db", "serve", "--port", str(port),
                               "--data-dir", str(self.dir / "db")], self.dir / "db.log")
        database.update(pid=process.pid, port=port, uri=f"mongodb://127.0.0.1:{port}/?directConnection=true")
        self._wait_for_port(port, "the database server", self.dir / "db.log", process)

    def _start_app(self, node: Node, state: dict) -> int:
        args = [sys.executable, "-m", "stepbatch", "--mongodb-uri", state["database"]["uri"], "abci",
                "--address", f"tcp://127.0.0.1:{node.app_port}", "--db", node.db,
                "--metrics-address", f"127.0.0.1:{node.app_metrics_port}", *node.app_args]
        if node.byzantine:
            args += ["--faulty-speed-limit", str(FAULTY_SPEED_LIMIT_MPS)]
        log_path = pathlib.Path(node.home) / "app.log"
        process = self._spawn(args, log_path)
        self._wait_for_port(node.app_port, f"node {node.index}'s app", log_path, process)
        return process.pid

    def _start_gateways(self, state: dict) -> None:
        """One `stepbatch serve --chain` per node that has an API port and no live gateway: the phones' front
        door, reading the node's committed state from its database."""
        nodes = self.nodes(state)
        for node in nodes:
            if not node.api_port or process_running(node.gateway_pid):
                continue
            log_path = pathlib.Path(node.home) / "gateway.log"
            process = self._spawn([sys.executable, "-m", "stepbatch", "--mongodb-uri", state["database"]["uri"],
                                   "serve", "--chain", node.rpc, "--db", node.db, "--port", str(node.api_port)],
                                  log_path)
            node.gateway_pid = process.pid
            self._wait_for_port(node.api_port, f"node {node.index}'s gateway", log_path, process)
        state["nodes"] = [self._node_json(node) for node in nodes]
        self._save(state)

    def _start_node(self, node: Node) -> int:
        return self._spawn([cometbft_binary(), "start", "--home", node.home],
                           pathlib.Path(node.home) / "cometbft.log").pid

    @staticmethod
    def _wait_for_port(port: int, what: str, log_path: pathlib.Path, process: subprocess.Popen,
                       wait_s: float = 120.0) -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-800:] if log_path.exists() else ""
                raise LocalnetError(f"{what} exited with code {process.returncode}; its log {log_path}:\n{tail}")
            with socket.socket() as probe:
                probe.settimeout(0.5)
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise LocalnetError(f"{what} did not open port {port} within {wait_s:g} s; see {log_path}")

    def _wait_for_rpc(self, state: dict, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        for node in state["nodes"]:
            while rpc_get(node["rpc"], "status") is None:
                stopped = [name for name, pid in zip(("CometBFT", "app"), node["pids"]) if not process_running(pid)]
                if stopped:
                    log_path = pathlib.Path(node["home"]) / ("cometbft.log" if stopped[0] == "CometBFT" else "app.log")
                    tail = log_path.read_text(errors="replace")[-800:] if log_path.exists() else ""
                    raise LocalnetError(f"node {node['index']}'s {stopped[0]} exited before its RPC answered; its "
                                        f"log {log_path}:\n{tail}")
                if time.monotonic() > deadline:
                    raise LocalnetError(f"node {node['index']}'s RPC {node['rpc']} does not answer; see "
                                        f"{node['home']}/cometbft.log")
                time.sleep(0.2)

    @staticmethod
    def _stop_pids(pids, wait_s: float = 30.0) -> None:
        live = [pid for pid in pids if process_running(pid)]
        for pid in live:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while any(process_running(pid) for pid in live) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in live:
            if process_running(pid):
                os.kill(pid, signal.SIGKILL)

    # ----------------------------------------------------------------------- status and down

    def status(self) -> dict:
        state = self.load()
        nodes = []
        for node in state["nodes"]:
            answer = rpc_get(node["rpc"], "status")
            info = (answer or {}).get("sync_info", {})
            nodes.append({"index": node["index"], "rpc": node["rpc"],
                          "running": [process_running(p) for p in node["pids"]], "api": node.get("api"),
                          "gateway_running": process_running(node.get("gateway_pid")),
                          "byzantine": node["byzantine"], "height": int(info["latest_block_height"]) if info else None,
                          "app_hash": info.get("latest_app_hash"), "catching_up": info.get("catching_up")})
        return {"chain_id": state["chain_id"], "nodes": nodes}

    def down(self, node_index: int | None = None) -> list[int]:
        state = self.load()
        stopped = []
        for node in state["nodes"]:
            if node_index is None or node["index"] == node_index:
                self._stop_pids([node.get("gateway_pid"), *node["pids"]])
                stopped.append(node["index"])
        if node_index is None and state["database"]["pid"]:
            self._stop_pids([state["database"]["pid"]])
        elif node_index is not None and not stopped:
            raise LocalnetError(f"the network has nodes 0-{len(state['nodes']) - 1}, not {node_index}")
        return stopped


def database_name(chain_id: str, index: int) -> str:
    """Node `index`'s database: the chain's and the node's own (MongoDB names: no `/\\. "$`, ≤ 63 bytes)."""
    chain = re.sub(r"[^A-Za-z0-9_-]", "_", chain_id)[:40]
    return f"localnet_{chain}_node{index}"


def rpc_get(rpc: str, method: str, timeout_s: float = 5.0, **params) -> dict | None:
    """The `result` of a CometBFT RPC call over HTTP GET, or None when the node does not answer."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    try:
        with urllib.request.urlopen(f"{rpc}/{method}" + (f"?{query}" if query else ""), timeout=timeout_s) as reply:
            return json.loads(reply.read()).get("result")
    except (urllib.error.URLError, OSError, ValueError):
        return None
