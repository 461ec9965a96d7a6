"""Declared regions of the mesh: which triangles exist without a document each (SPEC §5).

A region is either levels A..B, whole or near a bounding box, or an explicit list of triangle ids. A
triangle exists if a store holds it or a declared region covers it. Coverage by a bbox is exactly the
set `stepbatch.mesh.levels.iter_level_keys(level, bbox)` enumerates (and `mesh seed --bbox` has always
written): walking down from the triangle's face, an ancestor whose bounding cap misses the box rules
it out, one whose cap lies inside the box rules it in, and at the triangle's own level a cap that
meets the box rules it in. `Regions.covers` decides that for a whole column of keys in one kernel
call, so a batch never costs a query per triangle.

Regions have one canonical JSON form (`to_json`), used by the store's `regions` collection, by the
consensus genesis `app_state` and by `state_digest`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterable, Sequence

import numpy as np

from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import keys as mesh_keys
from stepbatch.mesh import levels as mesh_levels
from stepbatch.mesh.ids import check_level
from stepbatch_kernels import bbox as kbbox
from stepbatch_kernels import mesh as kmesh
from stepbatch_kernels.jit import launch


@dataclasses.dataclass(frozen=True)
class LevelRegion:
    """Every triangle of levels first..last (inclusive), or only those near `bbox` (W, S, E, N)."""

    first: int
    last: int
    bbox: tuple[float, float, float, float] | None = None

    def __post_init__(self):
        if check_level(self.first) > check_level(self.last):
            raise ValueError(f"levels {self.first}-{self.last}: the first must not exceed the last")
        if self.bbox is not None:
            object.__setattr__(self, "bbox", mesh_levels.check_bbox(self.bbox))

    @property
    def levels(self) -> range:
        return range(self.first, self.last + 1)

    def covers(self, keys: np.ndarray) -> np.ndarray:
        levels = mesh_keys.key_levels(keys)
        inside = (levels >= self.first) & (levels <= self.last)
        if self.bbox is None or not inside.any():
            return inside
        rows = np.flatnonzero(inside)
        near = np.empty(len(rows), np.bool_)
        launch(kbbox.bbox_covers_keys, len(rows), keys[rows], *self.bbox, near)
        inside[rows] = near
        return inside

    def count(self, level: int) -> int:
        return mesh_levels.count_level(level, self.bbox) if level in self.levels else 0

    def without_level(self, level: int) -> list["LevelRegion"]:
        if level not in self.levels:
            return [self]
        parts = [(self.first, level - 1), (level + 1, self.last)]
        return [LevelRegion(a, b, self.bbox) for a, b in parts if a <= b]

    def to_json(self) -> dict:
        return {"kind": "levels", "first": self.first, "last": self.last,
                "bbox": list(self.bbox) if self.bbox is not None else None}


@dataclasses.dataclass(frozen=True, eq=False)
class IdRegion:
    """An explicit set of triangles, held as sorted unique packed keys."""

    keys: np.ndarray

    @classmethod
    def of_ids(cls, triangle_ids: Iterable[str]) -> "IdRegion":
        """ValueError naming the first id that is not canonical."""
        ids = list(triangle_ids)
        decoded = mesh_ids.decode_ids(ids)
        bad = np.flatnonzero(~decoded.valid)
        if len(bad):
            raise ValueError(f"not a canonical STEP-TRI-v1 id: {ids[bad[0]]!r}")
        return cls(np.unique(decoded.keys))

    def covers(self, keys: np.ndarray) -> np.ndarray:
        if not len(self.keys):
            return np.zeros(len(keys), np.bool_)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[at] == keys

    def count(self, level: int) -> int:
        return int((mesh_keys.key_levels(self.keys) == level).sum())

    def without_level(self, level: int) -> list["IdRegion"]:
        kept = self.keys[mesh_keys.key_levels(self.keys) != level]
        return [IdRegion(kept)] if len(kept) else []

    def ids(self) -> list[str]:
        return mesh_ids.encode_keys(self.keys).to_pylist()

    def to_json(self) -> dict:
        return {"kind": "ids", "ids": self.ids()}

    def __eq__(self, other) -> bool:
        return isinstance(other, IdRegion) and np.array_equal(self.keys, other.keys)

    def __hash__(self) -> int:
        return hash(self.keys.tobytes())


Region = LevelRegion | IdRegion


def region_from_json(value: dict) -> Region:
    """The region of `to_json`'s form; ValueError (naming what is wrong) for anything else."""
    if not isinstance(value, dict):
        raise ValueError(f"a region is a JSON object, got {type(value).__name__}")
    kind = value.get("kind")
    if kind == "levels":
        try:
            return LevelRegion(int(value["first"]), int(value["last"]),
                               tuple(value["bbox"]) if value.get("bbox") is not None else None)
        except (KeyError, TypeError) as err:
            raise ValueError(f"a levels region needs first, last and bbox (or null): {value!r}") from err
    if kind == "ids":
        ids = value.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError("an ids region needs `ids`, a list of triangle id strings")
        return IdRegion.of_ids(ids)
    raise ValueError(f"a region's kind is 'levels' or 'ids', got {kind!r}")


