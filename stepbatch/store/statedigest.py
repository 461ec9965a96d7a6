"""What a database holds, made comparable: a canonical digest of the state and the state re-derived
from the stored verdicts.

`state_digest` lets two validators (or two runs) check that they hold the same declared regions,
triangles, accounts, used nonces and verdicts, whatever order the documents were written in.
`replay_event_log` recomputes balances, clicks, proof counts and used nonces from the accepted rows of
the `verdicts` chunks alone, and `event_log_mismatches` lists every way the stored state differs from
that: a lost click, a reused nonce, a nonce without its proof or a double reward all show up there.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import json

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from bson import ObjectId
from bson.datetime_ms import DatetimeMS
from bson.int64 import Int64

from stepbatch import mesh
from stepbatch.ingest.timestamps import epoch_ms
from stepbatch.mesh.regions import Regions
from stepbatch.protocol import MAX_LEVEL, Code
from stepbatch.store import layout
from stepbatch.store.database import read_regions

DIGEST_COLLECTIONS = ("triangles", "accounts", "nonces", "verdicts")
# Wall-clock times of the writes: two validators committing the same batches differ only in these.
WALL_CLOCK_FIELDS = frozenset({"createdAt", "updatedAt"})


def state_digest(db) -> str:
    """Lowercase hex SHA-256 over the triangles, accounts and events of `db`.

    Each document is reduced to a canonical text (sorted keys, typed values, floats exact) without its
    write times and without an ObjectId `_id` (which only says where and when it was inserted); the
    per-document hashes are sorted, so insertion order does not matter."""
    regions = read_regions(db)
    sha = hashlib.sha256(b"STEP-STATE-v4\n")
    sha.update(f"regions:{regions.fingerprint()}\n".encode())
    for name in DIGEST_COLLECTIONS:
        docs = db[name].find({})
        if name == "triangles":
            docs = _not_implied(list(docs), regions)
        hashes = sorted(hashlib.sha256(_canonical_text(_readable(name, doc)).encode()).digest()
                        for doc in docs)
        sha.update(f"{name}:{len(hashes)}\n".encode())
        sha.update(b"".join(hashes))
    return sha.hexdigest()


def written_state_digest(outcome) -> bytes:
    """SHA-256 of the state a batch's commit sets: per account it writes, the balance, proof count and
    last proof (latitude and longitude as exact float hex, time in ms); per triangle it writes, the
    state and clicks; per nonce, its id. One line each (a JSON array, so no value's text can pass for
    another's), sorted. A consensus node chains it into its
    app hash, so a node whose stored state has drifted from the others' (a write-path or cache bug, a
    database changed behind its back) computes another hash at the first block that writes what
    drifted. (What else a commit writes, the verdicts and a triangle's `lastClickAt`, follows from
    the verdict digest.)"""
    keys, prior, final = outcome.keys, outcome.prior, outcome.final
    changed = np.flatnonzero(final.account_proof_count != prior.account_proof_count)
    accounts = pc.take(keys.accounts, pa.array(changed, pa.int64())).to_pylist()
    lines = [orjson.dumps(["accounts", address, int(final.account_balance_micro[i]), int(final.account_proof_count[i]),
                           float(final.account_last_lat[i]).hex(), float(final.account_last_lon[i]).hex(),
                           int(final.account_last_ts_ms[i])]) for i, address in zip(changed.tolist(), accounts)]
    written = np.flatnonzero(layout.triangles_written(outcome))
    triangles = pc.take(keys.triangles, pa.array(written, pa.int64())).to_pylist()
    lines += [orjson.dumps(["triangles", triangle_id, int(final.triangle_state[i]), int(final.triangle_clicks[i])])
              for i, triangle_id in zip(written.tolist(), triangles)]
    lines += [orjson.dumps(["nonces", doc["_id"]]) for doc in layout.nonce_documents(outcome)]
    lines.sort()
    return hashlib.sha256(b"STEP-WRITTEN-STATE-v1\n" + b"\n".join(lines)).digest()


def _not_implied(triangles: list[dict], regions: Regions) -> list[dict]:
    """The triangle documents that say more than their existence: a document of a triangle that is
    still active, unclicked and childless says nothing that a declared region covering it or its
    subdivided parent does not (it is what `mesh seed --materialize` writes, and what a subdivision
    wrote for each child before layout 3), so it does not count."""
    subdivided = {doc["_id"] for doc in triangles if doc.get("state") == "subdivided"}
    pristine = [i for i, doc in enumerate(triangles) if doc.get("state") == "active"
                and not doc.get("clicks") and not doc.get("childrenIds")]
    implied = {pristine[k] for k in np.flatnonzero(regions.covers_ids([triangles[i]["_id"] for i in pristine]))}
    implied.update(i for i in pristine if triangles[i].get("parentId") in subdivided)
    return [doc for i, doc in enumerate(triangles) if i not in implied]


def _readable(collection: str, doc: dict) -> dict:
    """A verdict chunk with its rows in place of their compressed bytes (whose encoding may vary), and
    without its commit sequence number, which counts seedings too and so depends on how a database
    was set up, not on what it holds."""
    if collection != "verdicts":
        return doc
    return {**{k: v for k, v in doc.items() if k not in ("ipc", "seq")},
            "rows": layout.chunk_table(doc).to_pylist()}


def _canonical_text(doc: dict) -> str:
    kept = {k: v for k, v in doc.items()
            if k not in WALL_CLOCK_FIELDS and not (k == "_id" and isinstance(v, ObjectId))}
    return json.dumps(_canonical(kept), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical(value):
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, Int64)):
        return {"$int": str(int(value))}
    if isinstance(value, float):
        return {"$float": value.hex()}
    if isinstance(value, (DatetimeMS, dt.datetime)):
        return {"$date": _epoch_ms(value)}
    return {"$" + type(value).__name__: str(value)}



@dataclasses.dataclass
class ReplayedAccount:
    balance_micro: int = 0
    proof_count: int = 0
    last: tuple[float, float, int] | None = None  # (lat_deg, lon_deg, ts_ms) of the latest proof


@dataclasses.dataclass
class ReplayedState:
    accounts: dict[str, ReplayedAccount]
    triangle_clicks: dict[str, int]
    click_numbers: dict[str, list[int]]  # per triangle, the click numbers its events carry, sorted
    ended: dict[str, str]  # triangle id → "subdivided" | "exhausted", from subdivide events
    nonce_uses: collections.Counter  # (account, nonce) → accepted proofs that used it


def replay_event_log(db) -> ReplayedState:
    """Balances, proof counts, last proofs, clicks and nonces recomputed from the accepted rows of
    the stored verdicts.

    An account's accepted proofs have strictly increasing timestamps (TOO_FAST rejects Δt ≤ 0), so its
    last proof is the one with the latest timestamp, whichever batch wrote it."""
    accounts: dict[str, ReplayedAccount] = collections.defaultdict(ReplayedAccount)
    clicks: dict[str, list[int]] = collections.defaultdict(list)
    ended: dict[str, str] = {}
    nonce_uses: collections.Counter = collections.Counter()
    for chunk in db.verdicts.find({}):
        rows = layout.chunk_table(chunk)
        for row in rows.filter(pc.equal(rows.column("code"), Code.ACCEPTED.name)).to_pylist():
            account = accounts[row["account_key"]]
            account.balance_micro += row["reward_micro"]
            account.proof_count += 1
            if account.last is None or row["ts_ms"] > account.last[2]:
                account.last = (row["lat"], row["lon"], row["ts_ms"])
            clicks[row["triangle_id"]].append(row["click_number"])
            nonce_uses[(row["account_key"], row["nonce"])] += 1
            if row["subdivided"]:
                level = mesh.decode_id(row["triangle_id"])[1]
                ended[row["triangle_id"]] = "exhausted" if level == MAX_LEVEL else "subdivided"
    return ReplayedState(
        accounts=dict(accounts),
        triangle_clicks={triangle: len(numbers) for triangle, numbers in clicks.items()},
        click_numbers={triangle: sorted(numbers) for triangle, numbers in clicks.items()},
        ended=ended, nonce_uses=nonce_uses)


def event_log_mismatches(db, subdivide_at_clicks: int = 11) -> list[str]:
    """Every difference between the stored accounts/triangles and what the event log implies; [] when
    the state is exactly the accepted proofs applied one by one."""
    replayed = replay_event_log(db)
    problems = [f"nonce {nonce!r} of {account} used by {uses} accepted proofs"
                for (account, nonce), uses in replayed.nonce_uses.items() if uses > 1]
    stored_nonces = {doc["_id"] for doc in db.nonces.find({}, {"_id": 1})}
    verdict_nonces = {layout.nonce_id(account, nonce) for account, nonce in replayed.nonce_uses}
    problems += [f"nonce {value!r} is stored without an accepted proof"
                 for value in sorted(stored_nonces - verdict_nonces)]
    problems += [f"accepted proof {value!r} has no stored nonce" for value in sorted(verdict_nonces - stored_nonces)]
    for triangle, numbers in replayed.click_numbers.items():
        if numbers != list(range(1, len(numbers) + 1)):
            problems.append(f"triangle {triangle} has click numbers {numbers}, not 1..{len(numbers)}")
    stored_accounts = {doc["_id"]: doc for doc in db.accounts.find({})}
    for address in sorted(set(stored_accounts) | set(replayed.accounts)):
        doc, account = stored_accounts.get(address), replayed.accounts.get(address, ReplayedAccount())
        stored = (int(doc.get("balanceMicro", 0)), int(doc.get("proofCount", 0))) if doc else (0, 0)
        if stored != (account.balance_micro, account.proof_count):
            problems.append(f"account {address}: stored (balance, proofs) {stored}, "
                            f"events give {(account.balance_micro, account.proof_count)}")
        elif doc and account.last is not None:
            last = doc.get("lastProof") or {}
            kept = (float(last.get("lat", "nan")), float(last.get("lon", "nan")),
                    _epoch_ms(last["ts"]) if "ts" in last else None)
            if kept != account.last:
                problems.append(f"account {address}: stored last proof {kept}, events give {account.last}")
    stored_triangles = {doc["_id"]: doc for doc in db.triangles.find(
        {"$or": [{"clicks": {"$gt": 0}}, {"state": {"$ne": "active"}}]}, {"clicks": 1, "state": 1})}
    for triangle in sorted(set(stored_triangles) | set(replayed.triangle_clicks)):
        doc = stored_triangles.get(triangle)
        expected = replayed.triangle_clicks.get(triangle, 0)
        if doc is None or int(doc.get("clicks", 0)) != expected:
            problems.append(f"triangle {triangle}: stored clicks "
                            f"{0 if doc is None else doc.get('clicks')}, events give {expected}")
            continue
        state = replayed.ended.get(triangle, "active")
        if doc.get("state") != state:
            problems.append(f"triangle {triangle}: stored state {doc.get('state')}, events give {state}")
        if (expected >= subdivide_at_clicks) != (triangle in replayed.ended):
            problems.append(f"triangle {triangle}: {expected} clicks but "
                            f"{'a' if triangle in replayed.ended else 'no'} subdivide event")
    return problems


def _epoch_ms(value) -> int:
    return int(value) if isinstance(value, DatetimeMS) else epoch_ms(value)
