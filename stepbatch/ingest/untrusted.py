"""Proofs from bytes nobody vouches for (a request body): every cost bounded before it is paid.

`read_proofs` trusts its input to be a file someone meant to replay; a request body may be built to
crash or flood the reader. Here, before any parser sees the bytes:
- JSON and NDJSON are scanned for their nesting depth and their number of rows (`ndjson.json_shape`,
  bounded memory), then parsed by orjson, never by pyarrow's JSON reader (which crashes the process
  on a deep enough text);
- an Arrow IPC stream is walked message by message from its own framing and metadata: every record
  batch, dictionary batch and array in it is at most `max_rows` long, the batches together too, no
  body is compressed (a small body could decompress to gigabytes), and only the proof fields are
  decoded, each of a plain type; a dictionary-encoded field is decoded only when its values fit in
  the body's own size.
What is refused raises `RowLimitExceeded` (too many rows) or `ProofSourceError` (unreadable).
"""

from __future__ import annotations

import json
import struct

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from stepbatch.ingest import ndjson
from stepbatch.ingest import table as proof_table
from stepbatch.ingest.sources import ProofSourceError
from stepbatch.schema import API_KEYS, PROOF_SCHEMA, SIGNED_FIELDS

ARROW_STREAM = "application/vnd.apache.arrow.stream"
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/x-jsonlines"})
MAX_BATCHES = 1024  # record batches in one stream: each costs a table of its own
# Fields decoded from an Arrow stream: the signed ones, in either shape. `received_at` is the
# server's to set, and the derived columns are derived afresh.
ARROW_FIELDS = frozenset({*SIGNED_FIELDS, "signature", "payload"})


class RowLimitExceeded(ProofSourceError):
    """More rows than one request may carry."""


def read_untrusted(body: bytes, kind: str, max_rows: int) -> pa.Table:
    """The proofs of a request body in PROOF_SCHEMA; `kind` is its media type, lower case, without
    parameters (an Arrow stream is also told by its first bytes)."""
    if kind == ARROW_STREAM or body[:4] == b"\xff\xff\xff\xff":
        return _arrow_stream(body, max_rows)
    text = body.removeprefix(b"\xef\xbb\xbf").strip()
    if not text:
        return PROOF_SCHEMA.empty_table()
    if kind not in NDJSON_TYPES and (text.startswith(b"[") or not _whole_value(text.split(b"\n", 1)[0])):
        # One document: an array of proofs, or one proof written over several lines.
        shape = ndjson.json_shape(text)
        if shape.top_items > max_rows:
            raise RowLimitExceeded(f"the array holds {shape.top_items:,} proofs; at most {max_rows:,} "
                                   f"go in one request")
        if shape.depth > ndjson.MAX_DEPTH:
            raise ProofSourceError(f"not valid JSON here: nested deeper than {ndjson.MAX_DEPTH} levels")
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError:
            document = _python_json(text)  # what orjson refuses but JSON allows: integers past 64 bits
        return _finish(document, np.arange(1, len(document) + 1) if isinstance(document, list) else None, "row")
    return _ndjson(text, max_rows)


def _python_json(text: bytes):
    try:
        return json.loads(text)  # safe at this depth (see ndjson.too_deep)
    except (ValueError, RecursionError) as err:
        raise ProofSourceError(f"not valid JSON: {' '.join(str(err).split())[:200]}") from None


def _whole_value(line: bytes) -> bool:
    """Whether a first line is a JSON value by itself (then the body is NDJSON, as files are told)."""
    if ndjson.too_deep(line):
        return True  # a bad row of NDJSON
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return not isinstance(ndjson.decode_value(line), ndjson.BadLine)
    return True


def _ndjson(text: bytes, max_rows: int) -> pa.Table:
    lines = text.count(b"\n") + 1
    if lines > max_rows:
        raise RowLimitExceeded(f"the body holds {lines:,} lines; at most {max_rows:,} proofs go in one request")
    values, numbers = [], []
    for number, line in enumerate(text.split(b"\n"), 1):
        line = line.strip()
        if not line:
            continue
        try:
            value = orjson.loads(line) if not ndjson.too_deep(line) else ndjson.decode_value(line)
        except orjson.JSONDecodeError:
            value = ndjson.decode_value(line)  # its message, as a file's bad line gets
        values.append(value)
        numbers.append(number)
    return _finish(values, np.array(numbers, np.int64), "line")


