"""Geometry on the unit sphere: lat/lon <-> xyz, haversine distance, and SPEC §3's point-in-triangle test.

Vectors are 3-tuples of float64. Each formula is written in one fixed order of operations (and
`stepbatch_kernels.jit` keeps fastmath off) because validators must agree bit for bit on a point that sits on a
triangle edge or a speed exactly at the limit.
"""

from __future__ import annotations

import math

import numba

from stepbatch.protocol import EARTH_RADIUS_M
from stepbatch_kernels.jit import kernel, parallel_kernel

# SPEC §3: a point within this distance (unit-sphere units, ~6.4 µm on Earth) of an edge's great circle
# counts as on the edge.
EDGE_TOLERANCE = 1e-12

# Bounds of the band around the tolerance inside which `inside_edge` falls back to the exact formula.
_CLEARLY_NEAR_SQ = (EDGE_TOLERANCE * 0.95) ** 2
_CLEARLY_FAR_SQ = (EDGE_TOLERANCE * 1.05) ** 2


@kernel
def latlon_to_xyz(lat_deg, lon_deg):
    """Unit vector of (lat, lon) in degrees: (cos lat cos lon, cos lat sin lon, sin lat)."""
    lat_rad = lat_deg * math.pi / 180.0
    lon_rad = lon_deg * math.pi / 180.0
    cos_lat = math.cos(lat_rad)
    return (cos_lat * math.cos(lon_rad), cos_lat * math.sin(lon_rad), math.sin(lat_rad))


@kernel
def xyz_to_latlon(v):
    """(lat_deg, lon_deg) of a unit vector: lat = asin(z), lon = atan2(y, x)."""
    # Rounding can leave |z| a hair above 1 for a vector normalised elsewhere; asin would give NaN.
    z = min(1.0, max(-1.0, v[2]))
    return (math.asin(z) * 180.0 / math.pi, math.atan2(v[1], v[0]) * 180.0 / math.pi)


@kernel
def latlon_is_valid(lat_deg, lon_deg):
    """SPEC §2's location rule: lat in [-90, 90], lon in [-180, 180] (NaN fails both)."""
    return -90.0 <= lat_deg <= 90.0 and -180.0 <= lon_deg <= 180.0


@kernel
def haversine_m(lat1_deg, lon1_deg, lat2_deg, lon2_deg):
    """Great-circle distance in metres on a sphere of radius 6371000 m (SPEC §4).

    a = sin²(Δφ/2) + cos φ1 · cos φ2 · sin²(Δλ/2), d = R · 2 · atan2(√a, √(1−a)), evaluated in the
    order written (the widespread JavaScript formulation). `a` is capped at 1 so that rounding at
    antipodal points gives π·R instead of NaN.
    """
    phi1_rad = lat1_deg * math.pi / 180.0
    phi2_rad = lat2_deg * math.pi / 180.0
    dphi_rad = (lat2_deg - lat1_deg) * math.pi / 180.0
    dlambda_rad = (lon2_deg - lon1_deg) * math.pi / 180.0
    sin_half_dphi = math.sin(dphi_rad / 2.0)
    sin_half_dlambda = math.sin(dlambda_rad / 2.0)
    a = (sin_half_dphi * sin_half_dphi
         + math.cos(phi1_rad) * math.cos(phi2_rad) * sin_half_dlambda * sin_half_dlambda)
    if a > 1.0:
        a = 1.0
    return EARTH_RADIUS_M * (2.0 * math.atan2(math.sqrt(a), math.sqrt(1.0 - a)))


@parallel_kernel
def haversine_many_m(lat1_deg, lon1_deg, lat2_deg, lon2_deg, out_m):
    for i in numba.prange(out_m.shape[0]):
        out_m[i] = haversine_m(lat1_deg[i], lon1_deg[i], lat2_deg[i], lon2_deg[i])


@kernel
def cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


@kernel
def dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


@kernel
def normalize(v):
    """v / |v|, dividing each component (not multiplying by 1/|v|: that differs in the last bit from
    the original implementation's vertices)."""
    length = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    return (v[0] / length, v[1] / length, v[2] / length)


