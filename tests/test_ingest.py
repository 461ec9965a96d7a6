"""Ingest (stepbatch.ingest): every source kind gives the same table, bad rows stay in place with
their line or row named, unreadable sources raise ProofSourceError, and `iter_proofs` resumes
exactly after `skip_rows`."""

from __future__ import annotations

import json
import pathlib
from unittest import mock

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepbatch import mesh
from stepbatch.ingest import ProofSourceError, iter_proofs, ndjson, read_proofs
from stepbatch.mesh import ids as mesh_ids
from stepbatch.schema import API_KEYS, PROOF_COLUMNS, PROOF_SCHEMA, SIGNED_FIELDS
from tests.strategies import latitudes, longitudes

TRIANGLES = [mesh.encode_id(face, 4, (face % 4, 1, 2)) for face in range(5)]


def proof(i: int) -> dict:
    """A flat, well-formed proof with two extra columns."""
    return {
        "version": "STEP-PROOF-v1", "account": f"0x{i:040x}", "triangle_id": TRIANGLES[i % 5],
        "lat": -45 + i % 240 * 0.37, "lon": 170 - i % 300 * 1.13, "accuracy": [10, 3.5, 50][i % 3],
        "timestamp": f"2025-10-05T12:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z",
        "nonce": f"n-{i}", "signature": "0x" + f"{i % 256:02x}" * 64 + "1b",
        "received_at": None if i % 4 == 0 else f"2025-10-05T12:{i // 60 % 60:02d}:{i % 60:02d}.5Z",
        "expected_code": "ACCEPTED", "seq": i,
    }


def api(row: dict) -> dict:
    """The API shape of a flat row; extras stay at the top level."""
    payload = {API_KEYS[field]: row[field] for field in SIGNED_FIELDS}
    rest = {k: v for k, v in row.items() if k not in SIGNED_FIELDS}
    return {"payload": payload, **rest}


def write_ndjson(path: pathlib.Path, objects: list) -> pathlib.Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects))
    return path


def write_arrow(path: pathlib.Path, table: pa.Table, kind: str) -> pathlib.Path:
    if kind == "parquet":
        pq.write_table(table, path, row_group_size=7)
    elif kind == "feather":
        feather.write_feather(table, path)
    else:
        with pa.OSFile(str(path), "wb") as sink:
            opener = ipc.new_file if kind == "file" else ipc.new_stream
            with opener(sink, table.schema) as writer:
                for batch in table.to_batches(max_chunksize=6):
                    writer.write_batch(batch)
    return path


ROWS = [proof(i) for i in range(40)]
EXPECTED = read_proofs(ROWS)

SOURCES = {
    "flat dicts": lambda tmp: ROWS,
    "api dicts": lambda tmp: [api(r) for r in ROWS],
    "json text": lambda tmp: json.dumps([api(r) for r in ROWS]),
    "json bytes": lambda tmp: json.dumps([api(r) for r in ROWS]).encode(),
    "ndjson text": lambda tmp: "\n".join(json.dumps(api(r)) for r in ROWS),
    ".json file": lambda tmp: _write(tmp / "p.json", json.dumps([api(r) for r in ROWS], indent=2)),
    ".ndjson api": lambda tmp: write_ndjson(tmp / "p.ndjson", [api(r) for r in ROWS]),
    ".jsonl flat": lambda tmp: str(write_ndjson(tmp / "p.jsonl", ROWS)),
    "ndjson mixed shapes": lambda tmp: write_ndjson(
        tmp / "m.ndjson", [api(r) if i % 2 else r for i, r in enumerate(ROWS)]),
    ".parquet": lambda tmp: write_arrow(tmp / "p.parquet", pa.Table.from_pylist(ROWS), "parquet"),
    ".arrow file": lambda tmp: write_arrow(tmp / "p.arrow", pa.Table.from_pylist(ROWS), "file"),
    ".ipc stream": lambda tmp: write_arrow(tmp / "p.ipc", pa.Table.from_pylist(ROWS), "stream"),
    ".feather": lambda tmp: write_arrow(tmp / "p.feather", pa.Table.from_pylist(ROWS), "feather"),
    "sniffed parquet": lambda tmp: write_arrow(tmp / "p.dat", pa.Table.from_pylist(ROWS), "parquet"),
    "sniffed stream": lambda tmp: write_arrow(tmp / "p", pa.Table.from_pylist(ROWS), "stream"),
    "sniffed ndjson": lambda tmp: write_ndjson(tmp / "p.txt", ROWS),
    "pa.Table": lambda tmp: pa.Table.from_pylist(ROWS),
    "pa.RecordBatch": lambda tmp: pa.RecordBatch.from_pylist(ROWS),
    "polars": lambda tmp: pl.from_dicts(ROWS),
    "list of paths": lambda tmp: [
        write_ndjson(tmp / "a.ndjson", ROWS[:15]),
        write_arrow(tmp / "b.parquet", pa.Table.from_pylist(ROWS[15:]), "parquet")],
}


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", SOURCES)
def test_every_source_kind_gives_the_same_table(kind, tmp_path):
    table = read_proofs(SOURCES[kind](tmp_path))
    assert table.schema.names == list(PROOF_COLUMNS) + ["expected_code", "seq"]
    assert table.select(PROOF_COLUMNS).equals(EXPECTED.select(PROOF_COLUMNS))
    assert table.select(["expected_code", "seq"]).to_pylist() == \
        EXPECTED.select(["expected_code", "seq"]).to_pylist()


