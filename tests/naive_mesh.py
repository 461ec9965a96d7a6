"""Slow, obvious STEP-TRI-v1 reference (SPEC §3) in plain Python, one triangle or point at a time.

It shares no code with `kernels/` or `stepbatch.mesh`: the icosahedron is copied from SPEC's text and
each rule is written the way SPEC states it. The kernels must agree with it exactly (vertices bit for
bit; every containment and lookup verdict).
"""

from __future__ import annotations

import hashlib
import math
import re

PHI = (1 + math.sqrt(5)) / 2
ICOSAHEDRON = [(-1, PHI, 0), (1, PHI, 0), (-1, -PHI, 0), (1, -PHI, 0), (0, -1, PHI), (0, 1, PHI),
               (0, -1, -PHI), (0, 1, -PHI), (PHI, 0, -1), (PHI, 0, 1), (-PHI, 0, -1), (-PHI, 0, 1)]
FACES = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
         (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5),
         (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
TOLERANCE = 1e-12
BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def normalize(v):
    length = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    return (v[0] / length, v[1] / length, v[2] / length)


def cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def midpoint(a, b):
    return normalize(((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, (a[2] + b[2]) / 2))


def children(v0, v1, v2):
    m01, m12, m20 = midpoint(v0, v1), midpoint(v1, v2), midpoint(v2, v0)
    return [(v0, m01, m20), (m01, v1, m12), (m20, m12, v2), (m01, m12, m20)]


def face_vertices(face):
    return tuple(normalize(ICOSAHEDRON[i]) for i in FACES[face])


def vertices(face, path):
    triangle = face_vertices(face)
    for digit in path:
        triangle = children(*triangle)[digit]
    return triangle


def s(a, b, x):
    return dot(normalize(cross(a, b)), x)


def contains_xyz(triangle, p):
    v0, v1, v2 = triangle
    for a, b, c in ((v0, v1, v2), (v1, v2, v0), (v2, v0, v1)):
        s_p = s(a, b, p)
        if not (s_p * s(a, b, c) >= 0 or abs(s_p) <= TOLERANCE):
            return False
    return True


def smallest_oriented_s(triangle, p):
    v0, v1, v2 = triangle
    return min(s(a, b, p) if s(a, b, c) >= 0 else -s(a, b, p)
               for a, b, c in ((v0, v1, v2), (v1, v2, v0), (v2, v0, v1)))


def first_containing(candidates, p):
    """Index of the first candidate containing p, else of the one whose smallest s is largest."""
    for i, triangle in enumerate(candidates):
        if contains_xyz(triangle, p):
            return i
    scores = [smallest_oriented_s(triangle, p) for triangle in candidates]
    return scores.index(max(scores))


def latlon_to_xyz(lat, lon):
    lat_rad, lon_rad = lat * math.pi / 180, lon * math.pi / 180
    return (math.cos(lat_rad) * math.cos(lon_rad), math.cos(lat_rad) * math.sin(lon_rad), math.sin(lat_rad))


def triangle_at_xyz(p, level):
    """(face, path) of SPEC §3's descent."""
    face = first_containing([face_vertices(f) for f in range(20)], p)
    triangle, path = face_vertices(face), []
    for _ in range(level - 1):
        digit = first_containing(children(*triangle), p)
        triangle = children(*triangle)[digit]
        path.append(digit)
    return face, tuple(path)


def pack(face, level, path):
    key = (face << 45) | (level << 40)
    for i, digit in enumerate(path):
        key |= digit << (38 - 2 * i)
    return key


def unpack(key):
    level = (key >> 40) & 31
    return (key >> 45) & 31, level, tuple((key >> (38 - 2 * i)) & 3 for i in range(level - 1))


def key_is_valid(key):
    if not 0 <= key < 1 << 50 or (key >> 45) & 31 >= 20 or not 1 <= (key >> 40) & 31 <= 21:
        return False
    return pack(*unpack(key)) == key


def checksum(core):
    h = hashlib.sha256(core.encode()).digest()
    value = (h[0] << 7) | (h[1] >> 1)
    return BASE32[value >> 10] + BASE32[(value >> 5) & 31] + BASE32[value & 31]


def encode_id(face, level, path):
    core = f"{chr(65 + face)}{level}-{''.join(map(str, path)).ljust(20, '0')}"
    return f"STEP-TRI-v1:{core}-{checksum(core)}"


_ID = re.compile(r"STEP-TRI-v1:([A-T])([1-9][0-9]?)-([0-3]{20})-([A-Z2-7]{3})")


def decode_id(triangle_id):
    """(face, level, path), or ValueError: the id must be exactly encode_id of what it spells."""
    match = _ID.fullmatch(triangle_id) if isinstance(triangle_id, str) else None
    if match is None or not 1 <= int(match[2]) <= 21:
        raise ValueError("malformed STEP-TRI-v1 id")
    face, level = ord(match[1]) - 65, int(match[2])
    path = tuple(int(d) for d in match[3][:level - 1])
    if encode_id(face, level, path) != triangle_id:
        raise ValueError("non-canonical padding or wrong checksum")
    return face, level, path


def haversine_m(lat1, lon1, lat2, lon2):
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin(math.radians(lat2 - lat1) / 2) ** 2
         + math.cos(phi1) * math.cos(phi2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 6371000 * 2 * math.asin(math.sqrt(min(a, 1.0)))
