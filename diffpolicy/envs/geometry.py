"""Geometry of the Push-T block: the T's polygons, its keypoints, and exact coverage.

Everything here is pure numpy/Python with no physics: a pose is
``(x, y, angle)`` where ``(x, y)`` is the block body's origin in world pixels
(y down) and a local point ``v`` lands at ``(x, y) + R(angle) v``.

The T is the union of two rectangles (the bar and the stem) that touch along
one edge and never overlap, so the area of the intersection of two T's is the
sum of the four pairwise intersections of convex rectangles; each of those is
computed exactly with a convex polygon clipper (Sutherland-Hodgman).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# --- The T block, in its own frame -------------------------------------------------
BAR = ((-60.0, 30.0), (60.0, 30.0), (60.0, 0.0), (-60.0, 0.0))
STEM = ((-15.0, 30.0), (-15.0, 120.0), (15.0, 120.0), (15.0, 30.0))
TEE_POLYGONS = (BAR, STEM)
TEE_AREA = 6300.0
# Unweighted mean of the two rectangles' centroids (0, 15) and (0, 75).
TEE_CENTER_OF_GRAVITY = (0.0, 45.0)
# Radius of a disc about the body origin that holds the whole T (farthest
# corner is (+-15, 120)); used to skip clipping when two T's cannot touch.
TEE_RADIUS = math.hypot(15.0, 120.0)

GOAL_POSE = (256.0, 256.0, math.pi / 4)

# The 9 keypoints of the dataset's ``keypoint`` array, in the block frame.
LOCAL_KEYPOINTS = np.array([
    [9.2698, 90.0410],
    [-60.9835, -1.1867],
    [60.9128, -1.3934],
    [-0.2705, 25.5436],
    [-14.0649, 122.8159],
    [39.0027, 32.8574],
    [-39.9664, 32.7297],
    [-16.8243, 62.8632],
    [23.5415, -1.7003],
], dtype=np.float64)

Point = tuple[float, float]


def transform_points(points: Sequence[Point], pose: Sequence[float]) -> list[Point]:
    """Map local points ``(P, 2)`` to world with ``pose = (x, y, angle)``."""
    x, y, a = float(pose[0]), float(pose[1]), float(pose[2])
    c, s = math.cos(a), math.sin(a)
    return [(x + c * px - s * py, y + s * px + c * py) for px, py in points]


def tee_world_polygons(pose: Sequence[float]) -> list[list[Point]]:
    """The bar and stem of a T at ``pose`` as two lists of 4 world vertices."""
    return [transform_points(poly, pose) for poly in TEE_POLYGONS]


def polygon_area(poly: Sequence[Point]) -> float:
    """Absolute area of a simple polygon (shoelace formula)."""
    n = len(poly)
    if n < 3:
        return 0.0
    acc = 0.0
    x0, y0 = poly[-1]
    for x1, y1 in poly:
        acc += x0 * y1 - x1 * y0
        x0, y0 = x1, y1
    return abs(acc) * 0.5


def _orientation(poly: Sequence[Point]) -> float:
    """+1 for counter-clockwise (in x-right, y-up terms), -1 for clockwise."""
    acc = 0.0
    x0, y0 = poly[-1]
    for x1, y1 in poly:
        acc += x0 * y1 - x1 * y0
        x0, y0 = x1, y1
    return 1.0 if acc >= 0.0 else -1.0


def clip_convex(subject: Sequence[Point], clip: Sequence[Point]) -> list[Point]:
    """Intersection of two convex polygons (Sutherland-Hodgman).

    Either winding is accepted. Returns the vertices of the intersection
    (possibly empty). Exact up to floating-point rounding.
    """
    sign = _orientation(clip)
    out = list(subject)
    cx0, cy0 = clip[-1]
    for cx1, cy1 in clip:
        if not out:
            break
        ex, ey = cx1 - cx0, cy1 - cy0
        inp, out = out, []
        sx, sy = inp[-1]
        s_side = sign * (ex * (sy - cy0) - ey * (sx - cx0))
        for px, py in inp:
            p_side = sign * (ex * (py - cy0) - ey * (px - cx0))
            if p_side >= 0.0:
                if s_side < 0.0:
                    t = s_side / (s_side - p_side)
                    out.append((sx + t * (px - sx), sy + t * (py - sy)))
                out.append((px, py))
            elif s_side >= 0.0:
                t = s_side / (s_side - p_side)
                out.append((sx + t * (px - sx), sy + t * (py - sy)))
            sx, sy, s_side = px, py, p_side
        cx0, cy0 = cx1, cy1
    return out


def tee_intersection_area(pose_a: Sequence[float], pose_b: Sequence[float]) -> float:
    """Area of (T at ``pose_a``) intersect (T at ``pose_b``), in px^2."""
    dx, dy = float(pose_a[0]) - float(pose_b[0]), float(pose_a[1]) - float(pose_b[1])
    if dx * dx + dy * dy > (2.0 * TEE_RADIUS) ** 2:
        return 0.0
    area = 0.0
    for pa in tee_world_polygons(pose_a):
        for pb in tee_world_polygons(pose_b):
            area += polygon_area(clip_convex(pa, pb))
    return area


def coverage(block_pose: Sequence[float], goal_pose: Sequence[float] = GOAL_POSE) -> float:
    """Fraction of the goal T covered by the block T, in [0, 1]."""
    return tee_intersection_area(block_pose, goal_pose) / TEE_AREA


def keypoints_from_state(state: np.ndarray) -> np.ndarray:
    """World keypoints of the block.

    state: ``(..., 5)`` rows ``[agent x, agent y, block x, block y, angle]``
    (the agent part is ignored; a ``(..., 3)`` block pose works too).
    Returns ``(..., 9, 2)`` float64.
    """
    state = np.asarray(state, dtype=np.float64)
    if state.shape[-1] not in (3, 5):
        raise ValueError(f"keypoints_from_state: expected last dim 5 (state) or 3 "
                         f"(block pose), found shape {state.shape}")
    pose = state[..., -3:]
    c, s = np.cos(pose[..., 2]), np.sin(pose[..., 2])
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (..., 2, 2)
    return np.einsum("...ij,kj->...ki", rot, LOCAL_KEYPOINTS) + pose[..., None, :2]
