"""Push-T physics on pymunk 7: a round kinematic agent, a T block, four walls.

The numbers and the order of operations follow ``shared/spec/pusht.md``; they
are what make the recorded human demos replay exactly:

* space: no gravity, damping 0 (the block keeps no velocity between
  substeps), 10 solver iterations, every contact frictionless and inelastic;
* agent: kinematic circle of radius 15 driven by a PD law on its velocity;
* block: mass 1, moment ``2 * moment_for_poly(1, bar)`` (= 3000), center of
  gravity (0, 45), the mean of the two rectangles' centroids;
* a state is set agent first, then block position, then block angle (the
  angle turns the body about its center of gravity), then one substep.

A fresh ``pymunk.Space`` is built for every ``set_state`` so that nothing
(contact caches, spatial index order) leaks from one episode into the next.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pymunk

from diffpolicy.envs.geometry import BAR, STEM

SIM_HZ = 100
CONTROL_HZ = 10
SUBSTEPS = SIM_HZ // CONTROL_HZ
DT = 1.0 / SIM_HZ
K_P = 100.0
K_V = 20.0

AGENT_RADIUS = 15.0
WALL_RADIUS = 2.0
WALLS = (((5, 506), (5, 5)), ((5, 5), (506, 5)), ((506, 5), (506, 506)), ((5, 506), (506, 506)))
BLOCK_MASS = 1.0


class PushTPhysics:
    """The simulated world. Positions are pixels, y down; angles in radians.

    >>> sim = PushTPhysics(); sim.set_state([222, 97, 217, 292, 3.008])
    >>> n = sim.step((233.0, 71.0))   # target position; returns the contact count
    """

    def __init__(self) -> None:
        self._contact_points = 0
        self.set_state((256.0, 400.0, 256.0, 300.0, 0.0))

    # -- building -----------------------------------------------------------------
    def _build(self) -> None:
        space = pymunk.Space()
        space.gravity = (0.0, 0.0)
        space.damping = 0.0
        space.iterations = 10
        space.on_collision(0, 0, post_solve=self._count_contacts)

        walls = [pymunk.Segment(space.static_body, a, b, WALL_RADIUS) for a, b in WALLS]
        space.add(*walls)

        agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        agent.position = (256.0, 400.0)
        space.add(agent, pymunk.Circle(agent, AGENT_RADIUS))

        # The original sums the bar's moment twice: the data depend on it.
        moment = 2.0 * pymunk.moment_for_poly(BLOCK_MASS, BAR)
        block = pymunk.Body(BLOCK_MASS, moment)
        bar, stem = pymunk.Poly(block, BAR), pymunk.Poly(block, STEM)
        block.center_of_gravity = (bar.center_of_gravity + stem.center_of_gravity) / 2
        block.position = (256.0, 300.0)
        block.angle = 0.0
        space.add(block, bar, stem)

        self.space, self.agent, self.block = space, agent, block

    def _count_contacts(self, arbiter: pymunk.Arbiter, space: pymunk.Space, data) -> None:
        self._contact_points += len(arbiter.contact_point_set.points)

    # -- state --------------------------------------------------------------------
    def set_state(self, state: Sequence[float]) -> int:
        """Rebuild the world at ``[agent x, agent y, block x, block y, angle]``.

        Order matters (the "legacy" order of the data): agent position, block
        position, block angle, then one substep with the agent at rest.
        Returns the contact count of that substep (see :meth:`step`).
        """
        ax, ay, bx, by, angle = (float(v) for v in state)
        self._build()
        self.agent.position = (ax, ay)
        self.block.position = (bx, by)
        self.block.angle = angle
        self._contact_points = 0
        self.space.step(DT)
        return self._contacts_per_substep()

    def _contacts_per_substep(self) -> int:
        # What the dataset's ``n_contacts`` holds: contact points summed over
        # the substeps of one control step (every pair: agent-block and
        # block-wall), divided by the substep count and rounded up.
        return int(math.ceil(self._contact_points / SUBSTEPS))

    def step(self, target: Sequence[float]) -> int:
        """Drive the agent toward ``target`` (x, y) for one control step.

        Runs 10 substeps of ``acc = K_P (target - p) + K_V (0 - v)``,
        ``v += acc * dt``, ``space.step(dt)``. Returns the step's contact count.
        """
        tx, ty = float(target[0]), float(target[1])
        agent, space = self.agent, self.space
        self._contact_points = 0
        for _ in range(SUBSTEPS):
            px, py = agent.position
            vx, vy = agent.velocity
            ax = K_P * (tx - px) + K_V * (0.0 - vx)
            ay = K_P * (ty - py) + K_V * (0.0 - vy)
            agent.velocity = (vx + ax * DT, vy + ay * DT)
            space.step(DT)
        return self._contacts_per_substep()

    # -- read-out -----------------------------------------------------------------
    @property
    def agent_pos(self) -> np.ndarray:
        """(2,) float64 agent position."""
        return np.array(tuple(self.agent.position), dtype=np.float64)

    @property
    def agent_vel(self) -> np.ndarray:
        """(2,) float64 agent velocity (px/s)."""
        return np.array(tuple(self.agent.velocity), dtype=np.float64)

    @property
    def block_pose(self) -> np.ndarray:
        """(3,) float64 ``[x, y, angle]`` of the block's body origin; angle unwrapped."""
        x, y = self.block.position
        return np.array((x, y, self.block.angle), dtype=np.float64)

    def state(self) -> np.ndarray:
        """(5,) float64 ``[agent x, agent y, block x, block y, angle mod 2 pi]``."""
        ax, ay = self.agent.position
        bx, by = self.block.position
        return np.array((ax, ay, bx, by, self.block.angle % (2 * np.pi)), dtype=np.float64)
