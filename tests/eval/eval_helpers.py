"""Helpers of the evaluation tests: untrained but complete checkpoints (no training needed) and
minimal evaluation reports."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from diffpolicy.datasets import LinearNormalizer
from diffpolicy.policy.checkpoint import FORMAT, atomic_save
from diffpolicy.policy.diffusion_policy import DiffusionPolicy, PolicyConfig
from diffpolicy.policy.ema import EMA
from diffpolicy.policy.run_config import builtin_task


def make_checkpoint(path: Path, task: str = "pusht_keypoints", obs_type: str = "keypoints") -> Path:
    """A checkpoint of a tiny random policy of the Push-T task ``pusht_<obs_type>``, laid out
    exactly as training writes it (``task``: the name recorded)."""
    torch.manual_seed(0)
    task_cfg = asdict(builtin_task(f"pusht_{obs_type}"))
    cameras = {name: {"shape": [c["shape"][2], *c["shape"][:2]], "crop": [76, 76]}
               for name, c in task_cfg["cameras"].items()}
    cfg = PolicyConfig(obs_dim=task_cfg["obs_dim"], cameras=cameras, down_dims=(16, 32, 64),
                       step_embed_dim=16, num_inference_steps=3)
    data = {"action": torch.rand(64, 2) * 512, "obs": torch.rand(64, task_cfg["obs_dim"]) * 512}
    norm = LinearNormalizer().fit(data, image_keys=tuple(cameras))
    policy = DiffusionPolicy(cfg, norm)
    ema = EMA(policy)
    ema.update(policy)
    ckpt = {"format": FORMAT, "task": task, "config": {"task": {**task_cfg, "name": task}, "seed": 3},
            "policy_config": cfg.to_dict(), "model": policy.state_dict(), "ema": ema.state_dict(),
            "normalizer": norm.state_dict(), "step": 7, "epoch": 0, "rng": [], "metrics": {}}
    return atomic_save(ckpt, path)


def write_report(folder: Path, score: float, success: float, seed: int | None, n_episodes: int = 50,
                 num_inference_steps: int | None = None, step: int = 16000, seed_start: int = 100000,
                 temporal_ensemble: float | None = None, successes: list[bool] | None = None) -> Path:
    """A minimal eval.json as diffpolicy-eval writes it (only the fields the summaries read)."""
    folder.mkdir(parents=True)
    metric = lambda v: {"mean": v, "ci_low": v, "ci_high": v, "n": n_episodes}  # noqa: E731
    report = {"config": {"seed_start": seed_start, "n_episodes": n_episodes, "max_steps": 300, "sampler": None,
                         "num_inference_steps": num_inference_steps, "n_action_steps": None},
              "policy_config": {"sampler": "ddim", "num_inference_steps": 10, "n_action_steps": 8},
              "task": "pusht_keypoints", "step": step,
              "metrics": {"score": metric(score), "success_rate": metric(success),
                          "max_coverage": metric(score - 0.05), "final_coverage": metric(score - 0.1)}}
    if seed is not None:
        report["training_seed"] = seed
    if temporal_ensemble is not None:
        report["config"].update(temporal_ensemble=temporal_ensemble, replan_every=1)
    if successes is not None:
        report["episodes"] = [{"seed": seed_start + i, "success": bool(ok)} for i, ok in enumerate(successes)]
    (folder / "eval.json").write_text(json.dumps(report))
    return folder
