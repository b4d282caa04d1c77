"""Exact T-T coverage, convex clipping and keypoints."""
from __future__ import annotations

import math

import numpy as np
import pytest

from diffpolicy.envs.geometry import (GOAL_POSE, LOCAL_KEYPOINTS, TEE_AREA, TEE_POLYGONS, clip_convex,
                                      coverage, keypoints_from_state, polygon_area,
                                      tee_intersection_area, tee_world_polygons)


def _inside_tee(points: np.ndarray, pose) -> np.ndarray:
    """Which world points (P, 2) lie in the T at ``pose`` (closed rectangles)."""
    x, y, a = pose
    c, s = math.cos(a), math.sin(a)
    d = points - np.array([x, y])
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], 1)
    lx, ly = local[:, 0], local[:, 1]
    bar = (np.abs(lx) <= 60) & (ly >= 0) & (ly <= 30)
    stem = (np.abs(lx) <= 15) & (ly >= 30) & (ly <= 120)
    return bar | stem


def _sampled_coverage(block_pose, goal_pose=GOAL_POSE, h: float = 0.2) -> float:
    """Dense midpoint-grid estimate: goal T cut into h x h cells, centres tested in the block T."""
    cells = []
    for (x0, y0), (x1, y1) in (((-60, 0), (60, 30)), ((-15, 30), (15, 120))):
        xs = np.arange(x0 + h / 2, x1, h)
        ys = np.arange(y0 + h / 2, y1, h)
        gx, gy = np.meshgrid(xs, ys)
        cells.append(np.stack([gx.ravel(), gy.ravel()], 1))
    local = np.concatenate(cells)
    x, y, a = goal_pose
    c, s = math.cos(a), math.sin(a)
    world = np.stack([x + c * local[:, 0] - s * local[:, 1], y + s * local[:, 0] + c * local[:, 1]], 1)
    return float(_inside_tee(world, block_pose).mean())


def test_goal_pose_covers_itself_fully_and_far_pose_not_at_all():
    assert coverage(GOAL_POSE) == pytest.approx(1.0, abs=1e-12)
    assert coverage((256.0, 256.0, math.pi / 4 + 2 * math.pi)) == pytest.approx(1.0, abs=1e-9)
    assert coverage((60.0, 450.0, 0.3)) == 0.0
    # Touching the far corner region but not overlapping: still zero.
    assert coverage((256.0 + 400.0, 256.0, 0.0)) == 0.0


def test_tee_area_and_polygons():
    assert sum(polygon_area(p) for p in TEE_POLYGONS) == TEE_AREA
    world = tee_world_polygons((100.0, 200.0, 1.1))
    assert sum(polygon_area(p) for p in world) == pytest.approx(TEE_AREA, rel=1e-12)


def test_clip_convex_known_cases():
    a = [(0.0, 0.0), (2.0, 0.0), (2.0, 2.0), (0.0, 2.0)]
    b = [(1.0, 1.0), (3.0, 1.0), (3.0, 3.0), (1.0, 3.0)]
    assert polygon_area(clip_convex(a, b)) == pytest.approx(1.0)
    # Winding of either polygon does not matter.
    assert polygon_area(clip_convex(a[::-1], b)) == pytest.approx(1.0)
    assert polygon_area(clip_convex(a, b[::-1])) == pytest.approx(1.0)
    # Disjoint and contained.
    far = [(5.0, 5.0), (6.0, 5.0), (6.0, 6.0)]
    assert clip_convex(a, far) == []
    inner = [(0.5, 0.5), (1.0, 0.5), (1.0, 1.0)]
    assert polygon_area(clip_convex(inner, a)) == pytest.approx(0.125)
    # A diamond in a square: the square's corners cut off.
    diamond = [(1.0, -0.5), (2.5, 1.0), (1.0, 2.5), (-0.5, 1.0)]
    assert polygon_area(clip_convex(diamond, a)) == pytest.approx(4.5 - 4 * 0.25)


def test_coverage_matches_dense_sampling_on_random_poses():
    rng = np.random.default_rng(0)
    seen_partial = 0
    for _ in range(12):
        pose = (256 + rng.uniform(-60, 60), 256 + rng.uniform(-60, 60), rng.uniform(-np.pi, np.pi))
        exact = coverage(pose)
        assert abs(exact - _sampled_coverage(pose)) < 1e-3, pose
        assert tee_intersection_area(pose, GOAL_POSE) == pytest.approx(tee_intersection_area(GOAL_POSE, pose))
        seen_partial += 0.05 < exact < 0.95
    assert seen_partial >= 6  # the poses really exercise partial overlaps


def test_keypoints_from_state_shapes_and_values():
    state = np.array([[10.0, 20.0, 200.0, 300.0, 0.0], [0.0, 0.0, 100.0, 50.0, np.pi / 2]])
    kp = keypoints_from_state(state)
    assert kp.shape == (2, 9, 2)
    np.testing.assert_allclose(kp[0], LOCAL_KEYPOINTS + [200.0, 300.0])
    # 90 degrees (y down): local (x, y) -> (-y, x)
    np.testing.assert_allclose(kp[1], np.stack([-LOCAL_KEYPOINTS[:, 1], LOCAL_KEYPOINTS[:, 0]], 1) + [100.0, 50.0],
                               atol=1e-9)
    assert keypoints_from_state(state[0]).shape == (9, 2)
    np.testing.assert_allclose(keypoints_from_state(state[:, 2:]), kp)  # (N, 3) block poses
    assert keypoints_from_state(np.zeros((4, 7, 5))).shape == (4, 7, 9, 2)


def test_keypoints_from_state_rejects_wrong_width():
    with pytest.raises(ValueError, match=r"expected last dim 5 \(state\) or 3"):
        keypoints_from_state(np.zeros((3, 4)))
