"""Stage 1: proofs from any source to Arrow tables in PROOF_SCHEMA (SPEC §2, §6).

Sources: the API shape `{"payload": {...}, "signature": "0x…"}` or the flat shape, as a dict, a list
of dicts, JSON text or bytes, a `pa.Table`/`pa.RecordBatch`/`polars.DataFrame`, a path, or a list of
paths (read in order). Files are told apart by extension (.json, .ndjson/.jsonl, .parquet/.pq,
.arrow/.ipc/.feather), else by their first bytes (`PAR1`, `ARROW1`, the IPC stream marker, `{`, `[`).
JSON text whose first line is a whole JSON value is NDJSON; otherwise it is one document.

Every input row gives one output row, in input order. A row that breaks a field rule keeps its
place with `payload_error` saying why, prefixed by where it came from: "line 17: " for NDJSON
(1-based; blank lines are counted as lines but are not rows) and "row 5: " for everything else
(1-based), with the file name first ("b.ndjson line 3: ") when several paths are read together.
A `payload_error` the source already carries (a table read before) is kept; `ts_ms` and
`triangle_key` are derived afresh. Python `[]` is an empty batch. A source that cannot be read at
all raises `ProofSourceError`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from stepbatch import ndjson
from stepbatch.fields import FIELD_ORDER, Column, check_fields, coerce_arrow, coerce_json, \
    describe_json
from stepbatch.schema import API_KEYS, PROOF_COLUMNS, PROOF_SCHEMA, SIGNED_FIELDS


class ProofSourceError(ValueError):
    """The source cannot be read at all (missing, corrupt, unknown format): no row can be judged."""


class ProofChunk(NamedTuple):
    table: pa.Table  # PROOF_SCHEMA, then the source's extra columns
    source: str  # the path the rows came from, or "<table>", "<records>", "<text>"
    first_row: int  # index of the chunk's first row among the rows of all sources, from 0


def read_proofs(source) -> pa.Table:
    """Every proof in `source` as one table in PROOF_SCHEMA, extra source columns after it."""
    if isinstance(source, list) and not source:
        return PROOF_SCHEMA.empty_table()
    tables = [chunk.table for chunk in iter_proofs(source, batch_size=None)]
    return _concat(tables) if tables else PROOF_SCHEMA.empty_table()


def iter_proofs(sources, batch_size: int | None = 10_000, skip_rows: int = 0
                ) -> Iterator[ProofChunk]:
    """Stream proofs in chunks of `batch_size` rows, after the first `skip_rows` rows of all
    sources together; a source's last chunk may be shorter, and no chunk spans two sources.

    Parquet is read by row group, Arrow IPC batch by batch and NDJSON in blocks of lines, so memory
    stays bounded by the batch size; a .json document is parsed whole. To resume, pass the
    `first_row + len(table)` of the last chunk done as `skip_rows`.
    """
    if isinstance(sources, list) and not sources:
        raise ProofSourceError("no proof sources given")
    many = isinstance(sources, list) and all(_is_path(s) for s in sources)
    inputs = [_as_input(s) for s in (sources if many else [sources])]
    row = 0
    for item in inputs:
        emitted = 0
        for table in _rechunk(_read(item, batch_size, max(skip_rows - row, 0), len(inputs) > 1),
                              batch_size):
            yield ProofChunk(table, item.name, row + item.rows_skipped + emitted)
            emitted += len(table)
        row += item.rows_skipped + emitted


# ---------------------------------------------------------------- sources

@dataclasses.dataclass
class _Input:
    name: str
    kind: str  # table | records | json | ndjson | parquet | ipc
    path: pathlib.Path | None = None
    data: bytes | None = None
    value: object = None  # the rows of a table or records source
    rows_skipped: int = 0  # set by the reader before it yields its first piece

    def open(self):
        return open(self.path, "rb") if self.path is not None else io.BytesIO(self.data)

    def arrow_file(self):
        return str(self.path) if self.path is not None else pa.BufferReader(self.data)


_SUFFIXES = {".ndjson": "ndjson", ".jsonl": "ndjson", ".parquet": "parquet", ".pq": "parquet",
             ".arrow": "ipc", ".ipc": "ipc", ".feather": "ipc"}


def _is_path(value) -> bool:
    return isinstance(value, os.PathLike) or (isinstance(value, str)
                                              and value.lstrip()[:1] not in ("{", "["))


def _as_input(source) -> _Input:
    if isinstance(source, pa.RecordBatch):
        source = pa.Table.from_batches([source])
    if type(source).__module__.startswith("polars"):
        source = source.to_arrow()
    if isinstance(source, pa.Table):
        return _Input("<table>", "table", value=source)
    if isinstance(source, (dict, list, tuple)):
        return _Input("<records>", "records",
                      value=[source] if isinstance(source, dict) else list(source))
    if isinstance(source, (bytes, bytearray, memoryview)) or (isinstance(source, str)
                                                              and not _is_path(source)):
        data = source.encode() if isinstance(source, str) else bytes(source)
        return _Input("<text>", _sniff(data[:65536], "<text>"), data=data)
    if not isinstance(source, (str, os.PathLike)):
        raise ProofSourceError(f"cannot read proofs from a {type(source).__name__}")
    path = pathlib.Path(source)
    if not path.is_file():
        raise ProofSourceError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}")
    try:
        with open(path, "rb") as handle:
            head = handle.read(65536)
    except OSError as err:
        raise ProofSourceError(f"{path}: cannot read: {err.strerror or err}") from err
    return _Input(str(path), _SUFFIXES.get(path.suffix.lower()) or _sniff(head, str(path)), path)


def _sniff(head: bytes, name: str) -> str:
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith((b"ARROW1", b"\xff\xff\xff\xff")):
        return "ipc"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"{"):
        try:
            json.loads(text.split(b"\n", 1)[0])
            return "ndjson"
        except ValueError:
            return "json"
    if text.startswith(b"["):
        return "json"
    raise ProofSourceError(f"{name}: unknown format (expected JSON, NDJSON, Parquet or Arrow IPC)")


def _read(item: _Input, batch_rows: int | None, skip: int, named: bool) -> Iterator[pa.Table]:
    where = (f"{pathlib.Path(item.name).name} " if named else "") + \
        ("line" if item.kind == "ndjson" else "row")
    try:
        for raw, numbers in _READERS[item.kind](item, batch_rows, skip):
            parts = raw.parts if isinstance(raw, ndjson.Group) else [raw]
            parsed = _merge([_from_objects(part) if isinstance(part, list) else _from_arrow(part)
                             for part in parts])
            yield _finish(parsed, numbers, where)
    except (pa.ArrowException, OSError) as err:
        raise ProofSourceError(f"{item.name}: cannot read {item.kind}: {_one_line(err)}") from err


def _read_rows(item: _Input, batch_rows: int | None, skip: int):
    rows = _load_json(item) if item.kind == "json" else item.value
    start = min(skip, len(rows))
    item.rows_skipped = start
    step = batch_rows or max(len(rows) - start, 1)
    for first in range(start, len(rows), step):
        part = rows[first:first + step]
        yield part, np.arange(first + 1, first + 1 + len(part))


def _load_json(item: _Input) -> list:
    with item.open() as handle:
        data = handle.read()
    try:
        document = json.loads(data.removeprefix(b"\xef\xbb\xbf"))
    except ValueError as err:
        raise ProofSourceError(f"{item.name}: not valid JSON: {_one_line(err)}") from err
    if not isinstance(document, (dict, list)):
        raise ProofSourceError(f"{item.name}: expected a JSON object or array, got "
                               f"{describe_json(document)}")
    return [document] if isinstance(document, dict) else document


def _read_parquet(item: _Input, batch_rows: int | None, skip: int):
    if batch_rows is None and not skip:
        # One call decodes the column chunks on all cores; batches only serve bounded memory.
        table = pq.read_table(item.arrow_file())
        yield table, np.arange(1, len(table) + 1)
        return
    # Buffered page reads: without them a whole row group (often the whole file) is read at once.
    parquet = pq.ParquetFile(item.arrow_file(), buffer_size=1 << 20, pre_buffer=False)
    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    first_group = int(np.searchsorted(np.cumsum(sizes), skip, side="right"))
    item.rows_skipped = sum(sizes[:first_group])
    batches = parquet.iter_batches(batch_size=batch_rows or 65_536,
                                   row_groups=range(first_group, len(sizes)))
    yield from _skip_rows(_numbered(batches, item.rows_skipped), item, skip)


def _read_ipc(item: _Input, batch_rows: int | None, skip: int):
    with item.open() as handle:
        head = handle.read(8)
    if head.startswith(b"ARROW1"):
        reader = ipc.open_file(item.arrow_file())
        batches: Iterable = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        batches = ipc.open_stream(item.arrow_file())
    yield from _skip_rows(_numbered(batches, 0), item, skip)


def _numbered(batches: Iterable[pa.RecordBatch], row: int):
    for batch in batches:
        yield pa.Table.from_batches([batch]), np.arange(row + 1, row + 1 + batch.num_rows)
        row += batch.num_rows


def _skip_rows(pieces, item: _Input, skip: int):
    for raw, numbers in pieces:
        cut = min(skip - item.rows_skipped, len(numbers))
        item.rows_skipped += cut
        if cut < len(numbers):
            yield raw[cut:], numbers[cut:]


def _rechunk(tables: Iterable[pa.Table], size: int | None) -> Iterator[pa.Table]:
    pending: list[pa.Table] = []
    count = 0
    for table in tables:
        if not size:
            yield table
            continue
        pending.append(table)
        count += len(table)
        while count >= size:
            whole = _concat(pending)
            yield whole.slice(0, size)
            pending, count = [whole.slice(size)], count - size
    if count:
        yield _concat(pending)


# ---------------------------------------------------------------- NDJSON

# Read sizes for stepbatch.ndjson, looked up per source so that tests can shrink them.
_BLOCK_BYTES = 4 << 20
_GROUP_ROWS = 65_536
_RUN_ROWS = 256
_NDJSON_SCHEMA = pa.schema(
    [pa.field(name, PROOF_SCHEMA.field(name).type) for name in (*SIGNED_FIELDS, "signature")]
    + [pa.field("received_at", pa.string()),
       pa.field("payload", pa.struct([pa.field(API_KEYS[f], PROOF_SCHEMA.field(f).type)
                                      for f in SIGNED_FIELDS]))])
# Explicit types make pyarrow refuse a string or a boolean where a number belongs (and the other
# way round), so a block it accepts needs no per-value type check.
_PARSE = pajson.ParseOptions(explicit_schema=_NDJSON_SCHEMA, unexpected_field_behavior="infer")
_READ = pajson.ReadOptions(block_size=1 << 20)


def _read_ndjson(item: _Input, batch_rows: int | None, skip: int):
    reader = ndjson.Reader(fast=_fast, concat=_concat, block_bytes=_BLOCK_BYTES,
                           run_rows=_RUN_ROWS, group_rows=_GROUP_ROWS)
    with item.open() as handle:
        for group, numbers in reader.groups(handle, skip):
            item.rows_skipped = reader.rows_skipped
            yield group, numbers
    item.rows_skipped = reader.rows_skipped


def _fast(data: bytes) -> pa.Table | None:
    """pyarrow's reading of `data` (in sub-blocks on all cores), or None when it refuses it."""
    try:
        return pajson.read_json(pa.BufferReader(data), read_options=_READ, parse_options=_PARSE)
    except pa.ArrowInvalid:
        return None


