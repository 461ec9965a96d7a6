"""Putting mesh levels into the `triangles` collection and taking them out again.

Seeding is idempotent and resumable: documents are inserted unordered and the ones already present
are skipped by their duplicate `_id`, so a run that was interrupted is finished by running it again.
A level that is already complete is recognised by its count and skipped without a write.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Iterable, Sequence

import bson
import numpy as np
from tqdm import tqdm

from stepbatch import mesh
from stepbatch.mesh import levels as mesh_levels
from stepbatch.protocol import MAX_LEVEL
from stepbatch.store import documents
from stepbatch.store.base import StoreError
from stepbatch.store.database import (
    ensure_schema,
    geo_lookup_is_exact,
    insert_new,
    level_filter,
    record_seeding,
    translated_errors,
)

INSERT_CHUNK = 5_000
SIZE_SAMPLE = 256


@dataclasses.dataclass
class LevelReport:
    level: int
    planned: int  # triangles of the level (within the bbox)
    inserted: int = 0
    existing: int = 0  # already in the collection, left as they were
    bson_bytes_per_document: float = 0.0  # mean BSON size of the level's documents
    seconds: float = 0.0

    @property
    def estimated_bytes(self) -> int:
        """BSON bytes of the level's documents: before WiredTiger's compression, without indexes."""
        return int(round(self.planned * self.bson_bytes_per_document))


@dataclasses.dataclass
class SeedReport:
    levels: list[LevelReport]
    dry_run: bool

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


def _database(db_or_store):
    return getattr(db_or_store, "db", db_or_store)


def seed_mesh(db_or_store, levels: Iterable[int], bbox: Sequence[float] | None = None,
              dry_run: bool = False, progress: bool = True) -> SeedReport:
    """Insert every triangle of `levels` (only those near `bbox` = W, S, E, N degrees when given).

    `dry_run` counts and estimates without writing. Raises ValueError for a bad level or bbox.
    """
    db = _database(db_or_store)
    levels = list(levels)
    for level in levels:
        mesh_levels.count_level(level)  # validates the level before anything is written
    if not dry_run:
        with translated_errors("creating the triangle indexes"):
            ensure_schema(db)
    reports = []
    for level in levels:
        report = LevelReport(level=level, planned=mesh_levels.count_level(level, bbox))
        report.bson_bytes_per_document = _mean_bson_bytes(level, bbox)
        if not dry_run:
            started = time.perf_counter()
            _seed_level(db, report, bbox, progress)
            report.seconds = time.perf_counter() - started
        reports.append(report)
    return SeedReport(levels=reports, dry_run=dry_run)


def _seed_level(db, report: LevelReport, bbox, progress: bool) -> None:
    with translated_errors(f"seeding level {report.level}"):
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
    """Delete every triangle of `level`; how many were deleted.

    Refuses (StoreError naming how many) when any of them has been clicked, unless `force`: their
    clicks are history that rewards were paid for."""
    db = _database(db_or_store)
    mesh_levels.count_level(level)
    with translated_errors(f"dropping level {level}"):
        clicked = db.triangles.count_documents({**level_filter(level), "clicks": {"$gt": 0}})
        if clicked and not force:
            raise StoreError(f"level {level} has {clicked} clicked triangle{'s' * (clicked != 1)}; "
                             f"refusing to drop it (use force to drop anyway)")
        deleted = db.triangles.delete_many(level_filter(level)).deleted_count
        if deleted:
            record_seeding(db, [])
        return deleted


def triangles_at(db_or_store, lat: float, lon: float) -> list[dict]:
    """The stored triangles that contain (lat, lon) in degrees, coarsest level first.

    Uses `$geoIntersects` on the 2dsphere index where the server has one and answers it exactly
    (then a point on an edge returns every triangle sharing that edge); otherwise descends the mesh
    (SPEC §3: one triangle per level) and looks those ids up."""
    db = _database(db_or_store)
    lat, lon = float(lat), float(lon)
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError(f"need lat in [-90, 90] and lon in [-180, 180], got ({lat!r}, {lon!r})")
    with translated_errors("looking up triangles at a point"):
        indexed = any(dict(spec["key"]).get("polygon") == "2dsphere"
                      for spec in db.triangles.list_indexes())
        if indexed and geo_lookup_is_exact(db):
            point = {"type": "Point", "coordinates": [lon, lat]}
            found = list(db.triangles.find({"polygon": {"$geoIntersects": {"$geometry": point}}}))
        else:
            ids = mesh.triangle_at(np.full(MAX_LEVEL, lat), np.full(MAX_LEVEL, lon),
                                   np.arange(1, MAX_LEVEL + 1)).tolist()
            found = list(db.triangles.find({"_id": {"$in": ids}}))
    return sorted(found, key=lambda doc: (doc.get("level", 0), doc["_id"]))
