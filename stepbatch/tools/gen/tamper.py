"""What happens to a signed proof after signing, for `stepbatch gen`: an attacker editing a field the
signature covers (BAD_SIGNATURE), or a broken client or proxy mangling a field (INVALID_PAYLOAD).

Each edit keeps every check SPEC §4 runs before the targeted one passing: a tampered field stays
well-formed, a plausible accuracy and a close timestamp; a malformed row breaks exactly one field rule
of SPEC §2. A break of a JSON type (a number sent as a string, say) can only exist in NDJSON; the table
holds null in that field and the JSON value to write instead is returned beside it.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stepbatch.crypto.ecmascript import number_to_string
from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import keys as mesh_keys

TAMPERED_FIELDS = ("lat", "lon", "accuracy", "nonce", "triangle_id")


def tamper(table: pa.Table, rows: np.ndarray, claimed_key: np.ndarray,
           rng: np.random.Generator) -> pa.Table:
    """Change one signed field of each of the ascending `rows`; `claimed_key` is per table row."""
    field = rng.integers(0, len(TAMPERED_FIELDS), len(rows))
    chosen = {name: rows[field == i] for i, name in enumerate(TAMPERED_FIELDS)}
    for name in ("lat", "lon"):  # moved 2-50 m: a location the phone never reported
        moved = chosen[name]
        shift_deg = rng.uniform(2e-5, 5e-4, len(moved)) * rng.choice([-1.0, 1.0], len(moved))
        values = table.column(name).to_numpy()[moved] + shift_deg
        if name == "lon":  # across the antimeridian the longitude wraps, staying well-formed
            values = (values + 180.0) % 360.0 - 180.0
        table = replace(table, name, moved, pa.array(np.round(values, 7)))
    accuracy = table.column("accuracy").to_numpy()[chosen["accuracy"]]
    table = replace(table, "accuracy", chosen["accuracy"],
                    pa.array(np.where(accuracy <= 25.0, accuracy + 1.0, accuracy - 10.0)))
    nonce = table.column("nonce").take(pa.array(chosen["nonce"]))
    table = replace(table, "nonce", chosen["nonce"], pc.if_else(
        pc.starts_with(nonce, "0"), pc.utf8_replace_slice(nonce, 0, 1, "1"),
        pc.utf8_replace_slice(nonce, 0, 1, "0")))
    # The claimed triangle's parent, which would pay twice the reward.
    moved = chosen["triangle_id"]
    lat, lon = (table.column(c).to_numpy()[moved] for c in ("lat", "lon"))
    parents = mesh_keys.triangle_at_keys(lat, lon, mesh_keys.key_levels(claimed_key[moved]) - 1)
    return replace(table, "triangle_id", moved, mesh_ids.encode_keys(parents))


def malform(table: pa.Table, rows: np.ndarray, rng: np.random.Generator
            ) -> tuple[pa.Table, dict[int, dict[str, object]]]:
    """Break one field rule in each of the ascending `rows`; returns the table and, per row with a
    JSON type break, {field: the JSON value of the wrong type}."""
    choice = rng.integers(0, len(MALFORMATIONS), len(rows))
    overrides: dict[int, dict[str, object]] = {}
    for index, (name, field, breaker) in enumerate(MALFORMATIONS):
        chosen = rows[choice == index]
        if not len(chosen):
            continue
        current = table.column(field).take(pa.array(chosen))
        if name in _JSON_TYPE_BREAKS:
            for row, value in zip(chosen.tolist(), current.to_pylist()):
                overrides[row] = {field: _JSON_TYPE_BREAKS[name](value)}
        table = replace(table, field, chosen, breaker(current, rng))
    return table, dict(sorted(overrides.items()))


def _constant(value):
    return lambda current, rng: pa.array([value] * len(current), current.type)


# (name, field, breaker(current values, rng) → new values), one per field rule of SPEC §2.
MALFORMATIONS = (
    ("signature_not_hex", "signature", lambda c, rng: pc.utf8_replace_slice(c, 2, 4, "zz")),
    ("signature_truncated", "signature", lambda c, rng: pc.utf8_slice_codeunits(c, 0, 128)),
    ("signature_bad_v", "signature", lambda c, rng: pc.utf8_replace_slice(c, 130, 132, "05")),
    ("triangle_bad_checksum", "triangle_id", lambda c, rng: pc.if_else(
        pc.ends_with(c, "AAA"), pc.utf8_replace_slice(c, -3, 1000, "BBB"),
        pc.utf8_replace_slice(c, -3, 1000, "AAA"))),
    ("triangle_wrong_prefix", "triangle_id",
     lambda c, rng: pc.utf8_replace_slice(c, 0, 11, "STEP-TRI-v2")),
    ("account_short", "account", lambda c, rng: pc.utf8_slice_codeunits(c, 0, 40)),
    ("account_not_hex", "account", lambda c, rng: pc.utf8_replace_slice(c, 2, 4, "zz")),
    ("lat_nan", "lat", _constant(math.nan)),
    ("lat_out_of_range", "lat", lambda c, rng: pa.array(np.round(rng.uniform(90.5, 95, len(c)), 7))),
    ("lon_out_of_range", "lon", lambda c, rng: pa.array(np.round(rng.uniform(180.5, 200, len(c)), 7))),
    ("accuracy_infinite", "accuracy", _constant(math.inf)),
    ("timestamp_without_zone", "timestamp", lambda c, rng: pc.utf8_slice_codeunits(c, 0, 23)),
    ("timestamp_with_space", "timestamp", lambda c, rng: pc.utf8_replace_slice(c, 10, 11, " ")),
    ("nonce_empty", "nonce", _constant("")),
    ("nonce_too_long", "nonce", lambda c, rng: pc.binary_join_element_wise(c, "x" * 93, "")),
    ("lat_missing", "lat", _constant(None)),
    ("lat_as_string", "lat", _constant(None)),
    ("accuracy_as_boolean", "accuracy", _constant(None)),
    ("nonce_as_number", "nonce", _constant(None)),
)
_JSON_TYPE_BREAKS = {
    "lat_as_string": number_to_string,
    "accuracy_as_boolean": lambda value: True,
    "nonce_as_number": lambda value: int(value.replace("-", "")[:12], 16),
}


def replace(table: pa.Table, name: str, rows: np.ndarray, values: pa.Array) -> pa.Table:
    """`table` with column `name` at the ascending `rows` replaced by `values`."""
    if not len(rows):
        return table
    mask = np.zeros(table.num_rows, np.bool_)
    mask[rows] = True
    column = table.column(name).combine_chunks()
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    replaced = pc.replace_with_mask(column, pa.array(mask), values.cast(column.type))
    return table.set_column(table.schema.get_field_index(name), name, replaced)