_READERS = {"table": _read_rows, "records": _read_rows, "json": _read_rows,
            "ndjson": _read_ndjson, "parquet": _read_parquet, "ipc": _read_ipc}


# ---------------------------------------------------------------- rows to PROOF_SCHEMA

class _Parsed(NamedTuple):
    columns: dict[str, Column]
    row_error: pa.Array | None  # a problem with the whole row, before any field rule
    prior_error: pa.Array | None  # the source's own payload_error column
    extras: list[tuple[pa.Field, pa.Array | pa.ChunkedArray]]


def _from_arrow(raw: pa.Table) -> _Parsed:
    """A flat table, an API-shape one (a struct column `payload`) or, as NDJSON gives it, a mix
    row by row: a row with a payload takes its signed fields from it."""
    num_rows, names = raw.num_rows, raw.column_names

    def column(name):
        return raw.column(names.index(name)) if name in names else None

    payload = column("payload")
    payload = payload if payload is not None and pa.types.is_struct(payload.type) else None
    api_rows = 0 if payload is None else num_rows - payload.null_count
    columns = {field: coerce_arrow(field, column(field), num_rows)
               for field in FIELD_ORDER if api_rows < num_rows or field not in SIGNED_FIELDS}
    if api_rows:
        payload = payload.combine_chunks()
        keys = {payload.type.field(i).name for i in range(payload.type.num_fields)}
        for field in SIGNED_FIELDS:
            key = API_KEYS[field]
            api = coerce_arrow(field, pc.struct_field(payload, key) if key in keys else None,
                               num_rows)
            columns[field] = api if api_rows == num_rows else \
                _choose(payload.is_valid(), api, columns[field])
    prior = column("payload_error")
    prior = prior.combine_chunks().cast(pa.string()) if prior is not None and (
        pa.types.is_string(prior.type) or pa.types.is_large_string(prior.type)) else None
    consumed = set(PROOF_COLUMNS) | ({"payload"} if payload is not None else set())
    extras = [(raw.schema.field(i), raw.column(i)) for i, name in enumerate(names)
              if name not in consumed]
    return _Parsed(columns, None, prior, extras)


