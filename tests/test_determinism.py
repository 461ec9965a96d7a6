"""Every validator must reach the same digest for the same batch and prior state (SPEC §4)."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepbatch import MemoryStore, Validator, read_proofs
from stepbatch.config import Config
from tests.strategies import _T0_MS, proof_rows

_DIGEST_IN_CHILD = """
import sys, json
from stepbatch import MemoryStore, Validator
from stepbatch.config import Config
seeded = json.loads(sys.argv[2])
with Validator(MemoryStore(seeded), Config(signature_threads=int(sys.argv[3]))) as v:
    print(v.validate(sys.argv[1], batch_id="det", batch_time=int(sys.argv[4])).digest)
"""


@settings(max_examples=1, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_digest_is_the_same_across_runs_threads_and_processes(tmp_path_factory, data):
    import json

    seeded, rows = data.draw(proof_rows(19, max_rows=40).filter(lambda world: len(world[1]) >= 30))
    batch = read_proofs(rows)
    path = tmp_path_factory.mktemp("det") / "batch.parquet"
    pq.write_table(batch, path)

    digests = set()
    for threads in (1, 2, 5):
        with Validator(MemoryStore(seeded), Config(signature_threads=threads)) as validator:
            digests.add(validator.validate(batch, batch_id="det", batch_time=_T0_MS).digest)
            digests.add(validator.validate(batch, batch_id="det", batch_time=_T0_MS).digest)
    child = subprocess.run(
        [sys.executable, "-c", _DIGEST_IN_CHILD, str(path), json.dumps(seeded), "3", str(_T0_MS)],
        capture_output=True, text=True, check=True)
    digests.add(child.stdout.strip())
    # Another machine: kernels compiled for a generic x86-64 CPU (no AVX, no FMA) in a cache of their own,
    # on one thread.
    generic = subprocess.run(
        [sys.executable, "-c", _DIGEST_IN_CHILD, str(path), json.dumps(seeded), "1", str(_T0_MS)],
        capture_output=True, text=True, check=True, env={
            **os.environ, "NUMBA_CPU_NAME": "generic", "NUMBA_NUM_THREADS": "1",
            "NUMBA_CACHE_DIR": str(tmp_path_factory.mktemp("numba-generic"))})
    digests.add(generic.stdout.strip())
    assert len(digests) == 1
