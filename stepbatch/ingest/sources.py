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
A `payload_error` is kept only from an in-memory table that stepbatch read before (it names where
each row came from); from any other source, as `ts_ms` and `triangle_key` always are, it is derived
afresh, so no input can write its own verdict. Python `[]` is an empty batch. A source that cannot be read at
all raises `ProofSourceError`.

This module finds and reads the sources; `stepbatch.ingest.ndjson` frames NDJSON into line-numbered rows
and `stepbatch.ingest.table` turns the pieces read into PROOF_SCHEMA tables.
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
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from stepbatch.ingest import ndjson
from stepbatch.ingest import table as proof_table
from stepbatch.ingest.fields import describe_json
from stepbatch.schema import API_KEYS, PROOF_SCHEMA, SIGNED_FIELDS


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
    return proof_table.concat(tables) if tables else PROOF_SCHEMA.empty_table()


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
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise ProofSourceError(f"{path}: is {kind}-compressed; decompress it first (or write "
                                   f"Parquet, which compresses inside the file)")
    return _Input(str(path), _SUFFIXES.get(path.suffix.lower()) or _sniff(head, str(path)), path)


_NOT_TEXT = ndjson.BadLine("a string holds a lone surrogate, which is not a Unicode character")
_COMPRESSED = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bzip2",
               b"\xfd7zXZ\x00": "xz"}


def _sniff(head: bytes, name: str) -> str:
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith((b"ARROW1", b"\xff\xff\xff\xff")):
        return "ipc"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if b"\r" in text.rstrip(b"\r") and b"\n" not in text:
        raise ProofSourceError(f"{name}: lines end in a lone CR (\\r); NDJSON lines end in \\n or "
                               f"\\r\\n, so convert the line endings first")
    if text.startswith(b"{"):
        first = text.split(b"\n", 1)[0]
        if ndjson.too_deep(first):
            return "ndjson"  # one whole line, too deep to read: a bad row of NDJSON
        try:
            json.loads(first)
        except ValueError:
            return "json"
        return "ndjson"
    if text.startswith(b"["):
        return "json"
    raise ProofSourceError(f"{name}: unknown format (expected JSON, NDJSON, Parquet or Arrow IPC)")


def _read(item: _Input, batch_rows: int | None, skip: int, named: bool) -> Iterator[pa.Table]:
    where = (f"{pathlib.Path(item.name).name} " if named else "") + \
        ("line" if item.kind == "ndjson" else "row")
    try:
        for raw, numbers in _READERS[item.kind](item, batch_rows, skip):
            parts = raw.parts if isinstance(raw, ndjson.Group) else [raw]
            parsed = proof_table.merge([
                proof_table.from_objects(part) if isinstance(part, list) else proof_table.from_arrow(
                    part, trusted=item.kind == "table" and proof_table.made_here(part))
                for part in parts])
            yield proof_table.finish(parsed, numbers, where)
    except (pa.ArrowException, OSError) as err:
        raise ProofSourceError(f"{item.name}: cannot read {item.kind}: {_one_line(err)}") from err


def _read_rows(item: _Input, batch_rows: int | None, skip: int):
    rows = _load_json(item) if item.kind == "json" else item.value
    start = min(skip, len(rows))
    item.rows_skipped = start
    step = batch_rows or max(len(rows) - start, 1)
    for first in range(start, len(rows), step):
        part = rows[first:first + step]
        if item.kind == "records":
            # Python strings can hold lone surrogates, which no UTF-8 column can.
            part = [_NOT_TEXT if ndjson.has_surrogate(row) else row for row in part]
        yield part, np.arange(first + 1, first + 1 + len(part))


def _load_json(item: _Input) -> list:
    with item.open() as handle:
        data = handle.read()
    text = data.removeprefix(b"\xef\xbb\xbf")
    try:
        if ndjson.too_deep(text):
            return ndjson.split_document(text.decode())
        document = json.loads(text)
    except UnicodeDecodeError as err:
        raise ProofSourceError(f"{item.name}: not valid UTF-8: {_one_line(err)}") from err
    except ValueError as err:
        raise ProofSourceError(f"{item.name}: not valid JSON: {_one_line(err)}") from err
    if b"\\u" in text and ndjson.has_surrogate(document):
        return ndjson.split_document(text.decode())
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
            whole = proof_table.concat(pending)
            yield whole.slice(0, size)
            pending, count = [whole.slice(size)], count - size
    if count:
        yield proof_table.concat(pending)


# ---------------------------------------------------------------- NDJSON

# Explicit types make pyarrow refuse a string or a boolean where a number belongs (and the other
# way round), so a block it accepts needs no per-value type check.
_NDJSON_SCHEMA = pa.schema(
    [pa.field(name, PROOF_SCHEMA.field(name).type) for name in (*SIGNED_FIELDS, "signature")]
    + [pa.field("received_at", pa.string()),
       pa.field("payload", pa.struct([pa.field(API_KEYS[f], PROOF_SCHEMA.field(f).type)
                                      for f in SIGNED_FIELDS]))])


def _read_ndjson(item: _Input, batch_rows: int | None, skip: int):
    reader = ndjson.Reader(_NDJSON_SCHEMA, proof_table.concat)
    with item.open() as handle:
        for group, numbers in reader.groups(handle, skip):
            item.rows_skipped = reader.rows_skipped
            yield group, numbers
    item.rows_skipped = reader.rows_skipped


_READERS = {"table": _read_rows, "records": _read_rows, "json": _read_rows,
            "ndjson": _read_ndjson, "parquet": _read_parquet, "ipc": _read_ipc}


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