def _choose(mask: pa.Array, when_true: Column, when_false: Column) -> Column:
    values = pc.if_else(mask, when_true.values, when_false.values)
    if when_true.type_error is None and when_false.type_error is None:
        return Column(values)
    nulls = pa.nulls(len(mask), pa.string())
    return Column(values, pc.if_else(mask, when_true.type_error or nulls,
                                     when_false.type_error or nulls))


_SOURCE_COLUMNS = PROOF_COLUMNS.index("ts_ms")  # the columns before it are taken from the source
_NOTHING: dict = {}
_TOP_LEVEL = frozenset({"payload", "signature", "received_at", *PROOF_COLUMNS})


def _from_objects(objects: list) -> _Parsed:
    """Parsed JSON values: dicts of either shape; anything else is a row error."""
    sources, is_api, row_errors = [], [], []
    for obj in objects:
        error, source, api = None, _NOTHING, False
        if isinstance(obj, ndjson.BadLine):
            error = obj.message
        elif not isinstance(obj, dict):
            error = f"expected a JSON object, got {describe_json(obj)}"
        elif obj.get("payload") is None:
            source = obj
        elif isinstance(obj["payload"], dict):
            source, api = obj["payload"], True
        else:
            error = f"payload: expected a JSON object, got {describe_json(obj['payload'])}"
        sources.append(source), is_api.append(api), row_errors.append(error)
    tops = [obj if isinstance(obj, dict) else _NOTHING for obj in objects]
    columns = {}
    for field in FIELD_ORDER:
        api_key = API_KEYS.get(field)
        values = [s.get(api_key) if api else s.get(field) for s, api in zip(sources, is_api)] \
            if api_key else [top.get(field) for top in tops]
        columns[field] = coerce_json(field, values)
    prior = [top.get("payload_error") for top in tops]
    prior_error = pa.array([p if isinstance(p, str) else None for p in prior], pa.string()) \
        if any(p is not None for p in prior) else None
    # Key order of first appearance; one pass over the few distinct key tuples, not every key.
    extra_names = [key for key in dict.fromkeys(key for keys in dict.fromkeys(map(tuple, tops))
                                                for key in keys) if key not in _TOP_LEVEL]
    extras = [(pa.field(name, array.type), array) for name in extra_names
              for array in [_extra_column([top.get(name) for top in tops])]]
    return _Parsed(columns, pa.array(row_errors, pa.string()) if any(row_errors) else None,
                   prior_error, extras)


