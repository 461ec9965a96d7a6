"""ABCI `Query` (SPEC §8): committed state as JSON, read from the database without the consensus lock.

Paths: `/account/{address}`, `/triangle/{id}`, `/proof/{account}/{nonce}` (the nonce is the rest of
the path, `/` and all; or `/proof/{account}` with the nonce as the request's `data`), `/batch/{height}`
and The proof's answer says whether its nonce is used and, from the account's
latest PROOF_HISTORY_ROWS verdicts, every block row that carried it (height, row of the block's batch,
code, message): where a proof landed inside its ProofBatch. A transaction itself is found by hash
with CometBFT's own `/tx` RPC, whose result's `data` has one verdict line per proof. Every answer is
JSON; a bad path or a missing thing is a non-zero code with a log that says which, never an exception.
"""

from __future__ import annotations

import re

import orjson
import pyarrow.compute as pc

from stepbatch.store.seed import existing_triangles

NOT_FOUND, BAD_QUERY = 1, 2  # codes of a query's answer; an internal error is server.INTERNAL_ERROR
PATHS = "/account/{address}, /triangle/{id}, /proof/{account}/{nonce}, /batch/{height}"
PROOF_HISTORY_ROWS = 1000
_ACCOUNT = re.compile(r"0x[0-9a-fA-F]{40}")
_HEIGHT = re.compile(r"[1-9][0-9]{0,18}")
MAX_PATH_CHARS = 1024


class BadQuery(ValueError):
    pass


def answer(app, request) -> tuple[int, bytes, str]:
    """(code, JSON value, log) of one query."""
    path = request.path
    if len(path) > MAX_PATH_CHARS:
        return BAD_QUERY, b"", f"a query path is at most {MAX_PATH_CHARS} characters"
    try:
        value = _answer(app, path.lstrip("/"), bytes(request.data))
    except BadQuery as err:
        return BAD_QUERY, b"", f"bad query {path[:200]!r}: {err}; paths are {PATHS}"
    if value is None:
        return NOT_FOUND, b"", f"not found: {path[:200]}"
    return 0, orjson.dumps(value, default=str), ""


def _answer(app, path: str, data: bytes):
    kind, _, rest = path.partition("/")
    db = app.store.db
    if kind == "account":
        address = _account(rest)
        doc = db.accounts.find_one({"_id": address})
        return None if doc is None else {"account": address, "balanceMicro": int(doc["balanceMicro"]),
                                         "proofCount": doc["proofCount"], "lastProof": doc.get("lastProof")}
    if kind == "triangle" and rest:
        try:
            found = existing_triangles(db, [rest])
        except ValueError as err:
            raise BadQuery(f"not a triangle id: {err}") from err
        return None if not found else {k: found[0].get(k) for k in (
            "_id", "level", "state", "clicks", "parentId", "childrenIds")}
    if kind == "proof":
        account, slash, nonce = rest.partition("/")
        address = _account(account)
        if not slash:
            try:
                nonce = data.decode()
            except UnicodeDecodeError as err:
                raise BadQuery("the nonce in data is not UTF-8") from err
        used = db.nonces.find_one({"_id": f"{address}:{nonce}"}, {"_id": 1}) is not None
        history = app.store.history(address, limit=PROOF_HISTORY_ROWS)
        rows = history.filter(pc.equal(history.column("nonce"), nonce)).select(
            ["batch_id", "index", "code", "message"]).to_pylist()
        return {"account": address, "nonce": nonce, "used": used, "rows": [
            {"height": int(row["batch_id"].rpartition(":")[2]), "row": row["index"], "code": row["code"],
             "message": row["message"]} for row in rows]}
    if kind == "batch":
        if not _HEIGHT.fullmatch(rest):
            raise BadQuery("a height is a positive integer")
        chain = app.chain
        stored = app.store.committed(f"{chain['chainId']}:{int(rest)}") if chain else None
        return None if stored is None else {"batchId": stored.batch_id, "digest": stored.digest,
                                            "counts": stored.counts, "rows": stored.verdicts.num_rows}
    raise BadQuery("unknown path")


def _account(text: str) -> str:
    if not _ACCOUNT.fullmatch(text):
        raise BadQuery("an account is 0x and 40 hex digits")
    return text.lower()
