"""The options of ``diffpolicy-eval`` (``diffpolicy/configs/evaluation/eval.yaml``), typed and checked.

:func:`check_eval_config` refuses an unknown key, a value of the wrong type (from
:class:`EvalConfig`'s annotations) or out of range with one :class:`ConfigError`
line, before a checkpoint is read or an output folder is made, and fills the
options a plain-Python caller left out with their defaults.  Checks that need the
checkpoint (``num_inference_steps`` against its training steps, ``n_action_steps``,
``temporal_ensemble`` / ``replan_every``) and the default output folder's are
done in :func:`diffpolicy.eval.evaluate.evaluate`, still before anything is written.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from diffpolicy.policy.diffusion_policy import SAMPLERS
from diffpolicy.policy.run_config import ConfigError, check_device, check_types

VIDEO_FORMATS = ("mp4", "gif")


@dataclass
class EvalConfig:
    """eval.yaml's keys and defaults (``num_threads``: eval.yaml sets 1, a plain-Python call
    that leaves it out keeps torch's default)."""

    checkpoint: str = ""                # required
    task: str | None = None
    n_episodes: int = 50
    seed_start: int = 100000
    max_steps: int | None = None        # None: the task's max_episode_steps (Push-T: 300)
    n_envs: int = 50
    use_ema: bool = True
    sampler: str | None = None
    num_inference_steps: int | None = None
    n_action_steps: int | None = None
    action_stride: int | None = None
    temporal_ensemble: float | None = None
    replan_every: int | None = None
    fixed_noise: bool = False
    sampling_seed: int = 0
    device: str = "auto"
    output_dir: str | None = None
    n_videos: int = 4
    video_format: str = "mp4"
    video_size: int = 256
    latency_calls: int = 100
    num_threads: int | None = None


EVAL_KEYS = {f.name for f in fields(EvalConfig)}
_AT_LEAST = {"n_episodes": 1, "n_envs": 1, "seed_start": 0, "n_videos": 0,
             "video_size": 1, "latency_calls": 0}


def check_output_dir(out: Path, key: str = "output_dir") -> None:
    """Refuse an output folder that is a file, or lies under one."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{key}={out}: {p} is a file, not a folder")
            return


def check_eval_config(cfg: Mapping[str, Any]) -> dict:
    """The evaluation options as a plain dict (every key of :class:`EvalConfig`), checked;
    ``hydra`` (the command line's own node) is dropped."""
    c = {k: v for k, v in cfg.items() if k != "hydra"}
    unknown = sorted(set(c) - EVAL_KEYS)
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]} (known keys: {', '.join(sorted(EVAL_KEYS))})")
    c = {**asdict(EvalConfig()), **c}
    if c["checkpoint"] in (None, "", "???"):       # ???: eval.yaml's mark of a value not given
        raise ConfigError("checkpoint= is required (a file written by diffpolicy-train)")
    check_types(EvalConfig, c, "")
    for key, low in _AT_LEAST.items():
        if c[key] < low:
            raise ConfigError(f"{key} must be >= {low}, got {c[key]}")
    if c["sampler"] is not None and c["sampler"] not in SAMPLERS:
        raise ConfigError(f"sampler must be {', '.join(SAMPLERS)} or null, got {c['sampler']!r}")
    if c["max_steps"] is not None and c["max_steps"] < 1:
        raise ConfigError(f"max_steps must be >= 1 or null, got {c['max_steps']}")
    if c["action_stride"] is not None and c["action_stride"] < 1:
        raise ConfigError(f"action_stride must be >= 1 or null, got {c['action_stride']}")
    if c["num_inference_steps"] is not None and c["num_inference_steps"] < 1:
        raise ConfigError(f"num_inference_steps must be >= 1 or null, got {c['num_inference_steps']}")
    if c["num_threads"] is not None and c["num_threads"] < 0:
        raise ConfigError(f"num_threads must be >= 0 or null (0 or null: torch's default), got {c['num_threads']}")
    if c["video_format"] not in VIDEO_FORMATS:
        raise ConfigError(f"video_format must be {' or '.join(VIDEO_FORMATS)}, got {c['video_format']!r}")
    check_device(c["device"])
    if c["output_dir"]:
        check_output_dir(Path(c["output_dir"]))
    return c