def _extra_column(values: list) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return _json_text(values)


def _json_text(values: list) -> pa.Array:
    """Values of mixed JSON types have no one Arrow type: such a column is kept as JSON text."""
    return pa.array([None if v is None else json.dumps(v, default=str) for v in values],
                    pa.string())


def _merge(parts: list[_Parsed]) -> _Parsed:
    """One _Parsed of consecutive parts of a source."""
    if len(parts) == 1:
        return parts[0]
    sizes = [len(part.columns["version"].values) for part in parts]

    def joined(arrays: list) -> pa.ChunkedArray | None:
        if all(array is None for array in arrays):
            return None
        return _chunked([pa.nulls(size, pa.string()) if array is None else array
                         for array, size in zip(arrays, sizes)])

    columns = {field: Column(_chunked([part.columns[field].values for part in parts]),
                             joined([part.columns[field].type_error for part in parts]))
               for field in FIELD_ORDER}
    # A row-count column keeps the length of parts without extras through the concatenation.
    extras = _concat([pa.Table.from_arrays([pa.nulls(size)] + [array for _, array in part.extras],
                                           schema=pa.schema([pa.field("", pa.null())]
                                                            + [field for field, _ in part.extras]))
                      for part, size in zip(parts, sizes)])
    return _Parsed(columns, joined([part.row_error for part in parts]),
                   joined([part.prior_error for part in parts]),
                   list(zip(extras.schema, extras.columns))[1:])


