"""Closed-loop rollouts of a policy in many environments of its task at once.

The environments come from the task config (``eval/task_env.py``): Push-T,
Meta-World or any gymnasium env it names.

All episodes run side by side: at every policy step the observation
histories of the still-running episodes are stacked into one batch, the
policy is called once, and each environment executes its ``Ta`` actions
(receding horizon).  An episode ends at its first success (the task's
``success_key``; Push-T: coverage > 0.95, where its env also terminates), when
the env terminates or truncates, or after ``max_steps`` environment steps; a finished episode
drops out of the batch.  With 50 Push-T episodes and 300 steps that is 38
batched policy calls instead of ~1900 calls at batch 1.

Observation history: the last ``To`` observations of each episode; at reset
the first observation is repeated ``To`` times (as the reference does).

Temporal ensembling (``temporal_ensemble=m``, off by default): the policy is
called every ``replan_every`` env steps (still one batched call for all
running episodes), each call's whole sequence ``(H, Da)`` is stored per
episode, and every step executes the weighted mean of the stored predictions
for that step (:mod:`diffpolicy.eval.ensemble`).

Step records (``record_steps=True``, off by default): every episode keeps, per
executed env step ``t``, the observation and info the env returned before it
(``reset`` for t = 0, then ``step``) and the action the env received at ``t``
(after the action stride and any ensembling): ``RolloutResult.steps[seed]``, an
:class:`EpisodeSteps`.  Replaying ``action`` from ``reset(seed=seed)`` goes
through ``obs`` again (``eval/self_play.py`` turns them into demos).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from diffpolicy.eval.ensemble import ActionEnsembler, check_ensemble_options
from diffpolicy.eval.task_env import make_env, observations_to_policy, succeeded, try_render
from diffpolicy.policy.diffusion_policy import DiffusionPolicy
from diffpolicy.policy.run_config import TaskConfig, builtin_task


@dataclass
class EpisodeResult:
    seed: int
    max_reward: float          # the best reward of the episode (Push-T: the paper's per-episode score)
    max_coverage: float | None     # for envs that report info["coverage"] (Push-T), else None
    final_coverage: float | None   # coverage at the last executed step
    success: bool              # the task's success_key was true at some step
    steps: int


@dataclass
class EpisodeSteps:
    """One episode step by step (``run_rollouts(record_steps=True)``); ``T`` executed steps.

    ``obs[t]``: the env observation before action ``t`` (as ``reset``/``step`` returned it:
    an array, e.g. Push-T keypoints ``(20,)``, or a dict); ``info[t]``: the info dict
    returned with it; ``action``: ``(T, Da)``, exactly what ``env.step`` received.
    The observation after the last action is not kept (nothing was executed from it).
    """
    obs: list
    info: list[dict]
    action: np.ndarray

    def __len__(self) -> int:
        return int(len(self.action))


@dataclass
class RolloutResult:
    episodes: list[EpisodeResult]
    call_seconds: list[float] = field(default_factory=list)    # wall time of each batched policy call
    call_batch: list[int] = field(default_factory=list)        # its batch size
    frames: dict[int, list[np.ndarray]] = field(default_factory=dict)   # seed -> RGB frames (H, W, 3)
    final_frames: dict[int, np.ndarray] = field(default_factory=dict)   # seed -> last RGB frame
    steps: dict[int, EpisodeSteps] = field(default_factory=dict)        # seed -> its steps (record_steps)

    @property
    def score(self) -> float:
        return float(np.mean([e.max_reward for e in self.episodes]))

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes]))


@torch.no_grad()
def run_rollouts(policy: DiffusionPolicy, task: TaskConfig | str, seeds: list[int], max_steps: int | None = None,
                 n_envs: int | None = None, device: torch.device | str = "cpu",
                 sampling_seed: int = 0, record_seeds: tuple[int, ...] = (),
                 video_size: int = 256, keep_final_frames: bool = False,
                 sampler: str | None = None, num_inference_steps: int | None = None,
                 progress: bool = True, temporal_ensemble: float | None = None,
                 replan_every: int | None = None, fixed_noise: bool = False,
                 record_steps: bool = False) -> RolloutResult:
    """Run one episode per seed of ``task`` (a task config, or the name of one in
    ``diffpolicy/configs/task/``); ``n_envs`` episodes at a time (default: all), each at most
    ``max_steps`` env steps (default: the task's ``max_episode_steps``).

    ``record_seeds`` episodes keep every rendered frame (``video_size`` pixels);
    ``keep_final_frames`` keeps the last frame of every episode.
    ``temporal_ensemble`` (m >= 0, None = off) ensembles the whole predicted
    sequences of calls made every ``replan_every`` steps (default 1) instead of
    executing ``n_action_steps`` actions per call.
    ``fixed_noise``: each episode draws the sampler's initial noise ``(H, Da)``
    once at reset and starts every call from it (with DDIM the policy is then a
    deterministic function of the observations within an episode).
    ``record_steps``: keep every episode's observations, infos and executed actions in
    ``result.steps[seed]`` (:class:`EpisodeSteps`); copies of what the env returned.
    """
    policy.eval()
    task = builtin_task(task) if isinstance(task, str) else task
    max_steps = max_steps or task.max_episode_steps
    to = policy.config.n_obs_steps
    coef, replan = None, 1
    if temporal_ensemble is not None or replan_every is not None:
        coef, replan = check_ensemble_options(temporal_ensemble, replan_every, policy.config.horizon, to)
    n_envs = n_envs or len(seeds)
    gen = torch.Generator(device=device).manual_seed(sampling_seed)
    result = RolloutResult(episodes=[])
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415
        bar = tqdm(total=len(seeds), desc="rollouts", dynamic_ncols=True)
    for start in range(0, len(seeds), n_envs):
        chunk = seeds[start:start + n_envs]
        envs = [make_env(task, max_steps, video_size) for _ in chunk]
        history, info0 = [], []
        for env, seed in zip(envs, chunk):
            obs, info = env.reset(seed=seed)
            history.append([obs] * to)
            info0.append(info)
        # per episode: (observations, infos, actions) so far; info_now: the info that came with history[i][-1]
        logs = [([], [], []) for _ in chunk] if record_steps else None
        info_now = list(info0)
        # maxima are over the steps taken (as the reference's runner does), not the reset state
        stats = {s: dict(max_reward=-np.inf, max_coverage=None, coverage=_coverage(info),
                         success=False, steps=0) for s, info in zip(chunk, info0)}
        for env, s in zip(envs, chunk):
            if s in record_seeds and (frame := try_render(env)) is not None:
                result.frames[s] = [frame]
        ensemblers = None if coef is None else [ActionEnsembler(to, coef) for _ in chunk]
        cfg = policy.config
        episode_noise = (torch.randn(len(chunk), cfg.horizon, cfg.action_dim, generator=gen, device=device)
                         if fixed_noise else None)
        active = list(range(len(chunk)))
        while active:
            batch = observations_to_policy(task, cfg.cameras, [history[i][-to:] for i in active])
            batch = {k: v.to(device) for k, v in batch.items()}
            t0 = time.perf_counter()
            predict = policy.predict_action if ensemblers is None else policy.predict_action_sequence
            noise = None if episode_noise is None else episode_noise[active]
            actions = predict(batch, generator=gen, sampler=sampler, num_inference_steps=num_inference_steps,
                              initial_noise=noise)
            actions = actions.cpu().numpy()     # (N, Ta, Da), or (N, H, Da) when ensembling
            if torch.cuda.is_available() and torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            result.call_seconds.append(time.perf_counter() - t0)
            result.call_batch.append(len(active))
            still = []
            for row, i in enumerate(active):
                seed, st = chunk[i], stats[chunk[i]]
                done = False
                plan = actions[row] if ensemblers is None else _ensembled(ensemblers[i], actions[row],
                                                                         st["steps"], replan)
                for a in plan:
                    if logs is not None:
                        _log_step(logs[i], history[i][-1], info_now[i], a)
                    obs, reward, terminated, truncated, info = envs[i].step(a)
                    if logs is not None:
                        info_now[i] = info
                    if seed in result.frames and (frame := try_render(envs[i])) is not None:
                        result.frames[seed].append(frame)
                    history[i].append(obs)
                    st["steps"] += 1
                    st["max_reward"] = max(st["max_reward"], float(reward))
                    st["coverage"] = _coverage(info)
                    if st["coverage"] is not None:
                        st["max_coverage"] = max(st["max_coverage"] or 0.0, st["coverage"])
                    st["success"] = st["success"] or succeeded(task, info)
                    if terminated or truncated or st["success"] or st["steps"] >= max_steps:
                        done = True
                        break
                history[i] = history[i][-to:]
                if not done:
                    still.append(i)
                else:
                    if keep_final_frames and (frame := try_render(envs[i])) is not None:
                        result.final_frames[seed] = frame
                    if bar is not None:
                        bar.update(1)
            active = still
        for i, seed in enumerate(chunk):
            if logs is not None:
                observations, infos, acts = logs[i]
                result.steps[seed] = EpisodeSteps(observations, infos, np.stack(acts))
            st = stats[seed]
            result.episodes.append(EpisodeResult(seed=seed, max_reward=st["max_reward"],
                                                 max_coverage=st["max_coverage"],
                                                 final_coverage=st["coverage"], success=st["success"],
                                                 steps=st["steps"]))
        for env in envs:
            env.close()
    if bar is not None:
        bar.close()
    return result


def _log_step(log: tuple[list, list, list], obs, info: dict, action) -> None:
    """Append copies of ``obs``, ``info`` and ``action`` (an env may reuse its buffers)."""
    observations, infos, actions = log
    observations.append(copy.deepcopy(obs))
    infos.append(copy.deepcopy(info))
    actions.append(np.array(action, copy=True))


def _coverage(info: dict) -> float | None:
    return float(info["coverage"]) if "coverage" in info else None


def _ensembled(ensembler: ActionEnsembler, sequence: np.ndarray, step: int, replan_every: int):
    """Store ``sequence`` ``(H, Da)`` predicted at env ``step``; yield the ensembled actions
    ``(Da,)`` of steps ``step .. step + replan_every - 1`` (each when it is executed)."""
    ensembler.add(sequence, step)
    for t in range(step, step + replan_every):
        yield ensembler.action(t)