@dataclasses.dataclass(frozen=True)
class Regions:
    """The declared regions of a store: a triangle is covered when any of them covers it."""

    regions: tuple[Region, ...] = ()

    @classmethod
    def of(cls, regions: Iterable[Region]) -> "Regions":
        """The regions without repeats, every id list merged into one (the last region)."""
        unique: list[Region] = []
        keys: list[np.ndarray] = []
        for region in regions:
            if isinstance(region, IdRegion):
                keys.append(region.keys)
            elif region not in unique:
                unique.append(region)
        if keys:
            unique.append(IdRegion(np.unique(np.concatenate(keys))))
        return cls(tuple(unique))

    def __bool__(self) -> bool:
        return bool(self.regions)

    def __iter__(self):
        return iter(self.regions)

    def plus(self, region: Region) -> "Regions":
        return Regions.of((*self.regions, region))

    def without_level(self, level: int) -> "Regions":
        return Regions.of(part for region in self.regions for part in region.without_level(level))

    def covers(self, keys) -> np.ndarray:
        """Whether each packed key (int64 array; invalid keys are never covered) is declared."""
        keys = np.asarray(keys, np.int64)
        covered = np.zeros(len(keys), np.bool_)
        if not self.regions or not len(keys):
            return covered
        valid = mesh_keys.keys_valid(keys)
        for region in self.regions:
            todo = np.flatnonzero(valid & ~covered)
            if not len(todo):
                break
            covered[todo] = region.covers(keys[todo])
        return covered

    def covers_ids(self, triangle_ids: Sequence[str]) -> np.ndarray:
        decoded = mesh_ids.decode_ids(list(triangle_ids))
        return self.covers(np.where(decoded.valid, decoded.keys, kmesh.INVALID_KEY))

    def to_json(self) -> list[dict]:
        return [region.to_json() for region in self.regions]

    @classmethod
    def from_json(cls, values: Iterable[dict]) -> "Regions":
        return cls.of(region_from_json(value) for value in values)

    def fingerprint(self) -> str:
        """SHA-256 of the canonical form, independent of the order regions were declared in."""
        texts = sorted(_canonical(region) for region in self.regions)
        return hashlib.sha256("\n".join(texts).encode()).hexdigest()


def _canonical(region: Region) -> str:
    if isinstance(region, IdRegion):
        return "ids:" + hashlib.sha256(region.keys.astype("<i8").tobytes()).hexdigest()
    bbox = ",".join(repr(float(v)) for v in region.bbox) if region.bbox is not None else "earth"
    return f"levels:{region.first}-{region.last}:{bbox}"
