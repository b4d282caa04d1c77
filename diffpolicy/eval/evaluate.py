"""Evaluate a checkpoint in its task's environment and write a report.

``evaluate(cfg)`` (the body of ``diffpolicy-eval``) loads a checkpoint (EMA
weights by default), builds the environment its task config names
(``eval/task_env.py``), runs ``n_episodes`` episodes on seeds ``seed_start ..``
(default: 50 episodes, seeds 100000..100049, the task's ``max_episode_steps``:
the standard Push-T protocol), times batch-1 policy calls, and writes to
``output_dir``::

    eval.json        config, sampling settings used, per-episode results,
                     metrics with 95 % CIs, latency
    eval.md          the printed table
    videos/seed<S>.mp4|gif   the first ``n_videos`` episodes (Push-T: commanded target drawn)
    final_frames.png the last frame of every episode, captioned with its max reward
                     (videos and frames only where the env can render on this machine)
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffpolicy.device import resolve_device
from diffpolicy.eval.ensemble import ActionEnsembler, check_ensemble_options
from diffpolicy.eval.metrics import format_table, latency_stats, sampling_settings, summarize
from diffpolicy.eval.options import check_eval_config, check_output_dir
from diffpolicy.eval.rollout import run_rollouts
from diffpolicy.eval.task_env import make_env, observations_to_policy
from diffpolicy.eval.video import frame_grid, write_video
from diffpolicy.policy.checkpoint import load_checkpoint
from diffpolicy.policy.diffusion_policy import DiffusionPolicy, with_execution
from diffpolicy.policy.pretrained import build_policy, is_pretrained_path, load_pretrained
from diffpolicy.policy.run_config import ConfigError, TaskConfig, task_config, to_plain_config
from diffpolicy.speed import machine_info


def load_policy(path: str | Path, use_ema: bool = True, task: str | None = None,
                device: str | torch.device = "cpu") -> tuple[DiffusionPolicy, dict]:
    """Rebuild the policy stored in a checkpoint; returns ``(policy in eval mode, checkpoint)``.

    ``path`` may also be a pretrained folder (``policy/pretrained.py``; or its config.json /
    model.safetensors): it holds one set of weights, which ``use_ema`` must name.
    """
    if is_pretrained_path(path):
        policy, info = load_pretrained(path, task=task, device=device)
        if info["ema_weights"] != use_ema:
            held, asked = ("EMA", "raw") if info["ema_weights"] else ("raw", "EMA")
            raise ConfigError(f"pretrained folder {info['path']} holds its {held} weights only (a pretrained "
                              f"folder holds one set), but use_ema={str(use_ema).lower()} asks for the "
                              f"{asked} ones: set use_ema={str(not use_ema).lower()}, or export the "
                              f"{asked} weights (diffpolicy-export{'' if use_ema else ' --raw'})")
        return policy, info
    ckpt = load_checkpoint(path, task=task)
    policy = build_policy(ckpt["policy_config"], path)
    state = ckpt["ema"]["averaged"] if use_ema else ckpt["model"]
    policy.load_state_dict(state)
    return policy.to(device).eval(), ckpt


def checkpoint_task(ckpt: dict) -> TaskConfig:
    """The task config a checkpoint was trained on (its env, observation mapping, success key)."""
    return task_config(ckpt["config"]["task"])


@torch.no_grad()
def measure_latency(policy: DiffusionPolicy, task: TaskConfig, calls: int, device: torch.device,
                    sampler: str | None = None, num_inference_steps: int | None = None,
                    warmup: int = 5, temporal_ensemble: float | None = None,
                    replan_every: int = 1) -> list[float]:
    """Wall time of ``calls`` batch-1 ``predict_action`` calls on a real observation.

    With ``temporal_ensemble`` set: the cost per env step instead, timed
    directly: one ``predict_action_sequence`` call, storing it in an
    :class:`ActionEnsembler` and the ``replan_every`` ensembled actions it
    serves, divided by ``replan_every``.
    """
    env = make_env(task)
    obs, _ = env.reset(seed=0)
    env.close()
    batch = {k: v.to(device) for k, v in
             observations_to_policy(task, policy.config.cameras, [[obs] * policy.config.n_obs_steps]).items()}
    ensembler = None if temporal_ensemble is None else ActionEnsembler(policy.config.n_obs_steps,
                                                                       temporal_ensemble)
    times = []
    for i in range(warmup + calls):
        t0 = time.perf_counter()
        if ensembler is None:
            policy.predict_action(batch, sampler=sampler, num_inference_steps=num_inference_steps)
        else:
            seq = policy.predict_action_sequence(batch, sampler=sampler,
                                                 num_inference_steps=num_inference_steps)
            ensembler.add(seq[0].cpu().numpy(), i * replan_every)
            for t in range(i * replan_every, (i + 1) * replan_every):
                ensembler.action(t)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) / (1 if ensembler is None else replan_every))
    return times


def evaluate(cfg: Any) -> dict:
    """Run the evaluation described by ``cfg`` (see ``diffpolicy/configs/evaluation/eval.yaml``); returns the report."""

    c = check_eval_config(to_plain_config(cfg))     # types and ranges, before anything is read or made
    if c["num_threads"]:
        torch.set_num_threads(int(c["num_threads"]))
    device = resolve_device(c["device"])
    ckpt_path = Path(c["checkpoint"])
    policy, ckpt = load_policy(ckpt_path, c["use_ema"], c["task"], device)
    steps = policy.config.num_train_timesteps
    if c["num_inference_steps"] is not None and c["num_inference_steps"] > steps:
        raise ConfigError(f"num_inference_steps must be in [1, {steps}] (the checkpoint's num_train_timesteps) "
                          f"or null, got {c['num_inference_steps']}")
    if c.get("n_action_steps") is not None or c.get("action_stride") is not None:
        try:
            policy.config = with_execution(policy.config, c.get("n_action_steps"), c.get("action_stride"))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    try:
        coef, replan = check_ensemble_options(c.get("temporal_ensemble"), c.get("replan_every"),
                                              policy.config.horizon, policy.config.n_obs_steps)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for key in ("n_action_steps", "action_stride"):
        if coef is not None and c.get(key) is not None:
            raise ConfigError(f"{key}={c[key]} does not apply with temporal_ensemble="
                              f"{c['temporal_ensemble']}: every step executes an ensembled action and "
                              f"replan_every sets the steps between policy calls")
    task = checkpoint_task(ckpt)
    max_steps = c["max_steps"] or task.max_episode_steps
    folder = Path(ckpt["path"]) if "path" in ckpt else None  # a pretrained folder: report beside it
    out = Path(c["output_dir"]) if c.get("output_dir") else (
        folder.parent / f"eval_{folder.name}_{c['n_episodes']}" if folder else
        ckpt_path.parent.parent / f"eval_{ckpt_path.stem}_{c['n_episodes']}")
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)

    # batch-1 latency first: it also warms up the sampler before the timed rollout calls
    latency_b1 = latency_stats(measure_latency(policy, task, c["latency_calls"], device,
                                               c.get("sampler"), c.get("num_inference_steps"),
                                               temporal_ensemble=coef, replan_every=replan))
    seeds = list(range(c["seed_start"], c["seed_start"] + c["n_episodes"]))
    record = tuple(seeds[:c["n_videos"]])
    t0 = time.perf_counter()
    result = run_rollouts(policy, task, seeds, max_steps=max_steps, n_envs=c["n_envs"],
                          device=device, sampling_seed=c["sampling_seed"], record_seeds=record,
                          keep_final_frames=True, video_size=c.get("video_size", 256),
                          sampler=c.get("sampler"),
                          num_inference_steps=c.get("num_inference_steps"),
                          temporal_ensemble=coef, replan_every=c.get("replan_every"),
                          fixed_noise=bool(c.get("fixed_noise", False)))
    rollout_s = time.perf_counter() - t0
    summary = summarize(result.episodes)
    latency = {"batch 1" if coef is None else "batch 1 per env step (ensembling)": latency_b1,
               f"batch <= {max(result.call_batch)} (rollouts)": latency_stats(result.call_seconds)}
    sampling = sampling_settings(c, policy.config.to_dict())    # with the execution actually used
    execution = (f"{sampling['n_action_steps']} actions per call" if coef is None else
                 f"temporal ensemble m={coef:g}, a call every {replan} steps")
    if sampling.get("action_stride"):
        execution += f", action stride {sampling['action_stride']}"
    if sampling.get("fixed_noise"):
        execution += ", fixed noise per episode"
    title = (f"{ckpt['task']} | step {ckpt['step']} | {'EMA' if c['use_ema'] else 'raw'} weights | "
             f"{sampling['sampler']} {sampling['num_inference_steps']} steps | "
             f"{execution} | seeds {seeds[0]}..{seeds[-1]}")
    table = format_table(summary, latency, title)
    print(table, flush=True)
    print(f"[eval] {len(seeds)} episodes in {rollout_s:.1f} s; report in {out}", flush=True)

    for seed in record:
        if seed in result.frames:
            write_video(result.frames[seed], out / "videos" / f"seed{seed}.{c['video_format']}")
    if len(result.final_frames) == len(seeds):
        frame_grid([result.final_frames[s] for s in seeds],
                   [f"{s}: {e.max_reward:.2f}{' ok' if e.success else ''}"
                    for s, e in zip(seeds, result.episodes)], out / "final_frames.png")
    report = {"config": {**c, "max_steps": max_steps}, "checkpoint": str(ckpt_path), "task": ckpt["task"],
              "step": ckpt["step"],
              "training_seed": ckpt["config"].get("seed"),
              "training_minutes": (ckpt.get("metrics") or {}).get("minutes"),   # None for pretrained folders
              "policy_config": ckpt["policy_config"], "sampling": sampling, "metrics": summary, "latency": latency,
              "rollout_seconds": rollout_s, "machine": machine_info(device),
              "episodes": [asdict(e) for e in result.episodes]}
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    (out / "eval.md").write_text(table + "\n")
    return report
