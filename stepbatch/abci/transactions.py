"""What a transaction is (SPEC §8): one proof, or a ProofBatch of 1-1,000 proofs, and nothing else.

Any bytes at all may arrive as a transaction, from anyone who reaches a node's RPC or from a
Byzantine proposer, so they are decoded here as JSON records only: never handed to `read_proofs`,
whose source sniffing would take a string for a file name. A transaction is

- a JSON object: one proof (the API shape of SPEC §2, or the flat shape), one row;
- a JSON array of 1 to MAX_BATCH_PROOFS JSON objects: a ProofBatch, one row per proof, in order;
- anything else (bytes that are not UTF-8 JSON, JSON nested deeper than proofs ever are, a string,
  a number, `null`, `[]`, an array too long or holding something that is not an object): one
  INVALID_PAYLOAD row saying what it is.

Only the keys a proof has are kept from each object (`received_at` is not consensus data), so what a
transaction carries besides its proofs never reaches a table. An element of a ProofBatch that is
not an object makes the whole transaction one row: a row costs a node more than the three bytes
`{},` a proposer would pay for it, so the rows of a block are bounded by its bytes at the price of
a proof's keys.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple, Sequence

import numpy as np
import orjson
import pyarrow as pa

from stepbatch.ingest import ndjson
from stepbatch.ingest import table as proof_table
from stepbatch.ingest.fields import describe_json
from stepbatch.schema import PROOF_SCHEMA, SIGNED_FIELDS

MAX_BATCH_PROOFS = 1000
# Rows in one block at most. A proposer pays a few bytes for a row (`{},` in a ProofBatch) that costs
# every node a verdict, a stored row and ~60 bytes of FinalizeBlock answer: unbounded, a 16 MB block
# of them would make an answer over the 100 MiB that CometBFT reads from an app, and stop every node.
# ProcessProposal refuses a block with more, whoever proposed it; honest proposers never make one.
MAX_BLOCK_ROWS = 100_000
# The keys of a proof in either shape (SPEC §2); `received_at` and everything else is dropped.
PROOF_KEYS = frozenset({"payload", *SIGNED_FIELDS, "signature"})
SHAPE = (f"a transaction is one proof (a JSON object) or a ProofBatch (a JSON array of 1-{MAX_BATCH_PROOFS:,} "
         f"proof objects)")


class Kind:
    PROOF = "proof"
    BATCH = "batch"
    INVALID = "invalid"


class Decoded(NamedTuple):
    """The rows of a list of transactions: one PROOF_SCHEMA table, and which rows each transaction has."""

    proofs: pa.Table  # PROOF_SCHEMA, every transaction's rows in transaction order
    kinds: list[str]  # per transaction: Kind.PROOF, Kind.BATCH or Kind.INVALID
    first_row: np.ndarray  # int64 per transaction: its first row in `proofs`
    row_count: np.ndarray  # int64 per transaction: its rows (1 for a proof or an invalid one)

    def rows_of(self, tx: int) -> slice:
        start = int(self.first_row[tx])
        return slice(start, start + int(self.row_count[tx]))

    @property
    def tx_of_row(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.kinds), dtype=np.int64), self.row_count)


def decode(tx: bytes) -> tuple[str, list]:
    """(kind, the JSON values of its rows) of one transaction; an invalid one is one `BadLine`.

    orjson reads what it accepts (strict UTF-8 and JSON, no lone surrogates, bounded nesting) at a
    tenth of the cost; what it refuses is read again by ingest's exact reader, which says why, or reads
    what strict JSON refuses but Python's reader takes (`NaN`, integers beyond 64 bits) exactly as the
    service does. Both give the same value for what both accept."""
    try:
        value = orjson.loads(tx)
    except orjson.JSONDecodeError:
        value = ndjson.decode_value(bytes(tx))
    if isinstance(value, ndjson.BadLine):
        return Kind.INVALID, [ndjson.BadLine(f"{SHAPE}; this one is {value.message}")]
    if isinstance(value, dict):
        return Kind.PROOF, [_proof_keys(value)]
    if isinstance(value, list):
        if not 1 <= len(value) <= MAX_BATCH_PROOFS:
            size = f"an array of {len(value):,}" if value else "an empty array"
            return Kind.INVALID, [ndjson.BadLine(f"{SHAPE}; this one is {size}")]
        strays = [k for k, item in enumerate(value) if not isinstance(item, dict)]
        if strays:
            return Kind.INVALID, [ndjson.BadLine(
                f"{SHAPE}; element {strays[0]} of this array is {describe_json(value[strays[0]])}")]
        return Kind.BATCH, [_proof_keys(item) for item in value]
    return Kind.INVALID, [ndjson.BadLine(f"{SHAPE}; this one is {describe_json(value)}")]


def decode_all(txs: Sequence[bytes], decoded: list[tuple[str, list]] | None = None) -> Decoded:
    """Every transaction's rows, as one table; `payload_error` says "proof K: …", K counted from 1 in
    its transaction. `decoded`: `decode` of each transaction, when the caller has it already."""
    kinds, values, counts = [], [], []
    for kind, rows in decoded if decoded is not None else map(decode, txs):
        kinds.append(kind)
        values.extend(rows)
        counts.append(len(rows))
    row_count = np.asarray(counts, np.int64)
    first_row = np.concatenate(([0], np.cumsum(row_count)[:-1])).astype(np.int64) if counts else row_count
    if not values:
        return Decoded(PROOF_SCHEMA.empty_table(), kinds, first_row, row_count)
    parsed = proof_table.from_objects(values)
    numbers = np.arange(len(values), dtype=np.int64) - np.repeat(first_row, row_count) + 1
    proofs = proof_table.finish(parsed, numbers, "proof")
    return Decoded(proofs, kinds, first_row, row_count)


def tx_hash(tx: bytes) -> bytes:
    """CometBFT's transaction hash: SHA-256 of the bytes."""
    return hashlib.sha256(tx).digest()


def proto_size(tx: bytes) -> int:
    """What a transaction adds to a block's `Data` message (CometBFT's `ComputeProtoSizeForTxs`): the
    field tag, the length varint and the bytes."""
    n = len(tx)
    return 1 + max(1, (n.bit_length() + 6) // 7) + n


def _proof_keys(value: dict) -> dict:
    if value.keys() <= PROOF_KEYS:
        return value
    return {k: v for k, v in value.items() if k in PROOF_KEYS}


def within_block_limits(txs: list[bytes], max_tx_bytes: int) -> list[bytes]:
    """The first transactions, in order, that fit in `max_tx_bytes` as CometBFT counts a block's data
    and together hold at most MAX_BLOCK_ROWS rows."""
    kept, size, rows = [], 0, 0
    for tx in txs:
        cost, count = proto_size(tx), len(decode(tx)[1])
        if size + cost > max_tx_bytes or rows + count > MAX_BLOCK_ROWS:
            break
        kept.append(tx)
        size += cost
        rows += count
    return kept
