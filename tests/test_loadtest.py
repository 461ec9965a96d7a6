"""The load-test micro-batcher and the one-proof-per-request baseline it is compared with."""

from __future__ import annotations

import numpy as np
import pytest

from stepbatch.config import Config
from stepbatch.protocol import Code
from stepbatch.store.memory import MemoryStore
from stepbatch.tools import gen
from stepbatch.tools.baseline import OriginalServer
from stepbatch.tools.loadtest import (
    MicroBatcher,
    VirtualClock,
    arrival_offsets_s,
    count_committed_clicks,
)
from stepbatch.validator import Validator

CONFIG = Config(signature_threads=2)


@pytest.fixture(scope="module")
def traffic() -> gen.Traffic:
    return gen.generate(walkers=12, proofs=240, seed=5)


def _validator(traffic: gen.Traffic) -> Validator:
    return Validator(MemoryStore(traffic.triangles), CONFIG)


def _expected_codes(traffic: gen.Traffic) -> list[str]:
    return traffic.proofs.column("expected_code").to_pylist()


def test_batches_close_on_size_when_proofs_arrive_faster_than_the_wait(traffic):
    offsets_s = arrival_offsets_s(traffic.proofs.num_rows, rate_per_s=100_000)
    with _validator(traffic) as validator:
        run = MicroBatcher(validator, batch_size=50, max_wait_ms=1_000, commit=False,
                           clock=VirtualClock()).run_open(traffic.proofs, offsets_s)
    assert [b.rows for b in run.batches] == [50, 50, 50, 50, 40]
    assert [b.closed_on for b in run.batches] == ["size"] * 4 + ["wait"]


def test_batches_close_on_wait_when_proofs_arrive_slower_than_the_size(traffic):
    offsets_s = arrival_offsets_s(traffic.proofs.num_rows, rate_per_s=100)  # one per 10 ms
    with _validator(traffic) as validator:
        run = MicroBatcher(validator, batch_size=1_000, max_wait_ms=45, commit=False,
                           clock=VirtualClock()).run_open(traffic.proofs, offsets_s)
    assert {b.closed_on for b in run.batches} == {"wait"}
    assert {b.rows for b in run.batches} == {5}  # arrivals at 0, 10, ..., 40 ms of each batch
    # On a clock that does not move while validating, a proof waits at most max_wait.
    assert run.latency_ms("verdict").max() == pytest.approx(45.0)


def test_no_proof_is_lost_and_verdicts_equal_one_batch(traffic):
    offsets_s = arrival_offsets_s(traffic.proofs.num_rows, rate_per_s=2_000, process="poisson", seed=3)
    with _validator(traffic) as validator:
        run = MicroBatcher(validator, batch_size=32, max_wait_ms=5, commit=True,
                           clock=VirtualClock()).run_open(traffic.proofs, offsets_s)
        store = validator.store
    assert sum(b.rows for b in run.batches) == traffic.proofs.num_rows
    assert run.verdict_rows == traffic.proofs.num_rows
    assert run.lost == 0
    assert run.committed_clicks == run.accepted == count_committed_clicks(store)
    expected = dict(zip(*np.unique(_expected_codes(traffic), return_counts=True)))
    assert run.counts == {code: int(n) for code, n in expected.items()}


def test_latencies_are_consistent_on_the_real_clock(traffic):
    proofs = traffic.proofs.slice(0, 120)
    offsets_s = arrival_offsets_s(proofs.num_rows, rate_per_s=50_000)
    with _validator(traffic) as validator:
        run = MicroBatcher(validator, batch_size=40, max_wait_ms=2, commit=True).run_open(proofs, offsets_s)
    assert run.lost == 0
    assert not np.isnan(run.verdict_s).any()
    assert (run.arrival_s <= run.verdict_s).all()
    assert (run.verdict_s <= run.committed_s).all()
    assert np.all(np.diff(run.arrival_s) >= 0)


def test_closed_loop_takes_the_next_batch_when_the_last_is_done(traffic):
    with _validator(traffic) as validator:
        run = MicroBatcher(validator, batch_size=100, max_wait_ms=0, commit=False).run_closed(traffic.proofs)
    assert [b.rows for b in run.batches] == [100, 100, 40]
    assert run.verdict_rows == traffic.proofs.num_rows
    # Each batch arrives once the previous verdicts are out.
    assert run.arrival_s[100] >= run.verdict_s[99]
    assert (run.arrival_s <= run.verdict_s).all()


def test_arrival_processes_keep_their_rate():
    uniform = arrival_offsets_s(1_001, rate_per_s=500)
    assert uniform[-1] == pytest.approx(2.0)
    poisson = arrival_offsets_s(20_000, rate_per_s=500, process="poisson", seed=1)
    assert poisson[0] == 0 and np.all(np.diff(poisson) >= 0)
    assert 20_000 / poisson[-1] == pytest.approx(500, rel=0.05)
    with pytest.raises(ValueError):
        arrival_offsets_s(10, rate_per_s=0)


@pytest.mark.mongo
def test_no_proof_is_lost_against_the_embedded_database(traffic, mongo_store):
    mongo_store.add_triangles(traffic.triangles)
    proofs = traffic.proofs.slice(0, 120)
    offsets_s = arrival_offsets_s(proofs.num_rows, rate_per_s=5_000)
    with Validator(mongo_store, CONFIG) as validator:
        run = MicroBatcher(validator, batch_size=60, max_wait_ms=20, commit=True).run_open(proofs, offsets_s)
    assert run.lost == 0
    with _validator(traffic) as validator:
        expected = validator.validate(proofs).counts.get("ACCEPTED", 0)
    assert run.committed_clicks == run.accepted == expected
    assert (run.arrival_s <= run.verdict_s).all() and (run.verdict_s <= run.committed_s).all()


@pytest.mark.mongo
def test_baseline_gives_the_engines_verdicts_one_proof_at_a_time(traffic, mongo_store):
    mongo_store.add_triangles(traffic.triangles)
    proofs = traffic.proofs.slice(0, 120)
    run = OriginalServer(mongo_store, CONFIG).run(proofs)
    with _validator(traffic) as validator:
        engine = validator.validate(proofs).verdicts.column("code").to_pylist()
    assert [Code(int(c)).name for c in run.codes] == engine
    assert count_committed_clicks(mongo_store) == int((run.codes == Code.ACCEPTED).sum())
    assert np.isclose(run.latency_s.sum(), sum(run.stage_s.values()))


@pytest.mark.bench
def test_bench_command_writes_its_table_and_json(tmp_path, capsys):
    import json

    from stepbatch.cli import main

    code = main(["bench", "--quick", "--mode", "closed", "--skip-database", "--skip-baseline",
                 "--closed-proofs", "300", "--batch-size", "100,300", "--out-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| a: libsecp256k1 ceiling |" in out and "| b: stepbatch validate-only | closed |" in out
    (json_path,) = tmp_path.glob("bench-*.json")
    report = json.loads(json_path.read_text())
    assert [run["repeats"][0]["batch_size"] for run in report["runs"]] == [100, 300]
    assert all(run["repeats"][0]["lost"] == 0 and run["repeats"][0]["proofs"] == 300 for run in report["runs"])
    ceiling = max(report["ceiling"]["per_s"])
    best_b = max(r["throughput_per_s"] for run in report["runs"] for r in run["repeats"])
    assert report["ratios"]["b/a"] == pytest.approx(best_b / ceiling)
