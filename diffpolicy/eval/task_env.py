"""A task's rollout environment: build its gymnasium env, and map the env's observations onto
the names the policy was trained with.

The task config says how (``policy/run_config.py`` ``TaskConfig``)::

    env_id / env_module / env_kwargs   gymnasium.make(env_id, **env_kwargs) after importing env_module
    env_obs_keys                       observation keys concatenated (flattened, slices allowed) into
                                       the low-dim vector; null: the observation is the vector
    env_camera_keys                    camera name -> observation key of its image, (H, W, C) or (C, H, W)
    success_key                        info key, true once the episode succeeded

Nothing here knows a particular task: Push-T and Meta-World are two such configs.
"""
from __future__ import annotations

import importlib
import inspect
import warnings

import gymnasium
import numpy as np
import torch

from diffpolicy.datasets.demos import parse_key
from diffpolicy.policy.run_config import ConfigError, TaskConfig


def make_env(task: TaskConfig, max_steps: int | None = None, render_size: int | None = None) -> gymnasium.Env:
    """The task's env, rendering RGB arrays; episodes truncate after ``max_steps`` (default: the
    task's ``max_episode_steps``).  ``render_size`` is passed to envs whose constructor takes it."""
    if task.env_id is None:
        raise ConfigError(f"task {task.name!r} names no environment (task.env_id is null): it can be "
                          f"trained, not evaluated")
    if task.env_module:
        try:
            importlib.import_module(task.env_module)
        except ImportError as exc:
            raise ConfigError(f"task {task.name!r}: cannot import task.env_module={task.env_module!r} ({exc}); "
                              f"is its package installed?") from exc
    try:
        spec = gymnasium.spec(task.env_id)
    except gymnasium.error.Error as exc:
        raise ConfigError(f"task {task.name!r}: task.env_id={task.env_id!r} is not a registered gymnasium "
                          f"env ({exc})") from None
    kwargs = dict(task.env_kwargs)
    if render_size is not None and "render_size" in _constructor_args(spec):
        kwargs["render_size"] = render_size
    try:
        return gymnasium.make(task.env_id, max_episode_steps=max_steps or task.max_episode_steps,
                              render_mode="rgb_array", disable_env_checker=True, **kwargs)
    except ImportError as exc:      # an env whose simulator is an optional extra (e.g. Meta-World's)
        raise ConfigError(f"task {task.name!r}: cannot build {task.env_id!r}: {exc}") from exc


def _constructor_args(spec) -> set[str]:
    creator = spec.entry_point
    if isinstance(creator, str):
        module, name = creator.split(":")
        creator = getattr(importlib.import_module(module), name)
    try:
        return set(inspect.signature(creator).parameters)
    except (TypeError, ValueError):
        return set()


def try_render(env: gymnasium.Env) -> np.ndarray | None:
    """``env.render()``, or None (with one warning) where the env cannot render here."""
    try:
        frame = env.render()
    except Exception as exc:  # noqa: BLE001 (e.g. no OpenGL for MuJoCo): videos are optional
        if not getattr(env, "_diffpolicy_render_warned", False):
            warnings.warn(f"{env.spec.id if env.spec else env}: no frames for videos ({exc})", stacklevel=2)
            env._diffpolicy_render_warned = True
        return None
    return None if frame is None else np.asarray(frame)


def observations_to_policy(task: TaskConfig, cameras: dict, history: list) -> dict[str, torch.Tensor]:
    """Per-env observation histories (each a list of ``To`` env observations) -> a policy batch
    ``{"obs": (N, To, Do), <camera>: (N, To, C, H, W) float in [0, 1]}``.

    ``cameras``: the policy config's (name -> {"shape": [C, H, W], ...}).
    """
    batch = {}
    if task.obs_dim:
        if task.env_obs_keys is None:
            if history and history[0] and isinstance(history[0][0], dict):
                raise ConfigError(f"task {task.name!r}: the env observes a dict {sorted(history[0][0])}; set "
                                  f"task.env_obs_keys to the keys that make the low-dim vector")
            vec = np.asarray(history, dtype=np.float32)
        else:
            vec = np.asarray([[_vector(task, o) for o in h] for h in history], dtype=np.float32)
        if vec.shape[-1] != task.obs_dim:
            raise ConfigError(f"task {task.name!r}: the env's low-dim observation has {vec.shape[-1]} values, "
                              f"the policy expects obs_dim={task.obs_dim}")
        batch["obs"] = torch.as_tensor(vec)
    for name, cam in cameras.items():
        key = task.env_camera_keys[name]
        c, h, w = cam["shape"]
        images = np.asarray([[o[key] for o in hist] for hist in history])
        if images.shape[-3:] == (h, w, c) and images.shape[-3:] != (c, h, w):
            images = np.moveaxis(images, -1, -3)
        if images.shape[-3:] != (c, h, w):
            raise ConfigError(f"task {task.name!r}: env observation {key!r} (camera {name!r}) has shape "
                              f"{images.shape[2:]}, the policy expects ({h}, {w}, {c}) or ({c}, {h}, {w})")
        images = torch.as_tensor(images)
        batch[name] = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return batch


def _vector(task: TaskConfig, obs: dict) -> np.ndarray:
    parts = []
    for entry in task.env_obs_keys:
        key, sl = parse_key(entry)
        if key not in obs:
            raise ConfigError(f"task {task.name!r}: env observation has no key {key!r} (task.env_obs_keys); "
                              f"it has {sorted(obs)}")
        v = np.asarray(obs[key], dtype=np.float32).reshape(-1)
        parts.append(v if sl is None else v[sl])
    return np.concatenate(parts)


def succeeded(task: TaskConfig, info: dict) -> bool:
    """Whether ``info`` (of one env step) reports success."""
    return bool(info.get(task.success_key, False))