def _finish(values, numbers: np.ndarray, where: str) -> pa.Table:
    if isinstance(values, dict):
        values, numbers = [values], np.ones(1, np.int64)
    if not isinstance(values, list):
        raise ProofSourceError("expected a JSON array of proofs, NDJSON, or one proof object")
    if not values:
        return PROOF_SCHEMA.empty_table()
    return proof_table.finish(proof_table.from_objects(values), numbers, where)


# ------------------------------------------------------------------------------ Arrow IPC

def _arrow_stream(body: bytes, max_rows: int) -> pa.Table:
    messages = _walk_stream(body, max_rows)
    try:
        reader = ipc.open_stream(pa.BufferReader(body))
        schema = reader.schema
        wanted = [i for i, field in enumerate(schema) if field.name in ARROW_FIELDS]
        for i in wanted:
            _check_type(schema.field(i).name, schema.field(i).type)
        reader = ipc.open_stream(pa.BufferReader(body), options=ipc.IpcReadOptions(included_fields=wanted))
        batches = []
        for batch in reader:
            batch.validate(full=True)
            batches.append(batch)
        table = pa.Table.from_batches(batches, reader.schema)
    except (pa.ArrowException, OSError, ValueError) as err:
        if isinstance(err, ProofSourceError):
            raise
        raise ProofSourceError(f"not a readable Arrow IPC stream: {' '.join(str(err).split())[:300]}") from None
    if messages == 0 or table.num_rows == 0:
        return PROOF_SCHEMA.empty_table()
    table = _decoded(table, len(body))
    parsed = proof_table.from_arrow(table)
    return proof_table.finish(parsed, np.arange(1, table.num_rows + 1), "row")


_PLAIN = (pa.types.is_null, pa.types.is_boolean, pa.types.is_integer, pa.types.is_floating,
          pa.types.is_decimal, pa.types.is_string, pa.types.is_large_string, pa.types.is_timestamp)


def _check_type(name: str, kind: pa.DataType) -> None:
    """A proof field is a plain value (or the payload a struct of them): a list, a view, a run-end
    encoding or a union can stand for far more values than its bytes, and no field is one."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if name == "payload" and pa.types.is_struct(kind):
        for i in range(kind.num_fields):
            child = kind.field(i)
            if child.name in API_KEYS.values():
                _check_type(child.name, child.type)
        return
    if not any(test(kind) for test in _PLAIN):
        raise ProofSourceError(f"column {name!r}: an Arrow {kind} column cannot hold a proof field; "
                               f"send strings and float64 numbers")


def _decoded(table: pa.Table, budget_bytes: int) -> pa.Table:
    """The table with dictionary-encoded fields decoded, once their values are known to fit in
    `budget_bytes`: a few short dictionary entries may stand for any number of long strings."""
    for i, field in enumerate(table.schema):
        if pa.types.is_struct(field.type) or pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, _decoded_array(field.name, table.column(i).combine_chunks(),
                                                                   budget_bytes))
    return table


def _decoded_array(name: str, array: pa.Array, budget_bytes: int) -> pa.Array:
    if pa.types.is_struct(array.type):
        children = [_decoded_array(array.type.field(i).name, array.field(i), budget_bytes)
                    for i in range(array.type.num_fields)]
        if all(child.type == array.type.field(i).type for i, child in enumerate(children)):
            return array
        names = [array.type.field(i).name for i in range(array.type.num_fields)]
        return pa.StructArray.from_arrays(children, names=names, mask=pc.invert(array.is_valid()))
    if not pa.types.is_dictionary(array.type):
        return array
    values = array.dictionary
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        size = pc.sum(pc.binary_length(values).take(array.indices)).as_py() or 0
        if size > budget_bytes:
            raise ProofSourceError(f"column {name!r}: its dictionary decodes to more than {budget_bytes:,} bytes")
    return array.cast(array.type.value_type)


_SCHEMA, _DICTIONARY_BATCH, _RECORD_BATCH = 1, 2, 3


def _walk_stream(body: bytes, max_rows: int) -> int:
    """Check the stream's framing and every message's metadata before pyarrow decodes any of it;
    the number of record batches."""
    position, batches, rows, dictionary_rows = 0, 0, 0, 0
    while position < len(body):
        length, position = _i32(body, position), position + 4
        if length == -1:  # the continuation marker of the current framing
            length, position = _i32(body, position), position + 4
        if length == 0:
            return batches  # end of stream
        if length < 0 or position + length > len(body):
            raise ProofSourceError(f"not a readable Arrow IPC stream: a message at byte {position - 4} "
                                   f"declares {length:,} bytes of metadata; {len(body) - position:,} remain")
        message = _Table(body[position:position + length])
        position += length
        body_length = message.scalar(3, "<q")
        if body_length < 0 or position + body_length > len(body):
            raise ProofSourceError(f"not a readable Arrow IPC stream: a message declares a body of "
                                   f"{body_length:,} bytes; {len(body) - position:,} remain (truncated?)")
        position += body_length
        header_type = message.scalar(1, "<B")
        if header_type == _RECORD_BATCH:
            batches += 1
            rows += _check_batch(message.table(2), body_length, max_rows, "a record batch declares {:,} rows")
            if batches > MAX_BATCHES:
                raise ProofSourceError(f"the stream holds more than {MAX_BATCHES} record batches")
            if rows > max_rows:
                raise RowLimitExceeded(f"the stream's record batches hold more than {max_rows:,} rows; "
                                       f"at most {max_rows:,} proofs go in one request")
        elif header_type == _DICTIONARY_BATCH:
            dictionary_rows += _check_batch(message.table(2).table(1), body_length, max_rows,
                                            "a dictionary batch declares {:,} values")
            if dictionary_rows > max_rows:
                raise RowLimitExceeded(f"the stream's dictionaries hold more than {max_rows:,} values")
        elif header_type != _SCHEMA:
            raise ProofSourceError(f"not a proof stream: an Arrow IPC message of type {header_type}")
    return batches


def _check_batch(batch: _Table, body_length: int, max_rows: int, declares: str) -> int:
    """A RecordBatch table's row count, after checking its arrays and buffers."""
    length = batch.scalar(0, "<q")
    if not 0 <= length <= max_rows:
        raise RowLimitExceeded(f"{declares.format(length)}; at most {max_rows:,} proofs go in one request")
    if batch.present(3):
        raise ProofSourceError("compressed Arrow IPC bodies are not accepted; send the stream uncompressed")
    for node_length, _null_count in batch.structs(1):
        if not 0 <= node_length <= max_rows:
            raise RowLimitExceeded(f"an array in the stream declares {node_length:,} values; at most "
                                   f"{max_rows:,} go in one request")
    for offset, size in batch.structs(2):
        if offset < 0 or size < 0 or offset + size > body_length:
            raise ProofSourceError("not a readable Arrow IPC stream: a buffer lies outside its message body")
    return length


