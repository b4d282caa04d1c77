"""Drawing the Push-T scene: 512 x 512 with pygame, then a bilinear resize.

The demo images were drawn by pygame through a pymunk debug-draw override and
resized with ``cv2.resize`` (bilinear). To reproduce them pixel for pixel this
module draws the same primitives in the same order:

1. white background; the goal T filled LightGreen;
2. the four walls as "fat segments" (see :func:`draw_fat_segment`), LightGray;
3. the block: each rectangle filled LightSlateGray x 1.2 (rounded), then its
   4 edges as LightSlateGray fat segments of radius 2;
4. the agent: a RoyalBlue disc of radius 15 and a RoyalBlue x 1.2 disc of
   radius 11 on top.

Vertices are rounded to integer pixels before drawing. Polygons are filled
with :func:`fill_polygon`, which uses the integer scanline rule of the pygame
release the data was made with (current pygame fills edges differently; the
difference alone costs ~0.3 % of the 96 x 96 pixels).

Steps 1-2 never change, so :class:`SceneRenderer` draws them once and copies
them for every frame.
"""
from __future__ import annotations

import os
from typing import Sequence

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # no banner on import

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pygame  # noqa: E402

from diffpolicy.envs.geometry import GOAL_POSE, TEE_POLYGONS, transform_points  # noqa: E402
from diffpolicy.envs.physics import AGENT_RADIUS, WALL_RADIUS, WALLS  # noqa: E402

WORLD_SIZE = 512

WHITE = (255, 255, 255)
GOAL_COLOR = (144, 238, 144)        # LightGreen
WALL_COLOR = (211, 211, 211)        # LightGray
BLOCK_COLOR = (119, 136, 153)       # LightSlateGray
AGENT_COLOR = (65, 105, 225)        # RoyalBlue
TARGET_COLOR = (255, 0, 0)          # the commanded-target cross of render()


def lighter(color: Sequence[int]) -> tuple[int, int, int]:
    """The fill shade of a shape: ``color * 1.2`` rounded, capped at 255."""
    return tuple(min(255, round(1.2 * c)) for c in color)


def to_pixel(p: Sequence[float]) -> tuple[int, int]:
    """World point to integer pixel (round half to even, as Python's round)."""
    return round(p[0]), round(p[1])


