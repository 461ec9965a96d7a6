"""Declaring mesh levels, materializing them into the `triangles` collection, and dropping them.

`seed_mesh` records a declaration (`stepbatch.mesh.regions`): the levels' triangles exist from then
on and each gets a document the first time its state changes, so seeding the whole Earth to level 10
is one small write. With `materialize` it also inserts a document per triangle (for tools that want
2dsphere queries over them): idempotent and resumable, documents are inserted unordered and those
already present are skipped by their duplicate `_id`, so an interrupted run is finished by running
it again. The declaration is recorded either way, so a region reads the same however it was seeded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Iterable, Sequence

import bson
import numpy as np
from pymongo.database import Database
from tqdm import tqdm

from stepbatch import mesh
from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import levels as mesh_levels
from stepbatch.mesh.regions import LevelRegion
from stepbatch.protocol import MAX_LEVEL
from stepbatch.store import documents
from stepbatch.store.base import StoreError
from stepbatch.store.database import (
    declare,
    ensure_schema,
    insert_new,
    level_filter,
    read_regions,
    record_seeding,
    translated_errors,
    write_regions,
)
from stepbatch.store.reads import exist_without_document, find_in

INSERT_CHUNK = 5_000
SIZE_SAMPLE = 256


@dataclasses.dataclass
class LevelReport:
    level: int
    planned: int  # triangles of the level (within the bbox): what the declaration covers
    inserted: int = 0  # documents written (only when materializing)
    existing: int = 0  # documents already in the collection, left as they were
    bson_bytes_per_document: float = 0.0  # mean BSON size of the level's documents
    seconds: float = 0.0

    @property
    def estimated_bytes(self) -> int:
        """BSON bytes of the level's documents if materialized: before compression, without indexes."""
        return int(round(self.planned * self.bson_bytes_per_document))


@dataclasses.dataclass
class SeedReport:
    levels: list[LevelReport]
    dry_run: bool
    materialize: bool = False
    seconds: float = 0.0

    @property
    def planned(self) -> int:
        return sum(level.planned for level in self.levels)

    @property
    def inserted(self) -> int:
        return sum(level.inserted for level in self.levels)

    @property
    def existing(self) -> int:
        return sum(level.existing for level in self.levels)

    @property
    def estimated_bytes(self) -> int:
        return sum(level.estimated_bytes for level in self.levels)


def _database(db_or_store) -> Database:
    """The pymongo database of a store, or the database itself (whose attributes are collections)."""
    return db_or_store if isinstance(db_or_store, Database) else db_or_store.db


def seed_mesh(db_or_store, levels: Iterable[int], bbox: Sequence[float] | None = None,
              dry_run: bool = False, progress: bool = True, materialize: bool = False) -> SeedReport:
    """Declare every triangle of `levels` (only those near `bbox` = W, S, E, N degrees when given),
    and with `materialize` also insert a document for each.

    `dry_run` counts what the declaration covers and estimates the documents' size, writing nothing.
    Raises ValueError for a bad level or bbox."""
    started = time.perf_counter()
    levels = sorted(set(levels))
    for level in levels:
        mesh_levels.count_level(level)  # validates the level before anything is written
    regions = [LevelRegion(first, last, bbox) for first, last in _runs(levels)]
    reports = [LevelReport(level=level, planned=mesh_levels.count_level(level, bbox),
                           bson_bytes_per_document=_mean_bson_bytes(level, bbox)) for level in levels]
    if not dry_run:
        db = _database(db_or_store)
        with translated_errors("declaring the levels"):
            ensure_schema(db)
            for region in regions:
                declare(db, region)
        if materialize:
            for report in reports:
                level_started = time.perf_counter()
                _seed_level(db, report, bbox, progress)
                report.seconds = time.perf_counter() - level_started
    return SeedReport(levels=reports, dry_run=dry_run, materialize=materialize,
                      seconds=time.perf_counter() - started)