@kernel
def midpoint(a, b):
    """normalize((a + b) / 2), SPEC §3's m_ab."""
    return normalize(((a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0, (a[2] + b[2]) / 2.0))


@kernel
def edge_s(a, b, x):
    """SPEC §3's s(x) = dot(cross(a, b) / |cross(a, b)|, x)."""
    return dot(normalize(cross(a, b)), x)


@kernel
def passes_edge(s_p, s_c):
    """SPEC §3's rule for one edge, given s of the point and of the opposite vertex:
    s(p)·s(c) ≥ 0 or |s(p)| ≤ 1e-12. NaN fails."""
    return s_p * s_c >= 0.0 or abs(s_p) <= EDGE_TOLERANCE


@kernel
def inside_edge_exact(a, b, c, p):
    """SPEC §3 verbatim for edge (a, b) with opposite vertex c."""
    n = normalize(cross(a, b))
    return passes_edge(dot(n, p), dot(n, c))


@kernel
def inside_edge(a, b, c, p):
    """The same verdict as `inside_edge_exact`, without a square root or division when p is clearly
    on one side of the tolerance band (which is nearly always).

    With n = cross(a, b) as computed and l = |n|, SPEC's s(x) = dot(n / l, x) and t_x / l, where
    t_x = dot(n, x), differ by under 2e-15 for a unit x: both start from the same rounded n, so only
    the last few roundings differ. Hence |t_x| / l > 1.05e-12 means |s(x)| > 1e-12 with t_x's sign,
    and |t_x| / l < 0.95e-12 means |s(x)| ≤ 1e-12. Anything between (and NaN) takes the exact path.
    """
    n = cross(a, b)
    length_sq = dot(n, n)
    t_p = dot(n, p)
    t_c = dot(n, c)
    far_sq = _CLEARLY_FAR_SQ * length_sq
    if t_c * t_c > far_sq:
        t_p_sq = t_p * t_p
        if t_p_sq > far_sq:
            return (t_p > 0.0) == (t_c > 0.0)
        if t_p_sq < _CLEARLY_NEAR_SQ * length_sq:
            return True
    return inside_edge_exact(a, b, c, p)


@kernel
def in_triangle(v0, v1, v2, p):
    """SPEC §3 point-in-triangle: p passes the edge test for all three edges."""
    return inside_edge(v0, v1, v2, p) and inside_edge(v1, v2, v0, p) and inside_edge(v2, v0, v1, p)


@kernel
def oriented_s(a, b, c, p):
    """s(p) for edge (a, b), sign-flipped so that the opposite vertex c has s(c) ≥ 0."""
    n = normalize(cross(a, b))
    s_p = dot(n, p)
    return s_p if dot(n, c) >= 0.0 else -s_p


@kernel
def min_oriented_s(v0, v1, v2, p):
    """Smallest oriented s of p over the triangle's edges: how far inside p is (negative: outside)."""
    return min(oriented_s(v0, v1, v2, p), oriented_s(v1, v2, v0, p), oriented_s(v2, v0, v1, p))


# ------------------------------------------------------------------------ caps against boxes

BOX_MISS, BOX_MEETS, BOX_INSIDE = 0, 1, 2

# Callers add this to a cap radius so that rounding in the cap and box arithmetic cannot exclude a
# shape that reaches into the box (1e-9 rad is ~6 mm on Earth).
CAP_MARGIN_RAD = 1e-9


@kernel
def cap_box_relation(lat_deg, lon_deg, radius_rad, west_deg, south_deg, east_deg, north_deg):
    """How a spherical cap (centre in degrees, angular radius < 90°) lies against a lat/lon box:
    BOX_MISS (disjoint), BOX_INSIDE (wholly inside) or BOX_MEETS (neither is certain).

    The box spans east from west_deg to east_deg, across the antimeridian when east_deg < west_deg.
    The cap is replaced by its own lat/lon bounding box (lat ± r; lon ± asin(sin r / cos lat), all
    longitudes once it reaches a pole), so MISS and INSIDE are exact and MEETS is conservative.
    """
    radius_deg = radius_rad * 180.0 / math.pi
    lat_lo, lat_hi = lat_deg - radius_deg, lat_deg + radius_deg
    if lat_hi < south_deg or lat_lo > north_deg:
        return BOX_MISS
    lat_inside = lat_lo >= south_deg and lat_hi <= north_deg
    box_width_deg = east_deg - west_deg if east_deg >= west_deg else east_deg - west_deg + 360.0
    if box_width_deg >= 360.0:
        return BOX_INSIDE if lat_inside else BOX_MEETS
    if lat_hi >= 90.0 or lat_lo <= -90.0:
        return BOX_MEETS
    sin_ratio = math.sin(radius_rad) / math.cos(lat_deg * math.pi / 180.0)
    if sin_ratio >= 1.0:
        return BOX_MEETS
    half_width_deg = math.asin(sin_ratio) * 180.0 / math.pi
    offset_deg = (lon_deg - half_width_deg) - west_deg
    while offset_deg < 0.0:
        offset_deg += 360.0
    while offset_deg >= 360.0:
        offset_deg -= 360.0
    cap_width_deg = 2.0 * half_width_deg
    if offset_deg > box_width_deg and offset_deg + cap_width_deg < 360.0:
        return BOX_MISS
    if lat_inside and offset_deg + cap_width_deg <= box_width_deg:
        return BOX_INSIDE
    return BOX_MEETS
