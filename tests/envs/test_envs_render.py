"""The rasteriser rule, the scene drawing, and the match with the demo images."""
from __future__ import annotations

import numpy as np
import pytest

from diffpolicy.envs.render import (AGENT_COLOR, BLOCK_COLOR, GOAL_COLOR, SceneRenderer, draw_target,
                                    fill_polygon, lighter, render_states)


def _reference_fill(points, height, width) -> np.ndarray:
    """Straight transcription of the documented scanline rule, one row at a time."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    n = len(points)
    out = np.zeros((height, width), bool)
    miny, maxy = min(ys), max(ys)
    for y in range(miny, maxy + 1):
        cross = []
        for i in range(n):
            (x1, y1), (x2, y2) = points[i - 1], points[i]
            if y1 == y2:
                continue
            if y1 > y2:
                x1, y1, x2, y2 = x2, y2, x1, y1
            if y1 <= y < y2 or (y == maxy and y2 == maxy):
                num = (y - y1) * (x2 - x1)
                q = abs(num) // (y2 - y1)
                cross.append(x1 + (q if num >= 0 else -q))
        if cross and 0 <= y < height:
            lo, hi = max(min(cross), 0), min(max(cross), width - 1)
            if lo <= hi:
                out[y, lo:hi + 1] = True
    if miny == maxy and 0 <= miny < height:
        out[miny, max(min(xs), 0):min(max(xs), width - 1) + 1] = True
    return out


def _random_convex_quad(rng, size):
    c = rng.uniform(0, size, 2)
    r = rng.uniform(3, size / 2)
    ang = np.sort(rng.uniform(0, 2 * np.pi, 4))
    return [(int(round(c[0] + r * np.cos(a))), int(round(c[1] + r * np.sin(a)))) for a in ang]


def test_fill_polygon_follows_the_scanline_rule():
    rng = np.random.default_rng(0)
    for _ in range(200):
        quad = _random_convex_quad(rng, 64)
        canvas = np.zeros((64, 64, 3), np.uint8)
        fill_polygon(canvas, quad + [quad[0]], (255, 1, 2))
        np.testing.assert_array_equal(canvas[..., 0] == 255, _reference_fill(quad, 64, 64), err_msg=str(quad))
    # Clipped at the canvas border, degenerate one-row polygon.
    canvas = np.zeros((10, 10, 3), np.uint8)
    fill_polygon(canvas, [(-5, -5), (20, 3), (4, 20)], (9, 9, 9))
    assert canvas[..., 0].any() and canvas[0, 0, 0] == 9
    canvas = np.zeros((10, 10, 3), np.uint8)
    fill_polygon(canvas, [(2, 4), (7, 4)], (9, 9, 9))
    assert canvas[..., 0].sum() == 9 * 6 and canvas[4, 2:8, 0].all()


def test_scene_colors_and_layout():
    r = SceneRenderer()
    img = r.render((100.0, 100.0), (400.0, 400.0, 0.0), size=512)
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    assert tuple(img[256, 256]) == GOAL_COLOR            # goal centre region
    assert tuple(img[100, 100]) == lighter(AGENT_COLOR)  # inner disc
    assert tuple(img[100, 100 + 13]) == AGENT_COLOR      # outer ring
    assert tuple(img[400 + 15, 400]) == lighter(BLOCK_COLOR)  # inside the bar
    assert tuple(img[400 - 1, 400]) == BLOCK_COLOR       # the bar's outline
    assert tuple(img[50, 300]) == (255, 255, 255)
    small = r.render((100.0, 100.0), (400.0, 400.0, 0.0), size=96)
    assert small.shape == (96, 96, 3)


def test_draw_target_marks_only_near_target():
    img = np.full((96, 96, 3), 255, np.uint8)
    draw_target(img, (256.0, 256.0))
    changed = np.argwhere((img != 255).any(-1))
    assert len(changed) > 0
    assert np.abs(changed - 48).max() <= 5


def test_rendered_demo_states_match_demo_images(demos):
    """Issue check 4: render the dataset's states at 96 x 96 and compare with ``img``."""
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(demos.state), 150, replace=False))
    ours = render_states(demos.state[idx].astype(np.float64), size=96).astype(np.float32)
    theirs = demos.images(idx)
    equal = (ours == theirs).all(-1).mean()
    mad = np.abs(ours - theirs).mean()
    assert equal >= 0.998, equal     # measured 0.9999
    # 0..255 scale: the issue asks for < 1 (i.e. < 1/255 on a 0..1 scale); measured ~0.002.
    assert mad < 0.05, mad