def fill_polygon(canvas: np.ndarray, points: Sequence[tuple[int, int]], color: Sequence[int]) -> None:
    """Fill a convex polygon with integer vertices on ``canvas`` ``(H, W, 3)`` (row = y), in place.

    Scanline rule of the data's pygame: for every row ``y`` from the top
    vertex to the bottom one, each non-horizontal edge ``(x1, y1) -> (x2, y2)``
    with ``y1 < y2`` crosses the row when ``y1 <= y < y2`` (or when ``y`` is the
    bottom row and the edge ends there) at
    ``x1 + trunc((y - y1) (x2 - x1) / (y2 - y1))``, and the row is filled
    between its crossings, ends included. For a convex polygon a row has two
    crossings (one span); every polygon Push-T draws is convex.
    """
    xs = [int(p[0]) for p in points]
    ys = [int(p[1]) for p in points]
    miny, maxy = min(ys), max(ys)
    height, width = canvas.shape[:2]
    if miny == maxy:
        lo, hi = np.array([min(xs)]), np.array([max(xs)])
    else:
        lo = np.full(maxy - miny + 1, np.iinfo(np.int64).max)
        hi = np.full(maxy - miny + 1, np.iinfo(np.int64).min)
        x_prev, y_prev = xs[-1], ys[-1]
        for x, y in zip(xs, ys):
            if y != y_prev:
                (xa, ya), (xb, yb) = ((x_prev, y_prev), (x, y)) if y_prev < y else ((x, y), (x_prev, y_prev))
                stop = yb + 1 if yb == maxy else yb
                num = np.arange(stop - ya, dtype=np.int64) * (xb - xa)
                cross = np.where(num < 0, -(-num // (yb - ya)), num // (yb - ya)) + xa  # C division
                rows = slice(ya - miny, stop - miny)
                lo[rows] = np.minimum(lo[rows], cross)
                hi[rows] = np.maximum(hi[rows], cross)
            x_prev, y_prev = x, y
    # Clip to the canvas.
    r0 = max(miny, 0)
    r1 = min(maxy, height - 1)
    if r1 < r0:
        return
    lo, hi = lo[r0 - miny:r1 - miny + 1], hi[r0 - miny:r1 - miny + 1]
    x0, x1 = max(int(lo.min()), 0), min(int(hi.max()), width - 1)
    if x1 < x0:
        return
    cols = np.arange(x0, x1 + 1)
    mask = (cols >= lo[:, None]) & (cols <= hi[:, None])
    canvas[r0:r1 + 1, x0:x1 + 1][mask] = color


def draw_fat_segment(surface: pygame.Surface, canvas: np.ndarray, a: Sequence[float],
                     b: Sequence[float], radius: float, color: Sequence[int]) -> None:
    """A segment of half-width ``radius`` the way the data's renderer drew it.

    A pygame line of width ``round(2 radius)``, a filled quadrilateral around
    the segment and a disc of ``radius`` at each end. The quadrilateral's
    offset is ``radius * (|dy|, |dx|) / |d|`` (absolute values: for edges with
    dx * dy > 0 it is not perpendicular; the data has this quirk).
    """
    p1, p2 = to_pixel(a), to_pixel(b)
    width = round(max(1.0, radius * 2))
    pygame.draw.line(surface, color, p1, p2, width)
    if width <= 2:
        return
    ox, oy = abs(p2[1] - p1[1]), abs(p2[0] - p1[0])
    if ox == 0 and oy == 0:
        return
    scale = radius / (ox * ox + oy * oy) ** 0.5
    ox, oy = round(ox * scale), round(oy * scale)
    quad = [(p1[0] - ox, p1[1] - oy), (p1[0] + ox, p1[1] + oy),
            (p2[0] + ox, p2[1] + oy), (p2[0] - ox, p2[1] - oy)]
    fill_polygon(canvas, quad, color)
    pygame.draw.circle(surface, color, p1, round(radius))
    pygame.draw.circle(surface, color, p2, round(radius))


def new_surface(size: int = WORLD_SIZE) -> pygame.Surface:
    """A 24-bit surface whose memory is RGB rows, so :func:`pixel_view` needs no copy."""
    return pygame.Surface((size, size), 0, 24, (0xFF, 0xFF00, 0xFF0000, 0))


def pixel_view(surface: pygame.Surface) -> np.ndarray:
    """Writable ``(H, W, 3)`` RGB view of a surface's pixels (row = y).

    The view locks the surface until it is deleted; blitting onto a locked
    surface fails, so keep views short-lived.
    """
    return pygame.surfarray.pixels3d(surface).transpose(1, 0, 2)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an ``(H, W, 3)`` uint8 image to ``(size, size, 3)``."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


class SceneRenderer:
    """Draws Push-T frames; keeps the static background (goal, walls) cached.

    >>> r = SceneRenderer()
    >>> img = r.render((100, 100), (256, 300, 0.5), size=96)   # (96, 96, 3) uint8
    """

    def __init__(self, goal_pose: Sequence[float] = GOAL_POSE) -> None:
        self.goal_pose = tuple(float(v) for v in goal_pose)
        self._background = new_surface()
        self._background.fill(WHITE)
        canvas = pixel_view(self._background)
        for poly in TEE_POLYGONS:
            pts = [to_pixel(p) for p in transform_points(poly, self.goal_pose)]
            fill_polygon(canvas, pts + [pts[0]], GOAL_COLOR)
        for a, b in WALLS:
            draw_fat_segment(self._background, canvas, a, b, WALL_RADIUS, WALL_COLOR)
        del canvas  # unlock the surface
        self.surface = self._background.copy()

    def draw(self, agent_pos: Sequence[float], block_pose: Sequence[float]) -> pygame.Surface:
        """Draw the scene on ``self.surface`` (512 x 512) and return it."""
        surface = self.surface
        surface.blit(self._background, (0, 0))
        canvas = pixel_view(surface)
        fill = lighter(BLOCK_COLOR)
        for poly in TEE_POLYGONS:
            world = transform_points(poly, block_pose)
            pts = [to_pixel(p) for p in world]
            fill_polygon(canvas, pts + [pts[0]], fill)
            for i in range(len(world)):
                draw_fat_segment(surface, canvas, world[i], world[(i + 1) % len(world)], 2.0, BLOCK_COLOR)
        del canvas
        center = to_pixel(agent_pos)
        pygame.draw.circle(surface, AGENT_COLOR, center, round(AGENT_RADIUS))
        pygame.draw.circle(surface, lighter(AGENT_COLOR), center, round(AGENT_RADIUS - 4))
        return surface

    def render(self, agent_pos: Sequence[float], block_pose: Sequence[float], size: int = 96) -> np.ndarray:
        """The scene as an ``(size, size, 3)`` uint8 RGB array."""
        view = pixel_view(self.draw(agent_pos, block_pose))
        image = resize(view, size)
        return image.copy() if image is view else image


def draw_target(image: np.ndarray, target: Sequence[float], color: Sequence[int] = TARGET_COLOR) -> np.ndarray:
    """Draw a cross at world position ``target`` on an ``(S, S, 3)`` image, in place."""
    size = image.shape[0]
    xy = (int(target[0] / WORLD_SIZE * size), int(target[1] / WORLD_SIZE * size))
    cv2.drawMarker(image, xy, color=tuple(int(c) for c in color), markerType=cv2.MARKER_CROSS,
                   markerSize=max(3, int(8 / 96 * size)), thickness=max(1, int(1 / 96 * size)))
    return image


def render_states(states: np.ndarray, size: int = 96, goal_pose: Sequence[float] = GOAL_POSE) -> np.ndarray:
    """Render states ``(N, 5)`` to images ``(N, size, size, 3)`` uint8."""
    states = np.asarray(states, dtype=np.float64).reshape(-1, 5)
    renderer = SceneRenderer(goal_pose)
    return np.stack([renderer.render(s[:2], s[2:5], size) for s in states]) if len(states) else \
        np.zeros((0, size, size, 3), np.uint8)