def _chunked(arrays: list) -> pa.ChunkedArray:
    """The arrays one after another, without copying them."""
    return pa.chunked_array([chunk for array in arrays for chunk in (
        array.chunks if isinstance(array, pa.ChunkedArray) else [array])], type=arrays[0].type)


def _finish(parsed: _Parsed, numbers: np.ndarray, where: str) -> pa.Table:
    """The PROOF_SCHEMA table: checked fields, located errors, then the source's extra columns."""
    checks = check_fields(parsed.columns, parsed.row_error)
    error = checks.payload_error
    if error.null_count < len(error):
        failed = np.asarray(error.is_valid())
        located = pc.binary_join_element_wise(
            f"{where} ", pa.array(numbers[failed]).cast(pa.string()), ": ",
            error.filter(pa.array(failed)), "")
        error = pc.replace_with_mask(error, pa.array(failed), located)
    if parsed.prior_error is not None:
        error = pc.coalesce(parsed.prior_error, error)
    arrays = [parsed.columns[name].values for name in PROOF_COLUMNS[:_SOURCE_COLUMNS]]
    arrays += [checks.ts_ms, checks.triangle_key, error] + [array for _, array in parsed.extras]
    return pa.Table.from_arrays(
        arrays, schema=pa.schema(list(PROOF_SCHEMA) + [field for field, _ in parsed.extras]))


def _concat(tables: list[pa.Table]) -> pa.Table:
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException:
        kinds: dict[str, set] = {}
        for field in (f for table in tables for f in table.schema if f.name not in PROOF_COLUMNS):
            kinds.setdefault(field.name, set()).add(field.type)
        mixed = {name for name, types in kinds.items() if len(types - {pa.null()}) > 1}
        return pa.concat_tables(
            [_texts(table, mixed) for table in tables], promote_options="permissive")


def _texts(table: pa.Table, names: set[str]) -> pa.Table:
    for i, name in enumerate(table.column_names):
        if name in names:
            table = table.set_column(i, pa.field(name, pa.string()),
                                     _json_text(table.column(i).to_pylist()))
    return table


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