def test_the_output_is_proof_schema_with_derived_columns():
    assert EXPECTED.schema.remove_metadata() == pa.schema(
        list(PROOF_SCHEMA) + [pa.field("expected_code", pa.string()), pa.field("seq", pa.int64())])
    assert EXPECTED.column("payload_error").null_count == len(ROWS)
    assert EXPECTED.column("triangle_key").to_pylist()[:2] == [mesh_ids.key_of(TRIANGLES[0]),
                                                               mesh_ids.key_of(TRIANGLES[1])]
    assert EXPECTED.column("received_at").null_count == 10


def test_one_api_dict_is_one_row_and_an_empty_list_is_an_empty_batch():
    assert read_proofs(api(ROWS[3])).select(PROOF_COLUMNS).equals(
        EXPECTED.slice(3, 1).select(PROOF_COLUMNS))
    empty = read_proofs([])
    assert empty.num_rows == 0 and empty.schema == PROOF_SCHEMA


def test_extra_payload_fields_are_ignored_in_every_reader(tmp_path):
    objects = [{**api(r), "payload": {**api(r)["payload"], "altitude": 120.5}} for r in ROWS]
    for source in (objects, write_ndjson(tmp_path / "x.ndjson", objects)):
        table = read_proofs(source)
        assert table.select(PROOF_COLUMNS).equals(EXPECTED.select(PROOF_COLUMNS))
        assert "altitude" not in table.column_names


def test_reading_a_table_read_before_gives_it_back_errors_and_all(tmp_path):
    rows = [*ROWS[:5], {**ROWS[5], "lat": "x"}, "not an object"]
    first = read_proofs(write_ndjson(tmp_path / "e.ndjson", rows))
    assert first.column("payload_error").to_pylist()[5:] == [
        "line 6: lat: expected a JSON number, got string 'x'",
        "line 7: expected a JSON object, got string 'not an object'"]
    assert read_proofs(first).equals(first)
    pq.write_table(first, tmp_path / "again.parquet")
    # A file cannot carry its own verdicts: its field rules run again, on what it holds.
    again = read_proofs(tmp_path / "again.parquet")
    assert again.drop_columns(["payload_error"]).equals(first.drop_columns(["payload_error"]))
    assert again.column("payload_error").to_pylist()[5:] == [
        "row 6: missing field 'lat'", "row 7: missing field 'version'"]


# ---------------------------------------------------------------- bad rows in files