def _runs(levels: list[int]) -> list[tuple[int, int]]:
    """Sorted levels as (first, last) runs of consecutive levels."""
    runs: list[tuple[int, int]] = []
    for level in levels:
        if runs and runs[-1][1] == level - 1:
            runs[-1] = (runs[-1][0], level)
        else:
            runs.append((level, level))
    return runs


def _seed_level(db, report: LevelReport, bbox, progress: bool) -> None:
    with translated_errors(f"materializing level {report.level}"):
        if bbox is None:
            present = db.triangles.count_documents(level_filter(report.level))
            if present >= report.planned:
                report.existing = report.planned
                return
        with tqdm(total=report.planned, desc=f"level {report.level}", unit="tri",
                  disable=not progress, leave=False) as bar:
            for keys in mesh_levels.iter_level_keys(report.level, bbox, chunk=INSERT_CHUNK):
                now = dt.datetime.now(dt.timezone.utc)
                inserted, existing = insert_new(db.triangles, documents.triangle_documents(keys, now))
                report.inserted += inserted
                report.existing += existing
                bar.update(len(keys))
        if report.inserted:
            record_seeding(db, [report.level])


def _mean_bson_bytes(level: int, bbox) -> float:
    keys = next(mesh_levels.iter_level_keys(level, bbox, chunk=SIZE_SAMPLE), np.empty(0, np.int64))
    if len(keys) == 0:
        return 0.0
    now = dt.datetime.now(dt.timezone.utc)
    return float(np.mean([len(bson.encode(doc)) for doc in documents.triangle_documents(keys, now)]))


def drop_level(db_or_store, level: int, force: bool = False) -> int:
    """Take `level` out of every declaration and delete its triangle documents; how many documents
    were deleted. Children of subdivided triangles of the level above go on existing, by their parent.

    Refuses (StoreError naming how many) when any of its triangles has been clicked, unless `force`:
    their clicks are history that rewards were paid for. Without `force` nothing changes then."""
    db = _database(db_or_store)
    mesh_levels.count_level(level)
    with translated_errors(f"dropping level {level}"):
        clicked = db.triangles.count_documents({**level_filter(level), "clicks": {"$gt": 0}})
        if clicked and not force:
            raise StoreError(f"level {level} has {clicked} clicked triangle{'s' * (clicked != 1)}; "
                             f"refusing to drop it (use force to drop anyway)")
        declared = read_regions(db)
        if declared.without_level(level) != declared:
            write_regions(db, declared.without_level(level))
        deleted = db.triangles.delete_many(level_filter(level)).deleted_count
        if deleted:
            record_seeding(db, [])
        return deleted


def triangles_at(db_or_store, lat: float, lon: float) -> list[dict]:
    """The triangles that exist at (lat, lon) in degrees, coarsest level first: at each level the one
    containing the point (SPEC §3's descent), as stored, or as a fresh document where a declaration
    or a subdivided parent alone makes it exist."""
    lat, lon = float(lat), float(lon)
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError(f"need lat in [-90, 90] and lon in [-180, 180], got ({lat!r}, {lon!r})")
    ids = mesh.triangle_at(np.full(MAX_LEVEL, lat), np.full(MAX_LEVEL, lon), np.arange(1, MAX_LEVEL + 1))
    return existing_triangles(db_or_store, list(ids))


def existing_triangles(db_or_store, triangle_ids: list[str]) -> list[dict]:
    """Documents of the triangles among `triangle_ids` that exist, in the order given: stored ones as
    they are, the declared ones and the children of subdivided triangles that have no document of
    their own as a fresh document (active, no clicks)."""
    db = _database(db_or_store)
    with translated_errors("looking up triangles"):
        found = {doc["_id"]: doc for doc in find_in(db, "triangles", triangle_ids, None)}
        absent = [i for i in dict.fromkeys(triangle_ids) if i not in found]
        covered = [i for i, hit in zip(absent, exist_without_document(db, absent, read_regions(db)).tolist())
                   if hit]
    if covered:
        now = dt.datetime.now(dt.timezone.utc)
        found.update((doc["_id"], doc) for doc in documents.triangle_documents(
            mesh_ids.decode_ids(covered).keys, now))
    return [found[i] for i in triangle_ids if i in found]
