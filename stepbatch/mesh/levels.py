"""Enumerating a level of the mesh, whole or within a bounding box, without materialising it."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from stepbatch.mesh.ids import check_level
from stepbatch.mesh.keys import child_keys
from stepbatch_kernels import bbox as kbbox
from stepbatch_kernels import geo as kgeo
from stepbatch_kernels import mesh as kmesh
from stepbatch_kernels.jit import launch


def check_bbox(bbox) -> tuple[float, float, float, float]:
    """(W, S, E, N) as floats; ValueError unless W, E ∈ [-180, 180] and -90 ≤ S ≤ N ≤ 90."""
    try:
        west, south, east, north = (float(v) for v in bbox)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bbox must be four numbers W,S,E,N in degrees, got {bbox!r}") from err
    if not (-180.0 <= west <= 180.0 and -180.0 <= east <= 180.0 and -90.0 <= south <= north <= 90.0):
        raise ValueError(f"bbox needs W and E in [-180, 180] and -90 <= S <= N <= 90, got {bbox!r}")
    return west, south, east, north


class TooManyEdgeTriangles(ValueError):
    """A box whose edges cross more triangles of the level than the caller would examine."""


def _level_ranges(level: int, bbox, max_edge_keys: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(start, count) runs of level-order indices (face-major, then path in base 4) to enumerate.

    Without a bbox: the whole level. With one: descend from the 20 faces, dropping triangles whose
    bounding cap misses the box, taking the whole subtree of one whose cap lies inside it, and
    splitting the rest; the runs come back sorted by start. The triangles split at one depth grow
    with the box's perimeter over the level's side; past `max_edge_keys` of them the descent stops
    with TooManyEdgeTriangles (a thin box around the globe at level 21 crosses ~10^8).
    """
    if bbox is None:
        return np.zeros(1, np.int64), np.full(1, kmesh.FACE_COUNT * 4 ** (level - 1), np.int64)
    west, south, east, north = check_bbox(bbox)
    keys = np.array([kmesh.make_key(face, 1) for face in range(kmesh.FACE_COUNT)], np.int64)
    starts, counts = [], []
    for depth in range(1, level + 1):
        relation = np.empty(len(keys), np.int8)
        launch(kbbox.cap_bbox_relations, len(keys), keys, west, south, east, north, relation)
        whole = relation == kgeo.BOX_INSIDE if depth < level else relation != kgeo.BOX_MISS
        starts.append(_level_index(keys[whole], depth) * 4 ** (level - depth))
        counts.append(np.full(int(whole.sum()), 4 ** (level - depth), np.int64))
        keys = child_keys(keys[relation == kgeo.BOX_MEETS]).reshape(-1) if depth < level else keys[:0]
        if max_edge_keys is not None and len(keys) > max_edge_keys:
            raise TooManyEdgeTriangles(f"more than {max_edge_keys:,} level-{depth + 1} triangles cross the "
                                       f"box's edges")
    starts, counts = np.concatenate(starts), np.concatenate(counts)
    order = np.argsort(starts, kind="stable")
    return starts[order], counts[order]


def _level_index(keys: np.ndarray, level: int) -> np.ndarray:
    out = np.empty(len(keys), np.int64)
    launch(kmesh.level_index_of_keys, len(keys), keys, level, out)
    return out


def _keys_at(index: np.ndarray, level: int) -> np.ndarray:
    out = np.empty(len(index), np.int64)
    launch(kmesh.keys_at_level_index, len(index), index, level, out)
    return out


def count_level(level: int, bbox: Sequence[float] | None = None, max_edge_keys: int | None = None) -> int:
    """How many triangles iter_level_keys(level, bbox) yields (without enumerating them)."""
    return int(_level_ranges(check_level(level), bbox, max_edge_keys)[1].sum())


def iter_level_keys(level: int, bbox: Sequence[float] | None = None,
                    chunk: int = 100_000, max_edge_keys: int | None = None) -> Iterator[np.ndarray]:
    """Every level-`level` key, ascending, in int64 arrays of at most `chunk`.

    With bbox (W, S, E, N in degrees; W > E crosses the antimeridian) only triangles near the box:
    every triangle that meets it is listed, plus possibly some within a cap radius of its edges,
    because the test compares each triangle's bounding cap (centred on its centroid, through its
    farthest vertex) with the box. Memory grows with the number of such edge triangles, not with
    the count enumerated, and is bounded by `max_edge_keys` (see `_level_ranges`).
    """
    level = check_level(level)
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk!r}")
    starts, counts = _level_ranges(level, bbox, max_edge_keys)
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    for first in range(0, total, chunk):
        position = np.arange(first, min(first + chunk, total), dtype=np.int64)
        run = np.searchsorted(ends, position, side="right")
        yield _keys_at(starts[run] + position - (ends[run] - counts[run]), level)
