"""NDJSON framing for ingest: bytes to line-numbered rows, fast where pyarrow can and exact where not.

A file is read in blocks of whole lines. Each block's lines are located with NumPy (no Python loop
over lines that are plain `{…}` objects); blank lines are counted but are not rows. The rows of a
block go to pyarrow's JSON reader, with the explicit schema the caller gives, and, where it
refuses, to `json.loads` line by line, so one bad line costs one run of `json.loads`, not a block.
What the rows mean is ingest's business: this module yields pyarrow tables and lists of JSON values
(a line that is not JSON is a `BadLine`), each with the numbers of the lines it covers.
"""

from __future__ import annotations

import dataclasses
import json
from typing import BinaryIO, Callable, Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

# Read sizes, looked up as a Reader goes so that tests can shrink them.
BLOCK_BYTES = 4 << 20  # read from the file at a time, then cut back to whole lines
PYARROW_BLOCK_BYTES = 1 << 20  # pyarrow parses a span in sub-blocks of this size on all cores
RUN_ROWS = 256  # lines per retry of a span pyarrow refused
GROUP_ROWS = 65_536  # rows gathered before a group is handed on
_DECODER = json.JSONDecoder()
MAX_DEPTH = 64  # levels of arrays and objects in one row; a proof needs two


class BadLine(NamedTuple):
    message: str  # why the line is not a JSON value


class Group(NamedTuple):
    parts: list  # consecutive pyarrow tables and lists of JSON values, in line order


class Lines(NamedTuple):
    """The rows of a block: byte spans of its lines that are not all whitespace, their numbers,
    and whether each is plain: `{` first and `}` last, but for JSON whitespace."""

    starts: np.ndarray
    ends: np.ndarray
    numbers: np.ndarray
    plain: np.ndarray

    def rows(self, selection) -> "Lines":
        return Lines(*(part[selection] for part in self))


@dataclasses.dataclass
class Reader:
    """Reads one NDJSON stream; `rows_skipped` says how many rows `skip` has passed over so far.

    `schema` types the columns pyarrow reads (other keys are inferred); `concat(tables)` joins the
    tables of consecutive pieces.
    """

    schema: pa.Schema
    concat: Callable[[list], pa.Table]
    rows_skipped: int = 0

    def __post_init__(self):
        self._parse = pajson.ParseOptions(explicit_schema=self.schema,
                                          unexpected_field_behavior="infer")
        self._read = pajson.ReadOptions(block_size=PYARROW_BLOCK_BYTES)

    def groups(self, handle: BinaryIO, skip: int = 0) -> Iterator[tuple[Group, np.ndarray]]:
        """(Group, line numbers of its rows) after the first `skip` rows.

        Pieces are gathered into groups of about GROUP_ROWS rows, so that the field checks run
        over long columns however finely a block with bad lines was cut up."""
        parts: list = []
        numbers: list[np.ndarray] = []
        for raw, line_numbers in self.pieces(handle, skip):
            if parts and type(parts[-1]) is type(raw):
                parts[-1] = self.concat([parts[-1], raw]) if isinstance(raw, pa.Table) \
                    else parts[-1] + raw
            else:
                parts.append(raw)
            numbers.append(line_numbers)
            if sum(map(len, numbers)) >= GROUP_ROWS:
                yield Group(parts), np.concatenate(numbers)
                parts, numbers = [], []
        if parts:
            yield Group(parts), np.concatenate(numbers)

    def pieces(self, handle: BinaryIO, skip: int = 0):
        """(pyarrow table or list of JSON values, their line numbers), in line order."""
        for block, first_line in self.blocks(handle):
            lines = line_spans(block, first_line)
            if self.rows_skipped < skip:
                cut = min(skip - self.rows_skipped, len(lines.starts))
                self.rows_skipped += cut
                lines = lines.rows(slice(cut, None))
            if len(lines.starts):
                yield from self.parse_lines(block, lines)

    def blocks(self, handle: BinaryIO) -> Iterator[tuple[bytes, int]]:
        """(block of whole lines, number of its first line), one block at a time."""
        line, carry = 1, b""
        while True:
            data = handle.read(BLOCK_BYTES)
            if line == 1 and not carry:
                data = data.removeprefix(b"\xef\xbb\xbf")
            if not data:
                if carry:
                    yield carry, line
                return
            data = carry + data
            cut = data.rfind(b"\n") + 1
            block, carry = data[:cut], data[cut:]
            if block:
                yield block, line
                line += block.count(b"\n")

    def parse_lines(self, block: bytes, lines: Lines):
        """(pyarrow table or list of JSON values, their line numbers) covering `lines` in order.

        pyarrow also accepts two objects on one line and one object over two lines, so its rows are
        taken as the lines' rows only where every line is plain and the counts agree. A part it
        refuses is retried in runs of RUN_ROWS lines, and a run refused again is read line by line.
        """
        whole = self._fast_rows(block, lines)
        if whole is not None:
            yield whole, lines.numbers
            return
        for i in range(0, len(lines.starts), RUN_ROWS):
            run = lines.rows(slice(i, i + RUN_ROWS))
            table = self._fast_rows(block, run)
            yield (table if table is not None else exact_values(block, run)), run.numbers

    def _fast_rows(self, block: bytes, lines: Lines) -> pa.Table | None:
        if not lines.plain.all():
            return None
        try:
            table = pajson.read_json(pa.BufferReader(block[lines.starts[0]:lines.ends[-1]]),
                                     read_options=self._read, parse_options=self._parse)
        except pa.ArrowInvalid:
            return None
        if table.num_rows != len(lines.starts) or not self._inferred_columns_valid(table):
            return None
        return table

    def _inferred_columns_valid(self, table: pa.Table) -> bool:
        """pyarrow's JSON reader can infer a column it then builds wrongly (a list of nulls, say,
        whose offsets run past its values); such lines are read the exact way instead."""
        for name in table.column_names:
            if self._parse.explicit_schema.get_field_index(name) < 0:
                try:
                    table.column(name).validate(full=True)
                except pa.ArrowInvalid:
                    return False
        return True


