"""`stepbatch.ingest.untrusted`: what a request body may cost is known before it is parsed, and what it
reads is what `read_proofs` reads from the same bytes."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepbatch import crypto, mesh, read_proofs
from stepbatch.crypto import signing
from stepbatch.ingest import ndjson
from stepbatch.ingest.sources import ProofSourceError
from stepbatch.ingest.untrusted import ARROW_STREAM, RowLimitExceeded, read_untrusted
from tests.strategies import ACCOUNT_KEYS, WORLD_CENTRE


def naive_shape(raw: bytes) -> ndjson.Shape:
    """Byte by byte: a quote after an odd run of backslashes is escaped, anywhere."""
    depth = deepest = commas = 0
    inside = escaped = False
    for char in raw.decode("latin-1"):
        was_escaped, escaped = escaped, char == "\\" and not escaped
        if char == '"' and not was_escaped:
            inside = not inside
        elif inside:
            continue
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 1:
            commas += 1
    text = raw.lstrip(b"\xef\xbb\xbf \t\r\n")
    empty = text[1:].lstrip(b" \t\r\n").startswith(b"]")
    return ndjson.Shape(deepest, commas + (0 if empty else 1) if text.startswith(b"[") else 0)


@settings(max_examples=400, deadline=None)
@given(raw=st.lists(st.sampled_from(list(b'[]{}",\\ a')), max_size=200).map(bytes),
       block=st.sampled_from([1, 2, 3, 7, 1 << 18]))
def test_json_shape_equals_a_byte_by_byte_scan_across_any_block_size(raw, block):
    saved = ndjson.SCAN_BYTES
    ndjson.SCAN_BYTES = block
    try:
        assert ndjson.json_shape(raw) == naive_shape(raw)
    finally:
        ndjson.SCAN_BYTES = saved


def _proofs(n: int) -> list[dict]:
    triangle = mesh.triangle_at(*WORLD_CENTRE, 14)
    out = []
    for k in range(n):
        payload = {"version": "STEP-PROOF-v1", "account": signing.address_of(ACCOUNT_KEYS[k % 4]),
                   "triangleId": triangle, "lat": WORLD_CENTRE[0], "lon": WORLD_CENTRE[1], "accuracy": 5,
                   "timestamp": "2026-01-01T00:00:00.000Z", "nonce": f"n{k}"}
        out.append({"payload": payload, "signature": crypto.sign_proof(ACCOUNT_KEYS[k % 4], payload)})
    return out


def _stream(table: pa.Table, chunk: int | None = 3) -> bytes:
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=chunk)
    return sink.getvalue()


_SIGNED = ["version", "account", "triangle_id", "lat", "lon", "accuracy", "timestamp", "nonce", "signature",
           "payload_error"]


def test_valid_bodies_read_as_read_proofs_reads_them():
    rows = _proofs(7) + [{"junk": 1}, {"payload": {"nonce": "x" * 200}}]
    bodies = {
        "application/json": json.dumps(rows).encode(),
        "application/x-ndjson": b"\n".join(json.dumps(row).encode() for row in rows) + b"\n",
    }
    for kind, body in bodies.items():
        assert read_untrusted(body, kind, 100).select(_SIGNED) == read_proofs(body).select(_SIGNED)
    flat = read_proofs(rows).drop_columns(["payload_error", "ts_ms", "triangle_key"])
    body = _stream(flat)
    assert read_untrusted(body, ARROW_STREAM, 100).select(_SIGNED) == read_proofs(
        ipc.open_stream(pa.BufferReader(body)).read_all()).select(_SIGNED)


def test_rows_are_counted_before_parsing():
    with pytest.raises(RowLimitExceeded, match="the array holds 4 proofs; at most 3 go in one request"):
        read_untrusted(b"[{}, {}, {}, {}]", "application/json", 3)
    with pytest.raises(RowLimitExceeded, match="a record batch declares 10 rows"):
        read_untrusted(_stream(pa.table({"nonce": pa.nulls(10)}).drop_columns(["nonce"]), None), ARROW_STREAM, 3)
    with pytest.raises(RowLimitExceeded, match="the stream's record batches hold more than 3 rows"):
        read_untrusted(_stream(pa.table({"nonce": pa.nulls(4)}), 2), ARROW_STREAM, 3)
    dictionary = pa.DictionaryArray.from_arrays(pa.array([0, 0], pa.int8()), pa.array(["a"] * 5))
    with pytest.raises(RowLimitExceeded, match="a dictionary batch declares 5 values; at most 3 proofs go in one request"):
        read_untrusted(_stream(pa.table({"nonce": dictionary}), None), ARROW_STREAM, 3)


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(0, 2000), flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4))
def test_a_damaged_arrow_stream_is_read_or_refused_never_anything_else(cut, flips):
    body = bytearray(_stream(read_proofs(_proofs(4)).drop_columns(["payload_error"])))
    for position, value in flips:
        body[position % len(body)] = value
    try:
        table = read_untrusted(bytes(body[:cut]), ARROW_STREAM, 100)
    except ProofSourceError:
        return
    assert table.num_rows <= 100
