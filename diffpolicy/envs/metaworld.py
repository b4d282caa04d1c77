"""MetaWorldEnv: one Meta-World v3 task as a plain gymnasium environment.

Importing this module registers ``diffpolicy/MetaWorld-v0`` (``max_episode_steps``
= ``MAX_EPISODE_STEPS``); ``gymnasium.make("diffpolicy/MetaWorld-v0",
task_name="reach-v3")`` then builds a :class:`MetaWorldEnv`.  It needs the
``metaworld`` extra (``pip install -e '.[metaworld]'``), which is imported when
the first env is built, not by this module, so ``diffpolicy.envs`` never needs
MuJoCo.

* **Observations**: the 39-d Meta-World state, ``(39,)`` float32: hand xyz,
  gripper opening, two objects (xyz + quaternion, zero-padded), the same 18
  numbers of the previous step, and the goal xyz (the goal is observable, as in
  Meta-World's MT benchmarks).
* **Actions**: ``(4,)`` hand dx, dy, dz and gripper effort, clipped to [-1, 1]
  and rounded to float32 (the env executes exactly what a float32 store
  records).  Non-finite, non-numeric or wrongly shaped actions raise
  ``ValueError`` and leave the env unchanged.
* **info**: Meta-World's keys (``success``, ``near_object``, ``grasp_success``,
  ``grasp_reward``, ``in_place_reward``, ``obj_to_target``,
  ``unscaled_reward``) plus ``is_success`` (a bool, ``success > 0``), also
  after ``reset``.  ``terminated`` is ``is_success`` when
  ``terminate_on_success`` (default, as in Meta-World's own evaluation);
  ``truncated`` comes from the time limit.
* **Seeds**: ``reset(seed=s)`` draws the object and goal positions from the
  task's own random distribution with a generator seeded by ``s`` (not one of
  Meta-World's 50 pre-sampled MT1 tasks), so the start is a function of ``s``
  alone; ``reset()`` without a seed continues that generator.
* **render()** (``render_mode="rgb_array"``): ``(render_size, render_size, 3)``
  uint8 from ``camera_name`` (default ``corner2``), turned upright (Meta-World's
  corner cameras are mounted upside down).  Headless Linux needs EGL or OSMesa;
  with ``MUJOCO_GL`` unset the env sets it to ``egl`` before the first frame.
  When no GL backend works, ``render()`` raises ``RuntimeError`` naming the cause.
"""
from __future__ import annotations

import atexit
import os
import platform
import sys
import weakref
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import register, registry

from diffpolicy.envs.actions import real_array

__all__ = ["MetaWorldEnv", "ENV_ID", "MAX_EPISODE_STEPS", "MT10_TASKS", "OBS_DIM", "ACTION_DIM",
           "task_names", "metaworld_versions", "require_metaworld"]

ENV_ID = "diffpolicy/MetaWorld-v0"
# Measured on MT10, seeds 0..199 (docs/metaworld.md): the scripted experts succeed after 48..111
# steps on average per task; the slowest successes took 211 (push) and 352 steps (peg-insert-side,
# 1 of 174 over 300).  300 gives 2.7x..6.2x the mean and costs 60 % of Meta-World's
# own limit of 500 (its env refuses to step past that) for every failed episode.
MAX_EPISODE_STEPS = 300
OBS_DIM = 39
ACTION_DIM = 4
MT10_TASKS = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
              "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3",
              "window-open-v3", "window-close-v3")
DEFAULT_CAMERA = "corner2"
INSTALL_HINT = "pip install -e '.[metaworld]' (metaworld>=3.1,<4)"


def require_metaworld():
    """Import and return the ``metaworld`` package, or raise ``ImportError`` saying how
    to install it (or, when importing mujoco fails for ``MUJOCO_GL``, naming that)."""
    try:
        import metaworld
    except ImportError as e:
        raise ImportError(f"Meta-World is not installed ({e}); {INSTALL_HINT}") from e
    except Exception as e:  # mujoco's import fails this way when MUJOCO_GL names a missing library
        gl = os.environ.get("MUJOCO_GL")
        hint = (f"MUJOCO_GL={gl!r} is read when mujoco is imported; unset it, or install that GL "
                f"library" if gl else INSTALL_HINT)
        raise ImportError(f"cannot import Meta-World ({type(e).__name__}: {e}); {hint}") from e
    return metaworld


