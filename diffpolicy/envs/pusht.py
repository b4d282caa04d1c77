"""PushTEnv: the Push-T task as a gymnasium environment (pymunk 7, pygame drawing).

A round agent (radius 15) pushes a T-shaped block onto a fixed goal pose in a
512 x 512 world (pixels, y down). The action is the agent's absolute target
position; each ``step`` runs 10 PD-controlled physics substeps (10 Hz control,
100 Hz simulation). Physics, drawing and the reset draw follow
``shared/spec/pusht.md`` so that the recorded human demos replay exactly:
``reset(seed=i)`` starts demo episode ``i``.

Observations (``obs_type``):

* ``"state"``: ``(5,)`` float64 ``[agent x, agent y, block x, block y, block angle mod 2 pi]``;
* ``"keypoints"``: ``(20,)`` float64, the 9 block keypoints ``(x, y)`` flattened, then agent x, y;
* ``"image"``: dict ``image`` ``(3, S, S)`` uint8 (or float32 in [0, 1] with
  ``image_dtype="float32"``; ``S = image_size``, 96 by default) and
  ``agent_pos`` ``(2,)`` float32.

The observation spaces bound no position (only the angle, in [0, 2 pi), and the
pixels): the agent passes through the walls, and seeded starts may put part of
the block past the board's edge.

Actions are ``(2,)`` target positions (real numbers). The action space says
[0, 512] (what the demos use); targets up to one workspace beyond it
(``ACTION_LIMITS``, [-512, 1024] on each axis) are accepted, as in the original
simulator, and simply pull the agent there (it passes through walls).  Anything
else raises ``ValueError`` and leaves the state unchanged: NaN or infinite
values, targets farther out (a target at 1e308 made the physics NaN), and
non-numeric, boolean or complex actions.

Reward ``clip(coverage / 0.95, 0, 1)``; ``terminated`` when coverage > 0.95.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from diffpolicy.envs.actions import real_array
from diffpolicy.envs.geometry import GOAL_POSE, coverage, keypoints_from_state
from diffpolicy.envs.physics import CONTROL_HZ, PushTPhysics
from diffpolicy.envs.render import WORLD_SIZE, SceneRenderer, draw_target

__all__ = ["PushTEnv", "keypoints_from_state", "seeded_initial_state", "OBS_TYPES"]

OBS_TYPES = ("state", "keypoints", "image")
SUCCESS_THRESHOLD = 0.95
MAX_EPISODE_STEPS = 300


def seeded_initial_state(seed: int) -> np.ndarray:
    """The start state ``(5,)`` of ``reset(seed=seed)``, as drawn by the original.

    ``numpy.random.RandomState(seed)``: agent x, y = ``randint(50, 450)``;
    block x, y = ``randint(100, 400)``; angle = ``randn() * 2 pi - pi``.
    """
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"PushTEnv.reset: seed must be in [0, 2**32), found {seed}")
    rs = np.random.RandomState(int(seed))
    return np.array([rs.randint(50, 450), rs.randint(50, 450),
                     rs.randint(100, 400), rs.randint(100, 400),
                     rs.randn() * 2 * np.pi - np.pi], dtype=np.float64)


def _check_state_option(state: Any) -> np.ndarray:
    try:
        arr = np.asarray(state, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"PushTEnv.reset: options['state'] must be 5 numbers "
                         f"[agent x, agent y, block x, block y, angle], found {state!r}") from e
    if arr.shape != (5,):
        raise ValueError(f"PushTEnv.reset: options['state'] must have shape (5,) "
                         f"[agent x, agent y, block x, block y, angle], found shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"PushTEnv.reset: options['state'] must be finite, found {arr.tolist()}")
    return arr


ACTION_LIMITS = (-512.0, 1024.0)     # per axis: the board [0, 512] plus one board on each side


def _check_action(action) -> np.ndarray:
    """``action`` as a float64 array of real numbers, else ``ValueError`` naming what was found."""
    return real_array(action, "PushTEnv.step", "two real numbers (target x, y)")


class PushTEnv(gym.Env):
    """Push-T. See the module docstring for spaces, reward and termination.

    Args:
        obs_type: ``"state"``, ``"keypoints"`` or ``"image"``.
        render_mode: ``None``, ``"rgb_array"`` (``render()`` returns
            ``(render_size, render_size, 3)`` uint8) or ``"human"`` (pygame window).
        render_size: side of the ``render()`` image (``rgb_array``).
        image_size: side of the observation image (``obs_type="image"``).
        image_dtype: ``"uint8"`` (0..255) or ``"float32"`` (0..1) observation images.
        render_target: draw the last commanded target (a red cross) in ``render()``.
            Observation images never show it.
        window_size: side of the ``human`` window in screen pixels.
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": CONTROL_HZ}

    def __init__(self, obs_type: str = "keypoints", render_mode: str | None = None,
                 render_size: int = 96, image_size: int = 96, image_dtype: str = "uint8",
                 render_target: bool = True, window_size: int = WORLD_SIZE) -> None:
        if obs_type not in OBS_TYPES:
            raise ValueError(f"PushTEnv: obs_type must be one of {OBS_TYPES}, found {obs_type!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"PushTEnv: render_mode must be None or one of "
                             f"{self.metadata['render_modes']}, found {render_mode!r}")
        if image_dtype not in ("uint8", "float32"):
            raise ValueError(f"PushTEnv: image_dtype must be 'uint8' or 'float32', found {image_dtype!r}")
        for name, v in (("render_size", render_size), ("image_size", image_size), ("window_size", window_size)):
            if int(v) < 1:
                raise ValueError(f"PushTEnv: {name} must be a positive int, found {v!r}")
        self.obs_type = obs_type
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self.image_size = int(image_size)
        self.image_dtype = image_dtype
        self.render_target = render_target
        self.window_size = int(window_size)
        self.goal_pose = np.array(GOAL_POSE, dtype=np.float64)
        self.success_threshold = SUCCESS_THRESHOLD

        w = float(WORLD_SIZE)
        self.action_space = spaces.Box(0.0, w, shape=(2,), dtype=np.float32)
        # no position is bounded (module docstring): seeded starts may put block keypoints
        # past 512 (seed 65: 516.9), the agent follows targets out to ACTION_LIMITS
        if obs_type == "state":
            self.observation_space = spaces.Box(
                low=np.array([-np.inf] * 4 + [0.0]), high=np.array([np.inf] * 4 + [2 * np.pi]),
                dtype=np.float64)
        elif obs_type == "keypoints":
            self.observation_space = spaces.Box(-np.inf, np.inf, shape=(20,), dtype=np.float64)
        else:
            s = self.image_size
            image_space = (spaces.Box(0, 255, shape=(3, s, s), dtype=np.uint8) if image_dtype == "uint8"
                           else spaces.Box(0.0, 1.0, shape=(3, s, s), dtype=np.float32))
            self.observation_space = spaces.Dict({
                "image": image_space,
                "agent_pos": spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32),
            })

        self.sim = PushTPhysics()
        self.renderer = SceneRenderer(GOAL_POSE)
        self.last_action: np.ndarray | None = None
        self._n_contacts = 0
        self._window = None
        self._clock = None

    # -- gymnasium API -------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode.

        ``seed=i`` draws the start state exactly as the original did (demo
        episode ``i`` starts there); ``options={"state": [ax, ay, bx, by, angle]}``
        starts from an explicit state instead. Without either, the start is
        drawn from the env's seeded ``np_random``.
        """
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"PushTEnv.reset: options must be a dict such as "
                             f"{{'state': [ax, ay, bx, by, angle]}}, found {type(options).__name__}")
        super().reset(seed=seed)
        if options is not None and "state" in options:
            state = _check_state_option(options["state"])
        else:
            if seed is None:
                seed = int(self.np_random.integers(0, 2**31 - 1))
            state = seeded_initial_state(seed)
        self._n_contacts = self.sim.set_state(state)
        self.last_action = None
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), self._get_info()

    def step(self, action):
        """Move the agent toward ``action`` (an (x, y) target) for 1/10 s."""
        act = _check_action(action)
        if act.shape != (2,):
            raise ValueError(f"PushTEnv.step: action must have shape (2,) (target x, y), "
                             f"found shape {act.shape}")
        if not np.all(np.isfinite(act)):
            raise ValueError(f"PushTEnv.step: action must be finite, found {act.tolist()}; "
                             f"the environment state is unchanged")
        lo, hi = ACTION_LIMITS
        if np.any(act < lo) or np.any(act > hi):
            raise ValueError(f"PushTEnv.step: action must lie in [{lo:g}, {hi:g}] on each axis (one "
                             f"workspace beyond the board), found {act.tolist()}; the environment "
                             f"state is unchanged")
        self._n_contacts = self.sim.step(act)
        self.last_action = act
        cov = coverage(self.sim.block_pose, self.goal_pose)
        reward = float(np.clip(cov / self.success_threshold, 0.0, 1.0))
        terminated = bool(cov > self.success_threshold)
        info = self._get_info(cov)
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, terminated, False, info

    def render(self):
        """``rgb_array``: ``(render_size, render_size, 3)`` uint8; ``human``: draw the window."""
        if self.render_mode is None:
            gym.logger.warn("PushTEnv.render() called with render_mode=None; pass render_mode "
                            "'rgb_array' or 'human' to the constructor.")
            return None
        if self.render_mode == "rgb_array":
            image = self.renderer.render(self.sim.agent_pos, self.sim.block_pose, self.render_size)
            if self.render_target and self.last_action is not None:
                draw_target(image, self.last_action)
            return image
        self._render_window()
        return None

    def close(self) -> None:
        if self._window is not None:
            import pygame
            pygame.display.quit()
            self._window = None
            self._clock = None

    # -- helpers --------------------------------------------------------------------
    def _render_window(self) -> None:
        import pygame
        if self._window is None:
            pygame.display.init()
            self._window = pygame.display.set_mode((self.window_size, self.window_size))
            pygame.display.set_caption("Push-T")
            self._clock = pygame.time.Clock()
        surface = self.renderer.draw(self.sim.agent_pos, self.sim.block_pose)
        if self.window_size != WORLD_SIZE:
            surface = pygame.transform.smoothscale(surface, (self.window_size, self.window_size))
        self._window.blit(surface, (0, 0))
        if self.render_target and self.last_action is not None:
            k = self.window_size / WORLD_SIZE
            x, y = self.last_action * k
            for dx, dy in ((8, 0), (0, 8)):
                pygame.draw.line(self._window, (255, 0, 0), (x - dx, y - dy), (x + dx, y + dy), 2)
        pygame.event.pump()
        pygame.display.flip()
        self._clock.tick(self.metadata["render_fps"])

    @property
    def n_contacts(self) -> int:
        """Contact count of the last step (or of the reset substep); see ``info["n_contacts"]``."""
        return int(self._n_contacts)

    def state(self) -> np.ndarray:
        """``(5,)`` float64 ``[agent x, agent y, block x, block y, angle mod 2 pi]``."""
        return self.sim.state()

    def observation_image(self) -> np.ndarray:
        """The observation image as ``(image_size, image_size, 3)`` uint8 HWC (no target marker)."""
        return self.renderer.render(self.sim.agent_pos, self.sim.block_pose, self.image_size)

    def _get_obs(self):
        if self.obs_type == "state":
            return self.sim.state()
        if self.obs_type == "keypoints":
            kp = keypoints_from_state(self.sim.block_pose)
            return np.concatenate([kp.reshape(-1), self.sim.agent_pos])
        image = self.observation_image().transpose(2, 0, 1)
        if self.image_dtype == "float32":
            image = image.astype(np.float32) / 255.0
        else:
            image = np.ascontiguousarray(image)
        return {"image": image, "agent_pos": self.sim.agent_pos.astype(np.float32)}

    def _get_info(self, cov: float | None = None) -> dict:
        if cov is None:
            cov = coverage(self.sim.block_pose, self.goal_pose)
        return {
            "coverage": float(cov),
            "is_success": bool(cov > self.success_threshold),
            "agent_pos": self.sim.agent_pos,
            "agent_vel": self.sim.agent_vel,
            "block_pose": self.sim.block_pose,
            "goal_pose": self.goal_pose.copy(),
            "n_contacts": int(self._n_contacts),
        }


def main(argv: Sequence[str] | None = None) -> Path:
    """``python -m diffpolicy.envs.pusht --seed 0 --out scene.png``: save the reset scene."""
    parser = argparse.ArgumentParser(description="Save a PNG of the Push-T scene after reset(seed).")
    parser.add_argument("--seed", type=int, default=0, help="reset seed (demo episode index for 0..205)")
    parser.add_argument("--out", type=Path, default=Path("pusht_scene.png"), help="output PNG path")
    parser.add_argument("--size", type=int, default=WORLD_SIZE, help="image side in pixels")
    args = parser.parse_args(argv)
    import cv2

    env = PushTEnv(obs_type="state", render_mode="rgb_array", render_size=args.size)
    obs, info = env.reset(seed=args.seed)
    image = env.render()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), image[:, :, ::-1]):
        raise OSError(f"could not write {args.out}")
    print(f"seed {args.seed}: state {np.round(obs, 3).tolist()}, coverage {info['coverage']:.3f} -> {args.out}")
    return args.out


if __name__ == "__main__":
    main()