BAD_LINES = {  # line number → (line text, message after "line N: ")
    3: ("{not json", "not valid JSON: Expecting property name enclosed in double quotes at column 2"),
    40: (json.dumps(api({**proof(40), "lat": "47.5"})), "lat: expected a JSON number, got string '47.5'"),
    41: (json.dumps(api({**proof(41), "lon": float("nan")})), "lon: expected a finite number, got nan"),
    150: (json.dumps({**proof(150), "lat": 90.5}), "lat: expected a value in [-90, 90], got 90.5"),
    151: (json.dumps(api({**proof(151), "timestamp": "2025-10-05T12:00:00"})),
          "timestamp: expected ISO-8601 YYYY-MM-DDTHH:MM:SS[.fraction] with Z or ±hh:mm, got "
          "'2025-10-05T12:00:00'"),
    299: (json.dumps(api({**proof(299), "signature": "0x" + "zz" * 65})),
          "signature: expected 65 bytes as 130 hex digits (0x optional), got a non-hex character "
          "at position 2"),
    300: (json.dumps(api({**proof(300), "triangle_id": "STEP-TRI-v1:B3-12300000000000000000-FQG"})),
          "triangleId is not canonical: path digits beyond the level must be 0"),
    420: ("[1, 2]", "expected a JSON object, got array"),
}


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few KB, so a test file spans many blocks and pyarrow sub-blocks."""
    monkeypatch.setattr(ndjson, "BLOCK_BYTES", 16_384)
    monkeypatch.setattr(ndjson, "PYARROW_BLOCK_BYTES", 4096)
    monkeypatch.setattr(ndjson, "RUN_ROWS", 16)


def test_each_bad_ndjson_line_is_one_row_naming_its_line_and_the_rest_is_unaffected(
        tmp_path, small_blocks):
    lines = [json.dumps(api(proof(i))) for i in range(1, 431)]
    lines[99] = ""  # a blank line: counted as a line, not a row
    lines[200] = "   \t"
    for number, (text, _) in BAD_LINES.items():
        lines[number - 1] = text
    path = tmp_path / "bad.ndjson"
    path.write_text("\n".join(lines))  # no newline after the last line
    table = read_proofs(path)

    numbers = [n for n, text in enumerate(lines, 1) if text.strip()]
    assert table.num_rows == len(numbers) == 428
    errors = dict(zip(numbers, table.column("payload_error").to_pylist()))
    assert {n: e for n, e in errors.items() if e is not None} == {
        n: f"line {n}: {message}" for n, (_, message) in BAD_LINES.items()}
    good = [numbers.index(n) for n in numbers if n not in BAD_LINES]
    clean = read_proofs([proof(n) for n in numbers if n not in BAD_LINES])
    assert table.take(good).equals(clean)


def test_bad_rows_in_parquet_name_their_row(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[4]["lat"], rows[20]["nonce"] = 91.0, ""
    table = read_proofs(write_arrow(tmp_path / "r.parquet", pa.Table.from_pylist(rows), "parquet"))
    errors = table.column("payload_error").to_pylist()
    assert errors[4] == "row 5: lat: expected a value in [-90, 90], got 91"
    assert errors[20] == "row 21: nonce: expected a non-empty string"
    assert table.column("payload_error").null_count == len(rows) - 2


def test_a_string_column_in_parquet_makes_every_row_invalid_naming_the_type(tmp_path):
    source = pa.Table.from_pylist(ROWS[:3]).set_column(
        3, "lat", pa.array(["47.5", "1", None]))
    table = read_proofs(write_arrow(tmp_path / "s.parquet", source, "parquet"))
    assert table.column("payload_error").to_pylist() == [
        "row 1: lat: expected a JSON number, got string '47.5'",
        "row 2: lat: expected a JSON number, got string '1'", "row 3: missing field 'lat'"]


def test_rows_that_are_not_objects_or_have_no_object_payload_stay_as_rows():
    table = read_proofs([api(ROWS[0]), 5, None, {"payload": "x", "signature": "0x"}, ROWS[1]])
    assert table.column("payload_error").to_pylist() == [
        None, "row 2: expected a JSON object, got number 5",
        "row 3: expected a JSON object, got null",
        "row 4: payload: expected a JSON object, got string 'x'", None]


def test_reading_several_paths_names_the_file_of_a_bad_row(tmp_path):
    first = write_ndjson(tmp_path / "a.ndjson", ROWS[:2])
    second = write_ndjson(tmp_path / "b.ndjson", [ROWS[2], {**ROWS[3], "nonce": 5}])
    assert read_proofs([first, second]).column("payload_error").to_pylist() == [
        None, None, None, "b.ndjson line 2: nonce: expected a string, got number 5"]


def test_crlf_lines_a_byte_order_mark_and_a_line_longer_than_a_block_are_read(
        tmp_path, small_blocks):
    long_row = {**ROWS[1], "padding": "x" * 40_000}
    text = "\r\n".join(json.dumps(r) for r in [ROWS[0], long_row, ROWS[2]]) + "\r\n"
    path = tmp_path / "w.ndjson"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    table = read_proofs(path)
    assert table.select(PROOF_COLUMNS).equals(EXPECTED.slice(0, 3).select(PROOF_COLUMNS))
    assert table.column("padding").to_pylist() == [None, "x" * 40_000, None]


def test_a_line_is_one_row_even_where_pyarrow_would_split_or_join_lines(tmp_path, small_blocks):
    lines = [json.dumps(r) for r in ROWS[:6]]
    lines[1] = json.dumps(ROWS[1]) + " " + json.dumps(ROWS[2])  # two objects on one line
    lines[3] = json.dumps(ROWS[3]).replace(", ", ",\n", 1)  # one object over lines 4 and 5
    lines[4] = ""  # and a blank line 6, so that pyarrow's row count alone would agree
    table = read_proofs(_write(tmp_path / "j.ndjson", "\n".join(lines)))
    errors = table.column("payload_error").to_pylist()
    assert len(errors) == 6
    assert errors[1].startswith("line 2: not valid JSON: Extra data")
    assert errors[3].startswith("line 4: not valid JSON") and errors[4].startswith("line 5: not valid")
    assert [errors[i] for i in (0, 2, 5)] == [None] * 3
    assert table.take([0, 2, 5]).select(PROOF_COLUMNS).equals(
        EXPECTED.take([0, 2, 5]).select(PROOF_COLUMNS))


_corruptions = st.sampled_from([
    None, None, None, ("lat", "1.5"), ("lon", True), ("accuracy", None), ("nonce", 12),
    ("timestamp", "2025-02-30T00:00:00Z"), ("version", ["v"]), ("received_at", 17), ("line", "{]"),
    ("line", "[]"), ("line", "   "), ("extra", {"deep": [1, None]}),
])


def _ndjson_bytes(objects_or_lines: list) -> bytes:
    lines = [o if isinstance(o, str) else json.dumps(o) for o in objects_or_lines]
    return ("\n".join([json.dumps(proof(999))] + lines) + "\n").encode()


@given(st.lists(st.tuples(_corruptions, st.booleans()), min_size=1, max_size=60))
@settings(max_examples=50, deadline=None)
def test_the_pyarrow_fast_path_reads_exactly_what_json_loads_reads(cases):
    lines = []
    for i, (corruption, api_shape) in enumerate(cases):
        row = proof(i)
        if corruption and corruption[0] != "line":
            row[corruption[0]] = corruption[1]
        lines.append(corruption[1] if corruption and corruption[0] == "line"
                     else api(row) if api_shape else row)
    data = _ndjson_bytes(lines)
    with mock.patch.object(ndjson, "RUN_ROWS", 4):  # runs pyarrow accepts between refused ones
        fast = read_proofs(data)
        with mock.patch.object(ndjson.Reader, "_fast_rows", lambda self, block, lines: None):
            exact = read_proofs(data)
    assert fast.equals(exact)


@given(st.lists(st.tuples(latitudes, longitudes), min_size=1, max_size=50))
@settings(max_examples=25, deadline=None)
def test_ndjson_numbers_arrive_bit_for_bit(points):
    table = read_proofs(_ndjson_bytes([{**proof(i), "lat": lat, "lon": lon}
                                       for i, (lat, lon) in enumerate(points)]))
    for name, sent in (("lat", [lat for lat, _ in points]), ("lon", [lon for _, lon in points])):
        got = table.column(name).to_numpy()[1:]
        assert got.view(np.int64).tolist() == np.array(sent, np.float64).view(np.int64).tolist()


# ---------------------------------------------------------------- unreadable sources

def _truncated(path: pathlib.Path) -> pathlib.Path:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


UNREADABLE = {
    "missing file": lambda tmp: tmp / "nope.parquet",
    "directory": lambda tmp: tmp,
    "truncated parquet": lambda tmp: _truncated(
        write_arrow(tmp / "t.parquet", pa.Table.from_pylist(ROWS), "parquet")),
    "corrupt parquet": lambda tmp: _write(tmp / "c.parquet", "PAR1 this is not a parquet file"),
    "truncated ipc file": lambda tmp: _truncated(
        write_arrow(tmp / "t.arrow", pa.Table.from_pylist(ROWS), "file")),
    "truncated ipc stream": lambda tmp: _truncated(
        write_arrow(tmp / "t.ipc", pa.Table.from_pylist(ROWS), "stream")),
    "unknown format": lambda tmp: _write(tmp / "x.bin", "hello, proofs"),
    "empty unknown file": lambda tmp: _write(tmp / "x.bin", ""),
    "invalid json file": lambda tmp: _write(tmp / "x.json", "[{\"payload\": "),
    "json scalar": lambda tmp: _write(tmp / "x.json", "42"),
    "not a source": lambda tmp: 42,
    "empty path list for iter_proofs": lambda tmp: [],
}


@pytest.mark.parametrize("kind", UNREADABLE)
def test_an_unreadable_source_raises_one_clear_proof_source_error(kind, tmp_path):
    source = UNREADABLE[kind](tmp_path)
    with pytest.raises(ProofSourceError) as caught:
        list(iter_proofs(source))
    assert "\n" not in str(caught.value) and str(caught.value)


def test_read_proofs_raises_for_a_missing_path_in_a_list(tmp_path):
    with pytest.raises(ProofSourceError, match="no such file"):
        read_proofs([write_ndjson(tmp_path / "a.ndjson", ROWS[:1]), tmp_path / "b.ndjson"])


# ---------------------------------------------------------------- streaming and resuming

FORMATS = {
    "ndjson": lambda tmp: write_ndjson(tmp / "s.ndjson", [api(r) for r in ROWS]),
    "parquet": lambda tmp: write_arrow(tmp / "s.parquet", pa.Table.from_pylist(ROWS), "parquet"),
    "ipc file": lambda tmp: write_arrow(tmp / "s.arrow", pa.Table.from_pylist(ROWS), "file"),
    "ipc stream": lambda tmp: write_arrow(tmp / "s.ipc", pa.Table.from_pylist(ROWS), "stream"),
    "json": lambda tmp: _write(tmp / "s.json", json.dumps([api(r) for r in ROWS])),
    "two files": lambda tmp: [
        write_arrow(tmp / "a.parquet", pa.Table.from_pylist(ROWS[:17]), "parquet"),
        write_ndjson(tmp / "b.ndjson", ROWS[17:])],
}


@pytest.mark.parametrize("kind", FORMATS)
@pytest.mark.parametrize("skip", [0, 1, 7, 10, 17, 23, 39, 40, 55])
def test_iter_proofs_resumes_exactly_after_skip_rows(kind, skip, tmp_path, small_blocks):
    source = FORMATS[kind](tmp_path)
    chunks = list(iter_proofs(source, batch_size=10, skip_rows=skip))
    assert all(0 < len(chunk.table) <= 10 for chunk in chunks)
    assert [chunk.first_row for chunk in chunks] == \
        list(np.cumsum([min(skip, 40)] + [len(c.table) for c in chunks])[:-1])
    rows = pa.concat_tables([c.table for c in chunks]) if chunks else EXPECTED.slice(40)
    assert rows.select(PROOF_COLUMNS).equals(read_proofs(source).slice(skip).select(PROOF_COLUMNS))


def test_chunks_never_span_sources_and_name_their_source(tmp_path):
    sources = FORMATS["two files"](tmp_path)
    chunks = list(iter_proofs(sources, batch_size=10))
    assert [(pathlib.Path(c.source).name, c.first_row, len(c.table)) for c in chunks] == [
        ("a.parquet", 0, 10), ("a.parquet", 10, 7), ("b.ndjson", 17, 10), ("b.ndjson", 27, 10),
        ("b.ndjson", 37, 3)]


def test_line_numbers_after_a_skip_are_those_of_the_file(tmp_path, small_blocks):
    lines = [json.dumps(r) for r in ROWS[:30]]
    lines[24] = json.dumps({**ROWS[24], "lat": "x"})
    path = _write(tmp_path / "l.ndjson", "\n\n".join(lines))  # every other line blank
    chunk = next(iter_proofs(path, batch_size=100, skip_rows=20))
    assert chunk.first_row == 20
    assert chunk.table.column("payload_error").to_pylist()[4] == \
        "line 49: lat: expected a JSON number, got string 'x'"


# ---------------------------------------------------------------- extra columns

def test_extra_columns_are_carried_through_untouched(tmp_path):
    source = pa.Table.from_pylist(ROWS[:4]).append_column(
        "tags", pa.array([[1], [], None, [2, 3]], pa.list_(pa.int32()))).append_column(
        "meta", pa.array([{"a": 1}, {"a": 2}, None, {"a": 4}], pa.struct([("a", pa.int8())])))
    source = source.append_column(
        "seen_at", pa.array([1, 2, 3, 4], pa.timestamp("us", tz="Asia/Tokyo")))
    table = read_proofs(write_arrow(tmp_path / "x.parquet", source, "parquet"))
    for name in ("expected_code", "seq", "tags", "meta", "seen_at"):
        assert table.schema.field(name) == source.schema.field(name)
        assert table.column(name).equals(source.column(name))


def test_received_at_may_be_an_arrow_timestamp_or_epoch_ms_column():
    source = pa.Table.from_pylist(ROWS[:2]).drop_columns(["received_at"])
    as_time = source.append_column("received_at", pa.array([1_000, 2_000], pa.timestamp("ms")))
    as_ms = source.append_column("received_at", pa.array([1_000, 2_000], pa.int64()))
    for table in (read_proofs(as_time), read_proofs(as_ms)):
        assert table.column("received_at").cast(pa.int64()).to_pylist() == [1_000, 2_000]
        assert table.column("payload_error").null_count == 2


def test_extra_json_columns_of_mixed_types_are_kept_as_json_text(small_blocks):
    rows = [{**proof(i), "note": i if i % 2 else f"n{i}"} for i in range(4)]
    table = read_proofs(rows)
    assert table.column("note").to_pylist() == ['"n0"', "1", '"n2"', "3"]