def _task_classes() -> dict[str, type]:
    """``{task name: SawyerXYZEnv subclass}`` for every Meta-World v3 task."""
    require_metaworld()
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    return dict(ALL_V3_ENVIRONMENTS)


def task_names() -> list[str]:
    """Every Meta-World v3 task name (``reach-v3``, ...), sorted."""
    return sorted(_task_classes())


def metaworld_versions() -> dict[str, str]:
    """``{"metaworld": ..., "mujoco": ...}``: the installed versions (provenance)."""
    from importlib.metadata import version
    require_metaworld()
    return {"metaworld": version("metaworld"), "mujoco": version("mujoco")}


def _default_gl_backend() -> None:
    """Offscreen rendering on headless Linux: MuJoCo's default (GLFW) needs a display, so
    pick EGL when the user chose nothing.  gymnasium reads ``MUJOCO_GL`` when the first
    frame is rendered, so setting it here (before that) is enough."""
    if "MUJOCO_GL" not in os.environ and platform.system() == "Linux":
        os.environ["MUJOCO_GL"] = "egl"


_RENDERING: "weakref.WeakSet[MetaWorldEnv]" = weakref.WeakSet()   # envs holding a GL context
_close_at_exit_registered = False


def _close_rendering_envs() -> None:
    """Free the GL contexts of envs still open at interpreter exit.  Registered after MuJoCo's
    EGL module registers ``eglTerminate`` (at the first frame), so it runs before it; freeing a
    context after that fails with a page of EGL_NOT_INITIALIZED traceback."""
    for env in list(_RENDERING):
        env.close()


def _quiet_viewer_del(hook):
    """``sys.unraisablehook`` that drops the error of gymnasium's ``OffScreenViewer.__del__``
    (a viewer whose GL context could not be made fails again when freed: a page of traceback
    after our one-line error) and passes everything else to ``hook``."""
    def quiet(unraisable):
        if getattr(unraisable.object, "__qualname__", "") != "OffScreenViewer.__del__":
            hook(unraisable)
    return quiet