def line_spans(block: bytes, first_line: int) -> Lines:
    data = np.frombuffer(block, np.uint8)
    newlines = np.flatnonzero(data == 10)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(data)]))
    filled = ends > starts
    at_end = np.maximum(ends - 1, 0)
    cr = filled & (data[at_end] == 13)
    first = data[np.minimum(starts, len(data) - 1)]
    last = data[np.maximum(at_end - cr, 0)]
    plain = filled & (ends - cr - starts >= 2) & (first == 123) & (last == 125)
    keep = plain.copy()
    for i in np.flatnonzero(filled & ~plain).tolist():  # blank, padded or not an object
        text = block[starts[i]:ends[i]].strip(b" \t\r")
        keep[i] = bool(text)
        plain[i] = len(text) >= 2 and text[:1] == b"{" and text[-1:] == b"}"
    return Lines(starts[keep], ends[keep], first_line + np.flatnonzero(keep), plain[keep])


def exact_values(block: bytes, lines: Lines) -> list:
    """The exact reader: `json.loads` per line; a line that is not JSON becomes a `BadLine`."""
    return [decode_value(block[start:end]) for start, end in zip(lines.starts.tolist(),
                                                                   lines.ends.tolist())]


def decode_value(raw: bytes):
    """One JSON value, or a BadLine saying why it is not one that Arrow can hold."""
    if too_deep(raw):
        return BadLine(f"not valid JSON here: nested deeper than {MAX_DEPTH} levels")
    try:
        value = _DECODER.decode(raw.decode())
    except UnicodeDecodeError:
        return BadLine("not valid UTF-8")
    except RecursionError:
        return BadLine(f"not valid JSON here: nested deeper than {MAX_DEPTH} levels")
    except ValueError as err:
        return BadLine(f"not valid JSON: {getattr(err, 'msg', err)} at column {getattr(err, 'colno', '?')}")
    # JSON may spell a lone UTF-16 surrogate (\ud800), which decodes to no Unicode character.
    if b"\\u" in raw and has_surrogate(value):
        return BadLine("not valid JSON text: a \\u escape spells a lone surrogate, which is not a character")
    return value


