"""`replay --cluster`: the stateless stage on a Dask cluster gives the single-process replay's results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from stepbatch.config import Config
from stepbatch.mesh.regions import IdRegion
from stepbatch.store.mongo import MongoStore
from stepbatch.store.statedigest import state_digest
from stepbatch.tools import gen
from stepbatch.tools.cluster import DaskCluster
from stepbatch.tools.replay import replay
from stepbatch.validator import Validator
from tests.processes import ROOT

pytestmark = [pytest.mark.mongo, pytest.mark.slow]

BATCH = 700


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Three Parquet files of one traffic, cut inside walkers' journeys, so that accounts, nonces and
    triangles interact across file boundaries; and its triangles."""
    folder = tmp_path_factory.mktemp("archive")
    traffic = gen.generate(walkers=60, proofs=4_000, seed=21)
    cuts = [0, 1_150, 2_600, traffic.proofs.num_rows]
    paths = []
    for k, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
        path = folder / f"part-{k}.parquet"
        pq.write_table(traffic.proofs.slice(lo, hi - lo), path)
        paths.append(str(path))
    return paths, traffic.triangles


def _run(mongo_uri, db_name, paths, triangles, out, cluster=None, **options):
    with MongoStore(mongo_uri, db_name) as store:
        store.declare(IdRegion.of_ids(triangles))
        with Validator(store) as validator:
            summary = replay(paths, validator, out=str(out), batch_size=BATCH, cluster=cluster, **options)
        digests = {batch["_id"]: batch["digest"] for batch in store.db.batches.find()}
        return summary, digests, state_digest(store.db)


def _verdicts(path):
    return pq.read_table(path).drop_columns(["batch_seconds"])


def _drop(mongo_uri, *names):
    import pymongo
    with pymongo.MongoClient(mongo_uri) as client:
        for name in names:
            client.drop_database(name)


@pytest.fixture
def single(archive, mongo_uri, mongo_db_name, tmp_path):
    paths, triangles = archive
    return _run(mongo_uri, mongo_db_name, paths, triangles, tmp_path / "single.parquet"), tmp_path / "single.parquet"


def test_a_local_cluster_gives_the_single_process_verdicts_and_digests(archive, single, mongo_uri, tmp_path):
    (summary, digests, state), single_out = single
    paths, _ = archive
    name = f"{os.path.basename(str(tmp_path))[:20]}_cluster"
    out = tmp_path / "cluster.parquet"
    result = subprocess.run(
        [sys.executable, "-m", "stepbatch", "--mongodb-uri", mongo_uri, "replay", *paths, "--triangles",
         str(_sidecar(archive, tmp_path)), "--batch-size", str(BATCH), "--cluster", "local:2", "--out", str(out),
         "--quiet"], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "STEPBATCH_DB": name}, timeout=600)
    try:
        assert result.returncode == 0, result.stderr[-2000:]
        assert "worker tcp://" in result.stdout and f"replayed {summary.rows:,} proofs" in result.stdout
        assert _verdicts(out).equals(_verdicts(single_out))
        with MongoStore(mongo_uri, name) as store:
            assert {b["_id"]: b["digest"] for b in store.db.batches.find()} == digests
            assert state_digest(store.db) == state
    finally:
        _drop(mongo_uri, name)


def _sidecar(archive, folder):
    import json
    path = folder / "triangles.json"
    path.write_text(json.dumps(archive[1]))
    return path


def test_a_killed_worker_and_a_resumed_run_change_nothing(archive, single, mongo_uri, tmp_path):
    (summary, digests, state), single_out = single
    paths, triangles = archive
    name = f"{os.path.basename(str(tmp_path))[:20]}_killed"
    out = tmp_path / "killed.parquet"
    try:
        with DaskCluster("local:2", Config.from_env()) as cluster:
            pids = list(cluster.client.run(os.getpid).values())
            done = []

            def kill_one_then_stop(rows, _summary):
                done.append(rows)
                if len(done) == 1:
                    os.kill(pids[0], signal.SIGKILL)  # its batches in flight are recomputed elsewhere
                if len(done) == 3:
                    raise KeyboardInterrupt  # the replay process "crashes" after three batches
            with pytest.raises(KeyboardInterrupt):
                _run(mongo_uri, name, paths, triangles, out, cluster=cluster, progress=kill_one_then_stop)
            resumed, resumed_digests, resumed_state = _run(mongo_uri, name, paths, triangles, out, cluster=cluster,
                                                           resume=True)
        # Batches committed before the crash (three, and the one committing behind them) are not redone.
        assert 3 * BATCH <= resumed.resumed_from_row < summary.rows
        assert _verdicts(out).equals(_verdicts(single_out))
        assert resumed_digests == digests and resumed_state == state
    finally:
        _drop(mongo_uri, name)
