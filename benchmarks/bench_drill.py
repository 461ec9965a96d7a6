"""The restore drill at scale (SPEC §11, issue 24): RPO and RTO of `db backup` + `db restore --archive`.

A writer finalizes `--proofs` generated proofs in batches of `--batch-size` on an embedded server
with its own data directory, archiving every committed batch as `stepbatch serve --archive` does.
When `--backup-at` of the proofs are committed, `db backup` runs beside it (the writer does not
stop). After the last batch the state digest is read, the database server is SIGKILLed and its
data directory deleted. Then a fresh server is started on the empty directory, the backup restored
(its digest checked) and the archived batches after the backup's sequence number replayed; the
final digest must be the one read before the kill.

- RPO, backup alone: the proofs (and seconds of writing) committed after the backup's snapshot,
  which a restore without the archive loses. With the archive: the batches not yet archived when
  the database died, 0 here (a batch is archived before its requests are answered).
- RTO: server start + restore + replay, the time from "database lost" to "serving the present
  state again".

    .venv/bin/python benchmarks/bench_drill.py --proofs 100000
    .venv/bin/python benchmarks/bench_drill.py --proofs 1000000 --walkers 2000

Prints a Markdown table row and writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import tempfile
import threading
import time

import pymongo

from stepbatch.config import Config
from stepbatch.mesh.regions import IdRegion
from stepbatch.pipeline import Pipeline
from stepbatch.store import backup as backups
from stepbatch.store.archive import BatchArchive, archived_batches, replay_archive
from stepbatch.store.embedded import LOCK_NAME, EmbeddedServer, lock_holder
from stepbatch.store.mongo import MongoStore
from stepbatch.store.statedigest import state_digest
from stepbatch.tools import gen
from stepbatch.validator import Validator

DB = "step"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proofs", type=int, default=100_000)
    parser.add_argument("--walkers", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--backup-at", type=float, default=0.5, help="share of the proofs committed when "
                                                                        "the backup starts (0.5)")
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--dir", default=None, help="working directory (default: a temporary one, removed)")
    args = parser.parse_args()
    work = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="bench-drill-"))
    try:
        print(json.dumps(drill(args, work), indent=1))
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


def drill(args, work: pathlib.Path) -> dict:
    config = Config.from_env()
    started = time.perf_counter()
    traffic = gen.generate(walkers=args.walkers, proofs=args.proofs, seed=args.seed)
    proofs = traffic.proofs
    generated_s = time.perf_counter() - started
    data_dir, archive = work / "db", BatchArchive(work / "archive")
    report: dict = {"proofs": proofs.num_rows, "batch_size": args.batch_size, "backup_at": args.backup_at,
                    "generate_s": round(generated_s, 1)}

    server = EmbeddedServer(data_dir).start()
    report["server"] = server.description
    backup_done: dict = {}
    with MongoStore(server.uri, DB, config=config) as store, Validator(store, config) as validator, \
            pymongo.MongoClient(server.uri, tz_aware=True) as client:
        store.declare(IdRegion.of_ids(traffic.triangles))
        committed = {"rows": 0}
        backup_thread = threading.Thread(target=_backup, args=(client, work / "backup", backup_done))

        def archived(done, batch, batch_id: str, batch_time: int) -> None:
            # On the committer's thread, as `stepbatch serve --archive` does it.
            archive.write(done.result().outcome.prior.seq + 1, batch_id, batch_time, batch)
            committed["rows"] += batch.num_rows
            if not backup_thread.is_alive() and "snapshot_at" not in backup_done \
                    and committed["rows"] >= args.backup_at * proofs.num_rows:
                backup_thread.start()

        write_started = time.perf_counter()
        with Pipeline(validator) as pipeline:
            pending = []
            for k, first in enumerate(range(0, proofs.num_rows, args.batch_size)):
                batch = proofs.slice(first, args.batch_size)
                batch_id, batch_time = f"drill-{k:06d}", 1_759_667_373_074 + first * 10
                future = pipeline.submit(batch, batch_id, batch_time)
                future.add_done_callback(lambda done, b=batch, i=batch_id, t=batch_time: archived(done, b, i, t))
                pending.append(future)
            for future in pending:
                future.result()
        write_ended = time.perf_counter()
        report["write_s"] = round(write_ended - write_started, 1)
        backup_thread.join()
        if "error" in backup_done:
            raise backup_done["error"]
        expected = state_digest(client[DB])
    os.kill(server.pid, signal.SIGKILL)
    _wait(lambda: lock_holder(data_dir / LOCK_NAME) is None)
    server.close()
    shutil.rmtree(data_dir)

    manifest = backups.read_manifest(work / "backup")
    lacking = archived_batches(archive.directory, manifest["seq"])
    lacking_rows = sum(_rows(batch.path) for batch in lacking)
    report.update({
        "backup_s": round(backup_done["report"].seconds, 1),
        "backup_mib": round(backup_done["report"].bytes / 2**20, 1),
        "backup_documents": sum(backup_done["report"].counts.values()),
        "backup_read_in": manifest["readIn"],
        "rpo_backup_alone_proofs": lacking_rows,
        "rpo_backup_alone_s": round(write_ended - backup_done["snapshot_at"], 1),
        "rpo_with_archive_proofs": 0,
    })

    lost_at = time.perf_counter()
    server = EmbeddedServer(data_dir).start()
    try:
        report["server_start_s"] = round(time.perf_counter() - lost_at, 1)
        with pymongo.MongoClient(server.uri, tz_aware=True) as client:
            restored = backups.restore(client[DB], work / "backup")
        report["restore_s"] = round(restored.seconds, 1)
        with MongoStore(server.uri, DB, config=config) as store, Validator(store, config) as validator:
            replayed = replay_archive(validator, archive.directory, manifest["seq"])
            report["replay_s"] = round(replayed.seconds, 1)
            report["replayed_batches"] = replayed.batches
            final = state_digest(store.db)
        report["rto_s"] = round(time.perf_counter() - lost_at, 1)
    finally:
        server.close()
    report["digest_equal"] = final == expected
    if final != expected:
        raise SystemExit(f"drill failed: restored + replayed digest {final} != {expected}")
    results = pathlib.Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / f"drill-{proofs.num_rows}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"| {proofs.num_rows:,} | {report['backup_s']} s ({report['backup_mib']} MiB) | "
          f"{lacking_rows:,} proofs / {report['rpo_backup_alone_s']} s | 0 | {report['server_start_s']} s | "
          f"{report['restore_s']} s | {report['replay_s']} s ({replayed.rows:,} proofs) | **{report['rto_s']} s** | yes |")
    return report


def _backup(client, directory: pathlib.Path, done: dict) -> None:
    # The snapshot is taken as the backup starts: what is committed after that is not in it.
    done["snapshot_at"] = time.perf_counter()
    try:
        done["report"] = backups.backup(client[DB], directory)
    except BaseException as err:
        done["error"] = err


def _rows(path: pathlib.Path) -> int:
    import pyarrow.parquet as pq
    return pq.ParquetFile(path).metadata.num_rows


def _wait(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the killed database server still holds its data directory")
        time.sleep(0.05)


if __name__ == "__main__":
    main()
