"""Arrow schemas of what flows between stages, declared once.

PROOF_SCHEMA is the flat shape of SPEC §2 as `read_proofs` returns it: the signed fields as sent,
`received_at` (null where the source has none), and three columns the ingest stage derives:
`ts_ms` (the timestamp in epoch milliseconds, null when unparseable) and `triangle_key` (the triangle id
packed by `stepbatch_kernels.mesh` into an int64, null when the id is not canonical) and `payload_error` (null
for a row that satisfies every field rule, otherwise the reason it will be rejected with
INVALID_PAYLOAD).
Extra source columns follow these, untouched.
"""

from __future__ import annotations

import pyarrow as pa

SIGNED_FIELDS = ("version", "account", "triangle_id", "lat", "lon", "accuracy", "timestamp", "nonce")

# API-shape (JSON) key for each flat column.
API_KEYS = {
    "version": "version", "account": "account", "triangle_id": "triangleId", "lat": "lat",
    "lon": "lon", "accuracy": "accuracy", "timestamp": "timestamp", "nonce": "nonce",
}

PROOF_SCHEMA = pa.schema([
    pa.field("version", pa.string()),
    pa.field("account", pa.string()),
    pa.field("triangle_id", pa.string()),
    pa.field("lat", pa.float64()),
    pa.field("lon", pa.float64()),
    pa.field("accuracy", pa.float64()),
    pa.field("timestamp", pa.string()),
    pa.field("nonce", pa.string()),
    pa.field("signature", pa.string()),
    pa.field("received_at", pa.timestamp("ms", tz="UTC")),
    pa.field("ts_ms", pa.int64()),
    pa.field("triangle_key", pa.int64()),
    pa.field("payload_error", pa.string()),
])

PROOF_COLUMNS = tuple(PROOF_SCHEMA.names)

VERDICT_SCHEMA = pa.schema([
    pa.field("index", pa.int64(), nullable=False),
    pa.field("account", pa.string()),
    pa.field("nonce", pa.string()),
    pa.field("triangle_id", pa.string()),
    pa.field("code", pa.string(), nullable=False),
    pa.field("message", pa.string(), nullable=False),
    pa.field("reward_micro", pa.int64(), nullable=False),
    pa.field("click_number", pa.int64()),
    pa.field("speed_mps", pa.float64()),
])
