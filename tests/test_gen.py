"""`stepbatch gen`: synthetic traffic whose every row gets exactly the verdict its author intended."""

from __future__ import annotations

import collections
import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings

from stepbatch import MemoryStore, Validator, crypto, mesh, read_proofs
from stepbatch.cli import main as cli_main
from stepbatch.crypto import eip191
from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import keys as mesh_keys
from stepbatch.tools import gen
from stepbatch.tools.gen.walkers import MAX_SPEED_MPS, MIN_INTERVAL_MS
from tests.naive import NaiveValidator
from tests.strategies import gen_configs

SMALL = dict(walkers=40, proofs=2_500, seed=11, attack_share=0.3)


@pytest.fixture(scope="module")
def traffic():
    return gen.generate(**SMALL)


def _verdict_codes(traffic_or_table, triangles) -> list[str]:
    with Validator(MemoryStore(triangles)) as validator:
        return validator.validate(traffic_or_table).verdicts.column("code").to_pylist()


def _mismatches(expected: list[str], got: list[str], attacks: list[str]) -> collections.Counter:
    return collections.Counter((a, e, g) for a, e, g in zip(attacks, expected, got) if e != g)


def test_validator_gives_every_row_its_expected_code(traffic):
    table = traffic.proofs
    got = _verdict_codes(table, traffic.triangles)
    expected = table.column("expected_code").to_pylist()
    assert not _mismatches(expected, got, table.column("attack").to_pylist())
    assert set(traffic.attack_counts()) == set(gen.KINDS)
    assert {code.name for code in gen.ATTACK_CODES.values()} | {"ACCEPTED"} == set(got)


def test_one_proof_at_a_time_reference_agrees_on_a_prefix(traffic):
    prefix = traffic.proofs.slice(0, 600)
    verdicts, _digest = NaiveValidator(traffic.triangles).validate(read_proofs(prefix), "gen")
    assert [code for code, *_ in verdicts] == prefix.column("expected_code").to_pylist()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=gen_configs)
def test_expected_codes_hold_for_any_configuration(config):
    traffic = gen.generate(**config)
    table = traffic.proofs
    assert table.num_rows == config["proofs"]
    got = _verdict_codes(table, traffic.triangles)
    assert not _mismatches(table.column("expected_code").to_pylist(), got,
                           table.column("attack").to_pylist())


def test_same_arguments_give_identical_tables_whatever_the_threads(traffic):
    again = gen.generate(**SMALL, threads=1)
    assert again.proofs.equals(traffic.proofs)
    assert (again.triangles, again.bbox, again.reserved, again.json_overrides) == \
        (traffic.triangles, traffic.bbox, traffic.reserved, traffic.json_overrides)
    other_seed = gen.generate(**{**SMALL, "seed": SMALL["seed"] + 1, "proofs": 200})
    assert not other_seed.proofs.slice(0, 200).equals(traffic.proofs.slice(0, 200))


def test_rows_are_in_arrival_order_and_honest_clocks_are_close(traffic):
    received = traffic.proofs.column("received_at").cast("int64").to_numpy()
    assert (np.diff(received) >= 0).all()
    honest = read_proofs(traffic.proofs.filter(pc.equal(traffic.proofs.column("attack"), "honest")))
    latency_ms = honest.column("received_at").cast("int64").to_numpy() - honest.column("ts_ms").to_numpy()
    assert latency_ms.min() > 0 and latency_ms.max() <= 1_500


def test_honest_rows_are_signed_by_their_account_and_inside_their_triangle(traffic):
    honest = traffic.proofs.filter(pc.equal(traffic.proofs.column("attack"), "honest"))
    signers = crypto.recover_addresses(eip191.canonical_messages(honest), honest.column("signature"))
    assert signers.equals(honest.column("account").combine_chunks())
    inside = mesh.contains(honest.column("triangle_id").to_pylist(), honest.column("lat").to_numpy(),
                           honest.column("lon").to_numpy())
    assert inside.all()
    accuracy = honest.column("accuracy").to_numpy()
    assert accuracy.min() >= 3.0 and accuracy.max() <= 30.0


