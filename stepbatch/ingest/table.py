"""Raw pieces of a source as PROOF_SCHEMA tables: the shapes of SPEC §2 mapped onto its columns.

A piece is a pyarrow table (a typed source, or the rows pyarrow's NDJSON reader accepted) or a list
of parsed JSON values. `from_arrow` and `from_objects` take either shape, flat or API
(`{"payload": {...}, "signature": "0x…"}`), row by row, into `fields.Column`s; `merge` joins the
consecutive pieces of one group; `finish` runs the field rules and prefixes each `payload_error`
with where its row came from. Columns beyond PROOF_SCHEMA are kept after it, in order of first
appearance; a column of mixed JSON types, which no one Arrow type holds, is kept as JSON text.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stepbatch.ingest import ndjson
from stepbatch.ingest.fields import (
    FIELD_ORDER,
    Column,
    check_fields,
    coerce_arrow,
    coerce_json,
    describe_json,
)
from stepbatch.schema import API_KEYS, PROOF_COLUMNS, PROOF_SCHEMA, SIGNED_FIELDS


class Parsed(NamedTuple):
    """A piece's fields as `Column`s, before the field rules."""

    columns: dict[str, Column]
    row_error: pa.Array | None  # a problem with the whole row, before any field rule
    prior_error: pa.Array | None  # the source's own payload_error column
    extras: list[tuple[pa.Field, pa.Array | pa.ChunkedArray]]


def from_arrow(raw: pa.Table, trusted: bool = False) -> Parsed:
    """A flat table, an API-shape one (a struct column `payload`) or, as NDJSON gives it, a mix
    row by row: a row with a payload takes its signed fields from it.

    Its `payload_error` is kept only when `trusted` (an in-memory table that `finish` made); from any
    other source a column of that name, like `ts_ms` and `triangle_key`, is derived afresh, so input
    can never write a verdict."""
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
    prior = column("payload_error") if trusted else None
    prior = prior.combine_chunks().cast(pa.string()) if prior is not None and (
        pa.types.is_string(prior.type) or pa.types.is_large_string(prior.type)) else None
    consumed = set(PROOF_COLUMNS) | ({"payload"} if payload is not None else set())
    extras = [(raw.schema.field(i), raw.column(i)) for i, name in enumerate(names)
              if name not in consumed]
    return Parsed(columns, None, prior, extras)


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


def from_objects(objects: list) -> Parsed:
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
    # Key order of first appearance; one pass over the few distinct key tuples, not every key.
    extra_names = [key for key in dict.fromkeys(key for keys in dict.fromkeys(map(tuple, tops))
                                                for key in keys) if key not in _TOP_LEVEL]
    extras = [(pa.field(name, array.type), array) for name in extra_names
              for array in [_extra_column([top.get(name) for top in tops])]]
    return Parsed(columns, pa.array(row_errors, pa.string()) if any(row_errors) else None,
                   None, extras)


def _extra_column(values: list) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return _json_text(values)


def _json_text(values: list) -> pa.Array:
    """Values of mixed JSON types have no one Arrow type: such a column is kept as JSON text."""
    return pa.array([None if v is None else json.dumps(v, default=str) for v in values],
                    pa.string())


def merge(parts: list[Parsed]) -> Parsed:
    """One Parsed of consecutive parts of a source."""
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
    extras = concat([pa.Table.from_arrays([pa.nulls(size)] + [array for _, array in part.extras],
                                           schema=pa.schema([pa.field("", pa.null())]
                                                            + [field for field, _ in part.extras]))
                      for part, size in zip(parts, sizes)])
    return Parsed(columns, joined([part.row_error for part in parts]),
                   joined([part.prior_error for part in parts]),
                   list(zip(extras.schema, extras.columns))[1:])


def _chunked(arrays: list) -> pa.ChunkedArray:
    """The arrays one after another, without copying them."""
    return pa.chunked_array([chunk for array in arrays for chunk in (
        array.chunks if isinstance(array, pa.ChunkedArray) else [array])], type=arrays[0].type)


def finish(parsed: Parsed, numbers: np.ndarray, where: str) -> pa.Table:
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
    return pa.Table.from_arrays(arrays, schema=pa.schema(
        list(PROOF_SCHEMA) + [field for field, _ in parsed.extras], metadata=MADE_HERE))


# Schema metadata of the tables `finish` makes. An in-memory table that carries it was read by
# stepbatch before, so its `payload_error` (which names the line or row it came from) is kept; a file
# cannot pass its metadata off as that, because only in-memory tables are asked.
MADE_HERE = {b"stepbatch": b"PROOF_SCHEMA"}


def made_here(table: pa.Table) -> bool:
    return (table.schema.metadata or {}).get(b"stepbatch") == MADE_HERE[b"stepbatch"]


def concat(tables: list[pa.Table]) -> pa.Table:
    """The tables one after another; an extra column of differing types becomes JSON text."""
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
