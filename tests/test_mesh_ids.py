"""STEP-TRI-v1 ids: stepbatch.mesh.ids (conformance vectors, round trips, id columns) and the id text
kernels of stepbatch_kernels.mesh_ids, against the slow reference in tests/naive_mesh.py."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given

from stepbatch.mesh import ids as mesh_ids
from stepbatch_kernels import mesh_ids as kids
from tests import naive_mesh as naive
from tests.conftest import load_vectors
from tests.strategies import mesh_triangles, random_triangles

# ------------------------------------------------------------------------ conformance vectors

def test_valid_addressing_vectors_encode_and_decode_both_ways():
    for vector in load_vectors("addressing")["valid"]:
        face, level, path = vector["face"], vector["level"], tuple(vector["path"])
        assert mesh_ids.encode_id(face, level, path) == vector["id"]
        assert mesh_ids.decode_id(vector["id"]) == (face, level, path)
        assert mesh_ids.id_of(mesh_ids.key_of(vector["id"])) == vector["id"]


def test_invalid_addressing_vectors_raise_and_are_invalid_in_decode_ids_with_the_same_message():
    invalid = load_vectors("addressing")["invalid"]
    messages = []
    for vector in invalid:
        with pytest.raises(ValueError) as raised:
            mesh_ids.decode_id(vector["id"])
        messages.append(str(raised.value))
    decoded = mesh_ids.decode_ids([v["id"] for v in invalid])
    assert not decoded.valid.any()
    assert (decoded.keys == -1).all()
    assert decoded.errors.to_pylist() == messages


@pytest.mark.parametrize("why, word", [("checksum mismatch", "checksum"), ("wrong prefix", "prefix"),
                                       ("face out of range", "face"), ("level out of range", "level"),
                                       ("path digit out of range", "digits"),
                                       ("nonzero padding beyond level", "canonical"),
                                       ("path must have 20 digits", "20 digits"), ("empty", "empty"),
                                       ("missing checksum", "checksum")])
def test_decode_error_messages_say_what_was_wrong(why, word):
    vector = next(v for v in load_vectors("addressing")["invalid"] if why in v["why"])
    with pytest.raises(ValueError, match=word):
        mesh_ids.decode_id(vector["id"])


# ------------------------------------------------------------------------------- properties

@given(mesh_triangles)
def test_decode_inverts_encode(triangle):
    assert mesh_ids.decode_id(mesh_ids.encode_id(*triangle)) == triangle


# --------------------------------------------------------------------------------- id columns

def test_decode_ids_takes_arrow_chunked_dictionary_and_python_columns_alike():
    good = [mesh_ids.encode_id(2, 5, (1, 2, 3, 0)), mesh_ids.encode_id(19, 21, (3,) * 20)]
    values = [good[0], None, good[1], good[0], "STEP-TRI-v1:junk", good[0]]
    key_0, key_1 = mesh_ids.key_of(good[0]), mesh_ids.key_of(good[1])
    expected_keys = [key_0, -1, key_1, key_0, -1, key_0]
    forms = [values, pa.array(values), pa.array(values, pa.large_string()),
             pa.chunked_array([values[:2], values[2:]]), pa.array(values).dictionary_encode(),
             np.array(values, dtype=object)]
    for form in forms:
        decoded = mesh_ids.decode_ids(form)
        assert decoded.keys.tolist() == expected_keys
        assert decoded.valid.tolist() == [k != -1 for k in expected_keys]
        errors = decoded.errors.to_pylist()
        assert errors[1] == "missing triangleId" and errors[0] is None
        assert errors[4] == "triangleId face must be a letter A-T"


def test_decode_ids_reports_non_strings_per_row_without_raising():
    decoded = mesh_ids.decode_ids([mesh_ids.encode_id(0, 1, ()), 42, b"STEP", None])
    assert decoded.valid.tolist() == [True, False, False, False]
    assert decoded.errors.to_pylist()[1:] == ["triangleId must be a string"] * 2 + ["missing triangleId"]
    assert not mesh_ids.decode_ids(pa.array([1, 2])).valid.any()
    assert len(mesh_ids.decode_ids([]).keys) == 0


def test_decode_ids_equals_decode_id_on_many_random_and_mutated_ids():
    rng = np.random.default_rng(11)
    ids = []
    for _ in range(300):
        level = int(rng.integers(1, 22))
        path = tuple(int(d) for d in rng.integers(0, 4, level - 1))
        good = mesh_ids.encode_id(int(rng.integers(20)), level, path)
        i = int(rng.integers(len(good)))
        ids += [good, good[:i] + str(rng.choice(list("0134AZ7-:"))) + good[i + 1:]]
    decoded = mesh_ids.decode_ids(ids)
    for triangle_id, key, error in zip(ids, decoded.keys, decoded.errors.to_pylist()):
        try:
            assert mesh_ids.key_of(triangle_id) == key and error is None
            assert naive.decode_id(triangle_id) == mesh_ids.decode_id(triangle_id)
        except ValueError as raised:
            assert key == -1 and error == str(raised)


def test_encode_keys_spells_each_key_and_nulls_invalid_ones():
    keys = [naive.pack(0, 1, ()), naive.pack(7, 12, (1, 0, 3) * 3 + (2, 2)), -1, 1 << 62,
            naive.pack(19, 21, (3,) * 20)]
    encoded = mesh_ids.encode_keys(np.array(keys)).to_pylist()
    assert encoded == [naive.encode_id(*naive.unpack(k)) if naive.key_is_valid(k) else None for k in keys]
    assert mesh_ids.encode_keys(np.array([], np.int64)).to_pylist() == []


def test_id_of_refuses_keys_that_are_not_canonical():
    for key in (-1, naive.pack(3, 2, (1,)) | 1, 21 << 45 | 1 << 40, naive.pack(0, 22, ())):
        with pytest.raises(ValueError):
            mesh_ids.id_of(key)


# ------------------------------------------------------------------------------- id text kernels

def parse(text):
    raw = text.encode("utf-8")
    return kids.parse_id(np.frombuffer(raw, np.uint8), 0, len(raw))


def mutations(triangle_id, rng):
    chars = "STEPRI-v1:AB0123456789QWZ7 x"
    out = [triangle_id[:i] + triangle_id[i + 1:] for i in rng.integers(0, len(triangle_id), 4)]
    for i in rng.integers(0, len(triangle_id), 8):
        out.append(triangle_id[:i] + str(rng.choice(list(chars))) + triangle_id[i + 1:])
        out.append(triangle_id[:i] + str(rng.choice(list(chars))) + triangle_id[i:])
    return out


def test_parse_id_accepts_exactly_what_the_reference_decoder_accepts():
    rng = np.random.default_rng(9)
    for face, level, path in random_triangles(rng, 150):
        good = naive.encode_id(face, level, path)
        for text in [good] + mutations(good, rng):
            status, key, checksum = parse(text)
            try:
                expected = naive.decode_id(text)
            except ValueError:
                expected = None
            structurally_ok = status == kids.ID_OK
            checksum_ok = structurally_ok and naive.checksum(text[12:-4]) == text[-3:]
            assert (expected is not None) == checksum_ok, text
            if expected is not None:
                assert naive.unpack(int(key)) == expected
                assert naive.BASE32[checksum >> 10] + naive.BASE32[(checksum >> 5) & 31] \
                    + naive.BASE32[checksum & 31] == text[-3:]


def test_write_cores_and_write_ids_spell_the_reference_ids():
    triangles = random_triangles(np.random.default_rng(10), 200)
    keys = np.array([naive.pack(*t) for t in triangles] + [-1], np.int64)
    cores, lengths = np.zeros((len(keys), kids.CORE_WIDTH), np.uint8), np.zeros(len(keys), np.int64)
    kids.write_cores(keys, cores, lengths)
    expected = [naive.encode_id(*t) for t in triangles]
    assert [bytes(cores[i, :lengths[i]]).decode() for i in range(len(triangles))] == \
        [e[12:-4] for e in expected]
    assert lengths[-1] == 0
    checksums = np.array([parse(e)[2] for e in expected] + [0], np.int64)
    offsets = np.concatenate([[0], np.cumsum(np.where(lengths > 0, lengths + 16, 0))]).astype(np.int64)
    data = np.zeros(offsets[-1], np.uint8)
    kids.write_ids(cores, lengths, checksums, offsets, data)
    assert bytes(data).decode() == "".join(expected)
