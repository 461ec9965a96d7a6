"""`stepbatch bench --target cometbft --rpc URL[,URL…]`: signed traffic through a CometBFT network.

Proofs (generated to start a few seconds from now, so their timestamps agree with the blocks' times)
go in transactions of --tx-proofs proofs each (a ProofBatch; 1: one-proof transactions), broadcast on
schedule (open loop at --rate: a transaction leaves when its last proof arrives, as a gateway's batch
would, and one the node refuses for some of its proofs goes again without them) or back to back on
--connections connections (closed loop), round-robin over the given RPC endpoints, with `broadcast_tx_sync` (the CheckTx answer comes back) or `broadcast_tx_async`. A poller
follows the chain on the first endpoint block by block: a proof's latency is its arrival → the moment
its block is seen committed, and its verdict is its line of the transaction's result. The report adds the block
interval and, from the `stepbatch` event each block carries, how much of a block's time went to
stepbatch (validating the block, committing the previous one) and how much to CometBFT.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys
import time

import aiohttp
import numpy as np

from stepbatch.abci.mempool import refused_proofs
from stepbatch.abci.transactions import MAX_BATCH_PROOFS
from stepbatch.cli import UsageError
from stepbatch.tools.benchreport import (
    PROOFS_PER_WALKER_S,
    declare_traffic,
    report_ratios,
    signature_ceiling,
)
from stepbatch.protocol import Code
from stepbatch.tools.httpload import drive
from stepbatch.tools.loadtest import BatchRecord, LoadRun


def measure(args, config) -> dict:
    rpcs = [url.strip().rstrip("/") for url in (args.rpc or "").split(",") if url.strip()]
    if not rpcs:
        raise UsageError("--target cometbft needs --rpc URL[,URL…] (a node's RPC, e.g. from localnet.json)")
    plans = [("closed", None)] + ([("open", args.rate)] if args.mode == "open" else [])
    report: dict = {"runs": [], "blocks": []}
    traffic = None
    for mode, rate in plans:
        traffic, run, blocks = _one_run(args, config, rpcs, mode, rate)
        print(f"cometbft {mode} rate={rate}: {run.throughput_per_s:,.0f} proofs/s committed, "
              f"codes {dict(sorted(run.counts.items()))}", file=sys.stderr)
        report["runs"].append({"config": "n", "repeats": [run.summary()]})
        report["blocks"].append(blocks)
    report["ceiling"] = signature_ceiling(traffic.proofs.slice(0, args.closed_proofs), config.threads, 1)
    report["ratios"] = report_ratios(report)
    return report


def _one_run(args, config, rpcs, mode, rate):
    import datetime as dt

    from stepbatch.tools import gen
    from stepbatch.tools.httpload import arrival_offsets, request_bodies

    if mode == "open":
        walkers, duration, proofs = max(1, int(rate / PROOFS_PER_WALKER_S)), args.duration, None
    else:
        walkers, duration, proofs = max(10, args.closed_proofs // 4), None, args.closed_proofs
    start = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=3 + (proofs or rate * duration) / 20_000)
    # The chain keeps every nonce it has seen: each run's traffic is new (its seed moves with the start time).
    traffic = gen.generate(walkers=walkers, proofs=proofs, duration_s=duration,
                           seed=args.seed * 1_000_003 + int(start.timestamp()), start_time=start)
    declare_traffic(args, config, traffic)
    if not 1 <= args.tx_proofs <= MAX_BATCH_PROOFS:
        raise UsageError(f"--tx-proofs is 1-{MAX_BATCH_PROOFS}, got {args.tx_proofs}")
    bodies = request_bodies(traffic.proofs)
    members = [list(range(i, min(i + args.tx_proofs, len(bodies)))) for i in range(0, len(bodies), args.tx_proofs)]
    offsets = arrival_offsets(traffic.proofs) if mode == "open" else None
    wait_s = int(traffic.proofs.column("received_at")[0].value) / 1000.0 - time.time()
    if wait_s > 0:
        time.sleep(wait_s)
    run, blocks = asyncio.run(_drive(rpcs, bodies, members, offsets, args.connections, args.broadcast, rate))
    return traffic, run, blocks


def _transaction(bodies: list[bytes], rows: list[int], batch: bool) -> bytes:
    return b"[" + b",".join(bodies[i] for i in rows) + b"]" if batch else bodies[rows[0]]


async def _drive(rpcs, bodies, members, offsets, connections, broadcast, rate):
    """Per proof: arrival, commit and refusal times (s from the start) and its verdict code. A
    ProofBatch the node refuses for some of its proofs is sent again without them, as a gateway
    does (`stepbatch.service.chain`)."""
    n = len(bodies)
    batch = max(map(len, members), default=1) > 1
    members = list(members)
    txs = [_transaction(bodies, rows, batch) for rows in members]
    hashes = {hashlib.sha256(tx).hexdigest().upper(): k for k, tx in enumerate(txs)}
    submitted, committed, refused = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    names = [code.name for code in Code]
    codes: list[str | None] = [None] * n
    tx_offsets = None if offsets is None else np.array([offsets[rows[-1]] for rows in members])
    blocks: list[dict] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        start = time.monotonic()
        first_height = await _height(session, rpcs[0])
        done = asyncio.Event()
        poller = asyncio.create_task(_follow(session, rpcs[0], first_height, hashes, members, committed, codes,
                                             blocks, start, done))

        async def send(k: int, again: bool = False) -> None:
            # Each refusal settles at least one proof, so a batch goes again at most once per proof.
            rows = members[k]
            if not again:
                submitted[rows] = time.monotonic() - start if offsets is None else offsets[rows]
            body = {"jsonrpc": "2.0", "id": k, "method": f"broadcast_tx_{broadcast}",
                    "params": {"tx": base64.b64encode(txs[k]).decode()}}
            try:
                async with session.post(rpcs[k % len(rpcs)], json=body) as reply:
                    answer = await reply.json()
                if "error" in answer:  # the node took no decision: e.g. its mempool is full
                    for row in rows:
                        codes[row], refused[row] = "RPC_ERROR", time.monotonic() - start
                    return
                result = answer.get("result") or {}
                code = int(result.get("code", 0))
                if code == 0:
                    return
                # Refused by CheckTx: never in a block. A ProofBatch's log names its refused proofs.
                named = {j: refusal for j, refusal in refused_proofs(result.get("log") or "").items()
                         if j < len(rows)} if batch else {}
                settled = named or dict.fromkeys(range(len(rows)), (code, ""))
                for j, (refused_code, _) in settled.items():
                    name = names[refused_code] if refused_code < len(names) else str(refused_code)
                    codes[rows[j]], refused[rows[j]] = f"REFUSED_{name}", time.monotonic() - start
                rest = [row for j, row in enumerate(rows) if j not in settled]
                if rest and named:
                    members.append(rest)
                    txs.append(_transaction(bodies, rest, batch))
                    hashes[hashlib.sha256(txs[-1]).hexdigest().upper()] = len(txs) - 1
                    await send(len(txs) - 1, again=True)
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                for row in rows:
                    codes[row] = f"ERROR {type(err).__name__}"

        await drive(send, len(txs), start, tx_offsets, connections)
        # Every tx is settled once committed or refused at admission; the rest had 60 s more.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(c is None for c in codes):
            await asyncio.sleep(0.2)
        done.set()
        await poller
    counts: dict[str, int] = {}
    for code in codes:
        key = code or "NOT_COMMITTED"
        counts[key] = counts.get(key, 0) + 1
    verdict = np.where(np.isfinite(committed), committed, refused)
    answered = int(np.isfinite(verdict).sum())
    elapsed = float(np.nanmax(verdict)) if answered else float("nan")
    run = LoadRun(mode="open" if offsets is not None else "closed", offered_per_s=rate, batch_size=0,
                  max_wait_ms=float("nan"), arrival_s=submitted, verdict_s=verdict, committed_s=committed,
                  verdict_rows=answered, accepted=counts.get("ACCEPTED", 0), counts=counts,
                  batches=[BatchRecord(0, n, "blocks", counts.get("ACCEPTED", 0))], stage_s=_stages(blocks),
                  elapsed_s=elapsed)
    return run, _block_summary(blocks)


async def _rpc(session, url: str, method: str, **params):
    async with session.post(url, json={"jsonrpc": "2.0", "id": 0, "method": method, "params": params}) as reply:
        answer = await reply.json()
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


async def _height(session, url: str) -> int:
    return int((await _rpc(session, url, "status"))["sync_info"]["latest_block_height"])


async def _follow(session, url, height, hashes, members, committed, codes, blocks, start, done) -> None:
    """Read every block after `height` as it is committed; settle the proofs of the txs it holds."""
    from stepbatch.abci.rpc import time_ms

    while not done.is_set():
        if await _height(session, url) <= height:
            await asyncio.sleep(0.05)
            continue
        try:  # a node stores a block's results a moment after it reports the block
            results = await _rpc(session, url, "block_results", height=str(height + 1))
        except RuntimeError:
            await asyncio.sleep(0.02)
            continue
        height += 1
        seen = time.monotonic() - start
        block = (await _rpc(session, url, "block", height=str(height)))["block"]
        timing = {attr["key"]: float(attr["value"]) for event in results.get("finalize_block_events") or []
                  if event["type"] == "stepbatch" for attr in event["attributes"]}
        txs = block["data"]["txs"] or []
        proofs = 0
        for tx, outcome in zip(txs, results.get("txs_results") or []):
            k = hashes.get(hashlib.sha256(base64.b64decode(tx)).hexdigest().upper())
            if k is None:
                continue
            rows = members[k]
            lines = base64.b64decode(outcome.get("data") or "").decode().split("\n")
            committed[rows] = seen
            for row, line in zip(rows, lines):
                codes[row] = line.split(":", 1)[0]
            proofs += len(rows)
        blocks.append({"height": height, "time_ms": time_ms(block["header"]["time"]), "txs": len(txs),
                       "proofs": proofs, **timing})


def _stages(blocks: list[dict]) -> dict:
    return {"stepbatch_validate": sum(b.get("validate_ms", 0.0) for b in blocks) / 1000,
            "stepbatch_commit": sum(b.get("previous_commit_ms", 0.0) for b in blocks) / 1000}


def _block_summary(blocks: list[dict]) -> dict:
    full = [b for b in blocks if b["txs"]]
    times = np.array([b["time_ms"] for b in blocks], np.float64)
    interval_s = float(np.mean(np.diff(times)) / 1000) if len(times) > 1 else float("nan")
    stepbatch_ms = np.array([b.get("validate_ms", 0.0) + b.get("previous_commit_ms", 0.0) for b in blocks])
    share = float(stepbatch_ms.sum() / max(np.diff(times).sum(), 1.0)) if len(times) > 1 else float("nan")
    return {"blocks": len(blocks), "blocks_with_txs": len(full), "mean_interval_s": interval_s,
            "blocks_per_s": 1 / interval_s if interval_s == interval_s and interval_s > 0 else float("nan"),
            "mean_txs_per_full_block": float(np.mean([b["txs"] for b in full])) if full else 0.0,
            "mean_proofs_per_full_block": float(np.mean([b.get("proofs", 0) for b in full])) if full else 0.0,
            "stepbatch_share_of_block_time": share}