def _check_action(action: Any) -> np.ndarray:
    """``action`` as a ``(4,)`` float64 array of finite real numbers, else ``ValueError``."""
    arr = real_array(action, "MetaWorldEnv.step", "4 real numbers (dx, dy, dz, grip)")
    if arr.shape != (ACTION_DIM,):
        raise ValueError(f"MetaWorldEnv.step: action must have shape ({ACTION_DIM},) (dx, dy, dz, grip), "
                         f"found shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"MetaWorldEnv.step: action must be finite, found {arr.tolist()}; "
                         f"the environment state is unchanged")
    return arr


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task; see the module docstring for spaces, info and seeds.

    Args:
        task_name: a Meta-World v3 task, e.g. ``"reach-v3"`` (``task_names()`` lists them).
        render_mode: ``None`` or ``"rgb_array"``.
        render_size: side of the ``render()`` frame in pixels.
        camera_name: a camera of the Meta-World scene (``corner``, ``corner2``, ``corner3``,
            ``corner4``, ``topview``, ``behindGripper``, ``gripperPOV``).
        terminate_on_success: end the episode (``terminated=True``) at the first success.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, task_name: str, render_mode: str | None = None, render_size: int = 256,
                 camera_name: str = DEFAULT_CAMERA, terminate_on_success: bool = True) -> None:
        classes = _task_classes()
        if task_name not in classes:
            raise ValueError(f"MetaWorldEnv: unknown task {task_name!r}; Meta-World "
                             f"{metaworld_versions()['metaworld']} has {sorted(classes)}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"MetaWorldEnv: render_mode must be None or one of "
                             f"{self.metadata['render_modes']}, found {render_mode!r}")
        if isinstance(render_size, bool) or not isinstance(render_size, (int, np.integer)) or render_size < 1:
            raise ValueError(f"MetaWorldEnv: render_size must be a positive int, found {render_size!r}")
        if render_mode == "rgb_array":
            _default_gl_backend()
        import mujoco

        self.task_name = task_name
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self.camera_name = camera_name
        self.terminate_on_success = bool(terminate_on_success)
        env = classes[task_name](render_mode=render_mode, camera_name=camera_name,
                                 width=self.render_size, height=self.render_size)
        self._finalizer = weakref.finalize(self, env.close)  # free the GL context before interpreter exit
        self._camera_id = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, camera_name)
        if self._camera_id < 0:
            cameras = [env.model.camera(i).name for i in range(env.model.ncam)]
            raise ValueError(f"MetaWorldEnv: no camera {camera_name!r} in the {task_name} scene; "
                             f"it has {cameras}")
        # What Meta-World's goal-observable envs do, minus the frozen task: the goal is part of
        # the observation and every reset draws a fresh configuration from env.np_random.
        env._partially_observable = False
        env.__dict__.pop("sawyer_observation_space", None)  # cached property: recompute with the goal
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        self._env = env
        self._seeded = False
        self._render_error: str | None = None    # rendering failed once: fail fast after
        self.metadata = dict(self.metadata, render_fps=int(round(1.0 / env.dt)))
        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(OBS_DIM,), dtype=np.float32)

    @property
    def max_path_length(self) -> int:
        """Meta-World's own hard limit (500): its env refuses to step past it."""
        return int(self._env.max_path_length)

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        info = dict(info)
        info["is_success"] = bool(float(info["success"]) > 0)
        return info

    # -- gymnasium API -------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode; ``seed`` fixes the object and goal positions (``options`` is unused)."""
        super().reset(seed=seed)
        if seed is not None:
            self._env.seed(int(seed))
        elif not self._seeded:
            self._env.seed(int(self.np_random.integers(0, 2**31 - 1)))
        self._seeded = True
        obs, _ = self._env.reset()
        _, info = self._env.evaluate_state(obs, np.zeros(ACTION_DIM))
        return obs.astype(np.float32), self._info(info)

    def step(self, action):
        """Apply ``action`` ``(4,)`` (clipped to [-1, 1]) for one control step (5 MuJoCo steps)."""
        if not self._seeded:
            raise RuntimeError("MetaWorldEnv.step: call reset() before the first step")
        act = np.clip(_check_action(action), -1.0, 1.0).astype(np.float32)
        obs, reward, _, truncated, info = self._env.step(act)
        info = self._info(info)
        terminated = self.terminate_on_success and info["is_success"]
        return obs.astype(np.float32), float(reward), terminated, bool(truncated), info

    def render(self):
        """``(render_size, render_size, 3)`` uint8 from ``camera_name``, upright."""
        if self.render_mode is None:
            gym.logger.warn("MetaWorldEnv.render() called with render_mode=None; pass "
                            "render_mode='rgb_array' to the constructor.")
            return None
        if self._render_error is not None:
            raise RuntimeError(self._render_error)
        frame, old_hook = None, sys.unraisablehook
        sys.unraisablehook = _quiet_viewer_del(old_hook)
        try:
            frame = self._env.render()
        except Exception as e:  # mujoco.FatalError, EGL/OSMesa import or context errors
            self._render_error = (
                f"MetaWorldEnv.render: MuJoCo offscreen rendering does not work here "
                f"(MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}; {type(e).__name__}: {e}). Install an "
                f"EGL or OSMesa library (Debian: libegl1, libosmesa6) and set MUJOCO_GL=egl or "
                f"osmesa before the first frame")
        finally:   # by now the half-made viewer of a failure is freed (its __del__ ran, quietly)
            sys.unraisablehook = old_hook
        if frame is None:
            raise RuntimeError(self._render_error)
        global _close_at_exit_registered
        if not _close_at_exit_registered:
            atexit.register(_close_rendering_envs)
            _close_at_exit_registered = True
        _RENDERING.add(self)
        up = self._env.data.cam_xmat[self._camera_id].reshape(3, 3)[:, 1]  # camera y axis in the world
        if up[2] < 0:          # mounted upside down: rotate the picture by 180 degrees
            frame = frame[::-1, ::-1]
        return np.ascontiguousarray(frame, dtype=np.uint8)

    def close(self) -> None:
        self._finalizer()


if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="diffpolicy.envs.metaworld:MetaWorldEnv",
             max_episode_steps=MAX_EPISODE_STEPS)