def too_deep(raw: bytes) -> bool:
    """Whether the JSON text nests arrays and objects deeper than MAX_DEPTH. Checked before decoding:
    Python's decoder recurses on the C stack, which a deep enough text overflows (a crash, not an
    error) wherever the interpreter's recursion limit has been raised, and pyarrow's JSON reader
    crashes the process on a deep enough text whatever the limit."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    return json_shape(raw).depth > MAX_DEPTH


class Shape(NamedTuple):
    depth: int  # deepest nesting of arrays and objects outside strings
    top_items: int  # values in a top-level array (commas at depth 1, plus one), 0 otherwise


SCAN_BYTES = 1 << 18  # bytes scanned at a time: the scan's memory is ~40 times this, whatever the text


def json_shape(raw: bytes) -> Shape:
    """How deep a JSON text nests and how many values its top-level array holds, in one pass over
    its bytes and bounded memory, before any parser sees it. Strings (with escaped quotes) are
    skipped; the text need not be valid JSON."""
    in_string, backslashes, depth, deepest, commas = False, 0, 0, 0, 0
    for first in range(0, len(raw), SCAN_BYTES):
        data = np.frombuffer(raw, np.uint8, min(SCAN_BYTES, len(raw) - first), first)
        positions = np.arange(len(data))
        backslash = data == 92
        # A quote is escaped when an odd run of backslashes stands right before it, a run that may
        # have begun in the block before.
        last_plain = np.maximum.accumulate(np.where(backslash, -1 - backslashes, positions))
        run_before = positions - 1 - np.concatenate(([-1 - backslashes], last_plain[:-1]))
        quote = (data == 34) & (run_before % 2 == 0)
        quotes = np.cumsum(quote)
        inside = (quotes - quote + in_string) % 2 == 1
        opens = ((data == 91) | (data == 123)) & ~inside
        closes = ((data == 93) | (data == 125)) & ~inside
        level = depth + np.cumsum(opens.astype(np.int64) - closes)
        if len(level):
            deepest = max(deepest, int(level.max()))
            commas += int(np.count_nonzero((data == 44) & ~inside & (level == 1)))
            depth = int(level[-1])
            in_string = bool((quotes[-1] + in_string) % 2)
            backslashes = len(data) - 1 - int(last_plain[-1]) if last_plain[-1] >= 0 else \
                backslashes + len(data)
    text = raw.lstrip(b"\xef\xbb\xbf \t\r\n")
    items = 0
    if text.startswith(b"["):
        items = commas + (0 if text[1:].lstrip(b" \t\r\n").startswith(b"]") else 1)
    return Shape(deepest, items)


def has_surrogate(value) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def split_document(text: str) -> list:
    """The values of a JSON document that `json.loads` cannot take whole (nested too deeply): the
    elements of a top-level array one by one, each a value or a BadLine, so one deep element is one
    bad row. A document that is not an array is one value or one BadLine."""
    text = text.strip()
    if not text.startswith("["):
        return [decode_value(text.encode())]
    values, position = [], 1
    while True:
        position = _skip_space(text, position)
        if position >= len(text) or text[position] == "]":
            return values
        end = _value_end(text, position)
        values.append(decode_value(text[position:end].encode()))
        position = _skip_space(text, end)
        if position < len(text) and text[position] == ",":
            position += 1


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _value_end(text: str, position: int) -> int:
    """Where the JSON value starting at `position` ends, by bracket depth outside strings."""
    depth, in_string, escaped = 0, False, False
    for i in range(position, len(text)):
        char = text[i]
        if in_string:
            escaped = not escaped and char == "\\"
            in_string = escaped or char != '"'
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
            if depth < 0:
                return i
        elif char == "," and depth == 0:
            return i
    return len(text)