def _i32(data: bytes, position: int) -> int:
    if position + 4 > len(data):
        raise ProofSourceError(f"not a readable Arrow IPC stream: it ends inside a message length at "
                               f"byte {position}")
    return struct.unpack_from("<i", data, position)[0]


class _Table:
    """A flatbuffers table (Arrow's IPC metadata, format/Message.fbs), read with every offset checked."""

    def __init__(self, data: bytes, position: int | None = None):
        self.data = data
        self.at = self._u32(0) if position is None else position
        vtable = self.at - self._unpack("<i", self.at)
        self.vtable = vtable
        self.vtable_size = self._unpack("<H", vtable) if vtable >= 0 else 0

    def _unpack(self, fmt: str, position: int):
        try:
            if position < 0:
                raise struct.error("negative offset")
            return struct.unpack_from(fmt, self.data, position)[0]
        except struct.error:
            raise ProofSourceError("not a readable Arrow IPC stream: its message metadata is corrupt") from None

    def _u32(self, position: int) -> int:
        return self._unpack("<I", position)

    def _slot(self, field: int) -> int:
        entry = 4 + 2 * field
        return self._unpack("<H", self.vtable + entry) if entry < self.vtable_size else 0

    def present(self, field: int) -> bool:
        return self._slot(field) != 0

    def scalar(self, field: int, fmt: str, default: int = 0) -> int:
        slot = self._slot(field)
        return self._unpack(fmt, self.at + slot) if slot else default

    def table(self, field: int) -> _Table:
        slot = self._slot(field)
        if not slot:
            raise ProofSourceError("not a readable Arrow IPC stream: a message lacks its header")
        position = self.at + slot
        return _Table(self.data, position + self._u32(position))

    def structs(self, field: int) -> list[tuple[int, int]]:
        """A vector of 16-byte structs of two int64 (FieldNode, Buffer)."""
        slot = self._slot(field)
        if not slot:
            return []
        position = self.at + slot
        start = position + self._u32(position)
        count = self._u32(start)
        if start + 4 + 16 * count > len(self.data):
            raise ProofSourceError("not a readable Arrow IPC stream: its message metadata is corrupt")
        return [struct.unpack_from("<qq", self.data, start + 4 + 16 * k) for k in range(count)]
