"""Arbitrary bytes and arbitrary JSON values never crash ingest or a batch, and always commit.

Whatever `read_proofs` is given, it answers a table (one row per JSON value) or one
`ProofSourceError`; whatever validation accepts or rejects, `finalize` commits with the same verdicts.
"""

from __future__ import annotations

import itertools
import json
import pathlib
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepbatch import MemoryStore, Validator, mesh, read_proofs
from stepbatch.config import Config
from stepbatch.ingest import ProofSourceError
from tests.strategies import _T0_MS, ACCOUNT_KEYS, point_in, signed_row

TRIANGLE = mesh.triangle_at(47.4979, 19.0402, 14)
CONFIG = Config(signature_threads=2)
_batch_numbers = itertools.count()

# Text with every code point, lone surrogates included (JSON can spell them; Arrow cannot hold them).
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | any_text
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(any_text, inner, max_size=4), max_leaves=12)
field_names = st.sampled_from(["version", "account", "triangle_id", "triangleId", "lat", "lon", "accuracy",
                               "timestamp", "nonce", "signature", "received_at", "payload", "payload_error",
                               "ts_ms", "triangle_key"]) | any_text


@st.composite
def proof_like(draw):
    """A signed proof with some fields replaced by arbitrary JSON, or any JSON value at all."""
    if draw(st.booleans()):
        return draw(json_values)
    lat, lon = point_in(TRIANGLE, (1, 1, 1))
    row = signed_row(ACCOUNT_KEYS[draw(st.integers(0, 3))], TRIANGLE, lat, lon,
                     _T0_MS + 60_000 * draw(st.integers(0, 50)), f"n{draw(st.integers(0, 20))}")
    for name in draw(st.lists(field_names, max_size=3)):
        row[name] = draw(json_values)
    return row


def _json(value) -> str:
    return json.dumps(value, allow_nan=True)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_give_a_table_or_one_clear_error(data):
    try:
        table = read_proofs(data)
    except ProofSourceError as err:
        assert "\n" not in str(err)
        return
    assert table.num_rows == table.column("payload_error").length()


@settings(max_examples=150, deadline=None)
@given(values=st.lists(proof_like(), max_size=6))
def test_every_json_value_is_one_row_whatever_its_framing(values):
    with tempfile.TemporaryDirectory() as folder:
        ndjson, document = pathlib.Path(folder, "rows.ndjson"), pathlib.Path(folder, "rows.json")
        ndjson.write_bytes("".join(_json(v) + "\n" for v in values).encode("utf-8", "surrogatepass"))
        document.write_bytes(_json(values).encode("utf-8", "surrogatepass"))
        # A Python list of strings names files (read_proofs' contract), so it is not a list of rows.
        names_files = bool(values) and all(isinstance(v, str) for v in values)
        for source in ([ndjson, document] if names_files else [values, ndjson, document]):
            assert read_proofs(source).num_rows == len(values)


@pytest.mark.mongo
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(values=st.lists(proof_like(), min_size=1, max_size=6))
def test_whatever_validation_decides_commits(mongo_store, values):
    mongo_store.add_triangles([TRIANGLE])
    batch_id = f"fuzz-{next(_batch_numbers)}"
    with tempfile.TemporaryDirectory() as folder, Validator(mongo_store, CONFIG) as validator:
        source = pathlib.Path(folder, "batch.ndjson")
        source.write_text("".join(_json(v) + "\n" for v in values))
        checked = validator.validate(source, batch_id, batch_time=_T0_MS)
        committed = validator.finalize(source, batch_id, batch_time=_T0_MS)
    assert committed.committed and committed.verdicts.num_rows == len(values)
    assert committed.verdicts.column("code").to_pylist() == checked.verdicts.column("code").to_pylist()
    assert committed.digest == checked.digest


@settings(max_examples=60, deadline=None)
@given(values=st.lists(proof_like(), min_size=1, max_size=6))
def test_the_memory_store_commits_the_same(values):
    values = [v for v in values if isinstance(v, dict)] or [{}]  # a list of strings would name files
    with Validator(MemoryStore([TRIANGLE]), CONFIG) as validator:
        checked = validator.validate(values, "m", batch_time=_T0_MS)
        committed = validator.finalize(values, "m", batch_time=_T0_MS)
    assert committed.digest == checked.digest