def test_honest_walkers_keep_the_cadence_and_a_walking_pace(traffic):
    honest = read_proofs(traffic.proofs.filter(pc.equal(traffic.proofs.column("attack"), "honest")))
    by_account = collections.defaultdict(list)
    for account, ts_ms, lat, lon in zip(*(honest.column(c).to_pylist()
                                          for c in ("account", "ts_ms", "lat", "lon"))):
        by_account[account].append((ts_ms, lat, lon))
    speeds = []
    for proofs in by_account.values():
        for (t0, lat0, lon0), (t1, lat1, lon1) in zip(proofs, proofs[1:]):
            assert t1 - t0 >= MIN_INTERVAL_MS
            speeds.append(mesh_keys.haversine_m(lat0, lon0, lat1, lon1) / ((t1 - t0) / 1000))
    # Reported fixes carry GPS error, so single steps may look faster than the walk; on average a
    # walker covers at most 2 m/s plus that error, and never 15 m/s.
    assert max(speeds) < 15.0
    assert np.median(speeds) < MAX_SPEED_MPS + 1.0


def test_triangles_subdivide_under_the_walkers(traffic):
    honest = traffic.proofs.filter(pc.equal(traffic.proofs.column("attack"), "honest"))
    levels = mesh_keys.key_levels(mesh_ids.decode_ids(honest.column("triangle_id")).keys)
    assert levels.min() == gen.DEFAULT_LEVEL and levels.max() >= gen.DEFAULT_LEVEL + 2


def test_level_21_triangles_exhaust_and_walkers_keep_getting_their_verdicts():
    traffic = gen.generate(walkers=10, proofs=5_000, seed=6, radius_m=50.0, level=20)
    with Validator(MemoryStore(traffic.triangles)) as validator:
        verdicts = validator.validate(traffic.proofs).verdicts
    assert verdicts.column("code").equals(traffic.proofs.column("expected_code"))
    levels = mesh_keys.key_levels(mesh_ids.decode_ids(verdicts.column("triangle_id")).keys)
    exhausting = (levels == 21) & (verdicts.column("click_number").to_numpy(zero_copy_only=False) == 11)
    assert exhausting.sum() > 10


def test_a_saturated_walking_area_is_refused():
    with pytest.raises(ValueError, match="saturated"):
        gen.generate(walkers=10, proofs=30_000, seed=6, radius_m=50.0, level=20, attack_share=0.0)


def test_sidecar_seeds_every_claimed_base_triangle_and_no_reserved_one(traffic):
    seeded = set(traffic.triangles)
    assert seeded.isdisjoint(traffic.reserved)
    assert {mesh.decode_id(t)[1] for t in seeded} == {gen.DEFAULT_LEVEL}
    table = traffic.proofs
    unseeded = table.filter(pc.equal(table.column("attack"), "unseeded"))
    assert set(unseeded.column("triangle_id").to_pylist()) <= set(traffic.reserved)
    west, south, east, north = traffic.bbox
    for triangle_id in traffic.reserved:
        lon, lat = mesh.centroid(triangle_id)["coordinates"]
        assert not (west <= lon <= east and south <= lat <= north)


def test_attack_share_and_weights_are_honoured():
    traffic = gen.generate(walkers=30, proofs=3_000, seed=5, attack_share=0.25,
                           attack_weights={"teleport": 1, "replay": 3})
    counts = traffic.attack_counts()
    assert set(counts) == {"honest", "teleport", "replay"}
    assert abs((3_000 - counts["honest"]) / 3_000 - 0.25) < 0.03
    assert 2.0 < counts["replay"] / counts["teleport"] < 4.5
    assert gen.generate(walkers=30, proofs=500, seed=5, attack_share=0.0).attack_counts() == \
        {"honest": 500}


