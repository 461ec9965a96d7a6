"""`stepbatch.tools.replay` in process: batch ids a resumed run can find, where it resumes, and a failed
replay leaving no verdict file behind."""

from __future__ import annotations

import json
import pathlib

import pyarrow.parquet as pq
import pytest

from stepbatch import MemoryStore, Validator
from stepbatch.cli.gen import write_traffic
from stepbatch.config import Config
from stepbatch.ingest import ProofSourceError, read_proofs
from stepbatch.tools import gen
from stepbatch.tools.replay import replay, resume_row, run_id_of

CONFIG = Config(signature_threads=1)


@pytest.fixture(scope="module")
def traffic_file(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("replay") / "traffic.ndjson"
    write_traffic(gen.generate(walkers=10, proofs=300, seed=4), path, "ndjson")
    return path


def store_for(path: pathlib.Path) -> MemoryStore:
    return MemoryStore(json.loads(path.with_suffix(".triangles.json").read_text())["triangles"])


def test_verdicts_are_one_per_row_in_order_and_match_the_expected_codes(traffic_file, tmp_path):
    out = tmp_path / "verdicts.parquet"
    with Validator(store_for(traffic_file), CONFIG) as validator:
        summary = replay([str(traffic_file)], validator, out=str(out), commit=False, batch_size=70)
    verdicts = pq.read_table(out).to_pydict()
    assert (summary.rows, summary.batches) == (300, 5)
    assert verdicts["row"] == list(range(300))
    assert verdicts["code"] == verdicts["expected_code"]
    assert sum(summary.counts.values()) == 300


def test_resume_starts_after_the_last_batch_of_the_run_and_ignores_other_runs(traffic_file):
    store = store_for(traffic_file)
    with Validator(store, CONFIG) as validator:
        replay([str(traffic_file)], validator, commit=False, batch_size=100)
        run_id = run_id_of([str(traffic_file)])
        assert resume_row(validator, run_id) == 300
        assert resume_row(validator, run_id[:-1] + "x") == 0
        assert sorted(store.batch_ids(run_id + "@")) == sorted(
            f"{run_id}@{first}+100" for first in (0, 100, 200))


def test_a_replay_that_fails_midway_leaves_no_verdict_file(traffic_file, tmp_path):
    truncated = tmp_path / "broken.parquet"
    whole = tmp_path / "whole.parquet"
    pq.write_table(read_proofs(str(traffic_file)), whole, row_group_size=50)
    data = whole.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    out = tmp_path / "verdicts.parquet"
    with Validator(store_for(traffic_file), CONFIG) as validator:
        with pytest.raises(ProofSourceError):
            replay([str(truncated)], validator, out=str(out), commit=False, batch_size=50)
    assert list(tmp_path.glob("verdicts*")) == []


@pytest.mark.mongo
def test_mongo_batch_ids_match_the_prefix_literally(mongo_store):
    ids = ["run.1@0+10", "run.1@10+10", "runx1@0+10", "run.10@0+10", "xrun.1@0+10", "run.1"]
    mongo_store.db.batches.insert_many([{"_id": batch_id} for batch_id in ids])
    assert sorted(mongo_store.batch_ids("run.1@")) == ["run.1@0+10", "run.1@10+10"]
    assert sorted(mongo_store.batch_ids("run.1")) == sorted(
        ["run.1", "run.1@0+10", "run.1@10+10", "run.10@0+10"])
    assert mongo_store.batch_ids("(") == []