def test_duration_covers_the_simulated_time_of_every_walker():
    traffic = gen.generate(walkers=12, proofs=None, duration_s=900, seed=3)
    start_ms = gen.DEFAULT_START_TIME.timestamp() * 1000
    received_ms = traffic.proofs.column("received_at").cast("int64").to_numpy() - start_ms
    assert received_ms.max() < 900_000
    honest = (traffic.proofs.column("attack").to_numpy(zero_copy_only=False) == "honest")
    last_by_account = dict(zip(traffic.proofs.column("account").to_numpy(zero_copy_only=False)[honest],
                               received_ms[honest]))
    assert len(last_by_account) == 12
    # Each walker proves at least once a minute up to the end.
    assert min(last_by_account.values()) > 900_000 - 62_000


@pytest.mark.parametrize("bad", [dict(walkers=0), dict(level=21), dict(attack_share=0.95),
                                 dict(attack_weights={"wormhole": 1}), dict(radius_m=10.0),
                                 dict(seed=-1), dict(center=(89.0, 0.0))])
def test_out_of_range_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        gen.generate(**{"walkers": 5, "proofs": 50, **bad})


def test_cli_writes_ndjson_and_parquet_that_validate_to_their_expected_codes(tmp_path, capsys):
    arguments = ["gen", "--walkers", "20", "--proofs", "1500", "--seed", "9", "--attack-share", "0.4"]
    assert cli_main([*arguments, "--out", str(tmp_path / "a.ndjson")]) == 0
    assert "proofs/s" in capsys.readouterr().out
    assert cli_main([*arguments, "--out", str(tmp_path / "b.parquet")]) == 0
    sidecar = json.loads((tmp_path / "a.triangles.json").read_text())
    assert (tmp_path / "b.triangles.json").read_text() == (tmp_path / "a.triangles.json").read_text()
    assert sidecar["rows"] == 1500 and sidecar["params"]["seed"] == 9

    lines = (tmp_path / "a.ndjson").read_text().splitlines()
    type_breaks = [line for line in lines if '"lat":"' in line or '"accuracy":true' in line
                   or '"nonce":' in line and '"nonce":"' not in line]
    assert type_breaks and all('"expected_code":"INVALID_PAYLOAD"' in line for line in type_breaks)
    for name in ("a.ndjson", "b.parquet"):
        proofs = read_proofs(str(tmp_path / name))
        got = _verdict_codes(proofs, sidecar["triangles"])
        assert not _mismatches(proofs.column("expected_code").to_pylist(), got,
                               proofs.column("attack").to_pylist())
    assert pq.read_table(tmp_path / "b.parquet").num_rows == 1500


def test_cli_output_is_byte_identical_across_runs(tmp_path):
    written = []
    for run in ("x", "y"):
        folder = tmp_path / run
        folder.mkdir()
        for name in ("t.ndjson", "t.parquet"):
            assert cli_main(["gen", "--walkers", "5", "--proofs", "300", "--seed", "2",
                             "--out", str(folder / name)]) == 0
        written.append([(folder / name).read_bytes()
                        for name in ("t.ndjson", "t.parquet", "t.triangles.json")])
    assert written[0] == written[1]


@pytest.mark.parametrize("arguments", [["--proofs", "0"], ["--attacks", "teleport=x"],
                                       ["--center", "47.5"], ["--duration", "soon"],
                                       ["--proofs", "10", "--duration", "60"]])
def test_cli_refuses_bad_arguments_with_usage_exit_code(tmp_path, arguments):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["gen", *arguments, "--out", str(tmp_path / "t.parquet")])
    assert exit_info.value.code == 2


def test_cli_reports_unknown_output_format_and_attack_kind_as_usage_errors(tmp_path, capsys):
    assert cli_main(["gen", "--proofs", "10", "--out", str(tmp_path / "t.csv")]) == 2
    assert cli_main(["gen", "--proofs", "10", "--attacks", "wormhole=1",
                     "--out", str(tmp_path / "t.parquet")]) == 2
    assert "wormhole" in capsys.readouterr().err
