"""Scripted Meta-World demonstrations, written into a :class:`ReplayBuffer` store.

``generate_demos("reach-v3", 100, "demos.zarr")`` runs Meta-World's own scripted
expert (``metaworld.policies``) in :class:`~diffpolicy.envs.metaworld.MetaWorldEnv`,
one episode per reset seed ``seed_start, seed_start + 1, ...``, and keeps the
episodes that reach success within ``max_steps`` and still report it after
their last recorded step; the others are skipped, until the store holds
``n_episodes`` episodes.  Recording stops ``post_success_steps`` steps after the
first success (or at ``max_steps``), so a demo shows the task completed and
held for a moment.

Store layout (zarr 2, the Push-T set's)::

    data/state          (N, 39) float32  observation before action t
    data/action         (N, 4)  float32  the action executed (clipped to [-1, 1])
    data/episode_seed   (N,)    int64    the reset seed of the step's episode
    meta/episode_ends   (E,)    int64
    .zattrs["diffpolicy_metaworld_demos"]: task, seed_start, max_steps,
        post_success_steps, metaworld and mujoco versions, format

Every episode is one ``ReplayBuffer.add_episode`` (rolled back whole if the run
is killed mid-way), and ``episode_seed`` travels with it, so the store always
says which seeds it holds.  Re-running the same command resumes at the seed
after the last stored one (the seeds in between were failures; a run is
deterministic, so they fail again); a store made with other settings is refused.
A new store is created under a temporary name and renamed into place, so ``out``
never exists without its settings.  One writer per store at a time.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from diffpolicy.datasets.errors import DatasetError
from diffpolicy.datasets.replay_buffer import ArraySpec, ReplayBuffer
from diffpolicy.datasets.store_settings import StoreSettings
from diffpolicy.envs import metaworld as mw_env

__all__ = ["generate_demos", "run_episode", "scripted_policy", "demo_task_names", "parse_task",
           "DemoSettings", "EpisodeResult", "GenerationReport", "DemoGenerationError",
           "SETTINGS_ATTR", "SCHEMA", "POST_SUCCESS_STEPS", "DEFAULT_MAX_STEPS"]

SETTINGS_ATTR = "diffpolicy_metaworld_demos"
FORMAT = 1
POST_SUCCESS_STEPS = 10
MAX_CONSECUTIVE_FAILURES = 50   # give up rather than loop forever (peg-insert-side fails ~16 %)
DEFAULT_MAX_STEPS = mw_env.MAX_EPISODE_STEPS
TASK_PREFIX = "metaworld/"
SCHEMA = {"state": ArraySpec((mw_env.OBS_DIM,)), "action": ArraySpec((mw_env.ACTION_DIM,)),
          "episode_seed": ArraySpec((), ("int64",))}


class DemoGenerationError(DatasetError):
    """Bad generator input (task, numbers) or a store made with other settings."""


@dataclass(frozen=True)
class DemoSettings(StoreSettings):
    """What decides a store's episodes; all must match to append to an existing store."""
    task: str
    seed_start: int
    max_steps: int
    post_success_steps: int
    metaworld: str
    mujoco: str
    format: int = FORMAT


@dataclass
class EpisodeResult:
    """One scripted rollout: ``state`` ``(T, 39)`` and ``action`` ``(T, 4)`` float32;
    ``success_step``: the number of steps after which success was first reported (None:
    never); ``final_success``: whether the last recorded action left the task solved."""
    seed: int
    state: np.ndarray
    action: np.ndarray
    success_step: int | None
    final_success: bool

    @property
    def success(self) -> bool:
        """Kept as a demo: success reached, and still there after the last recorded step."""
        return self.success_step is not None and self.final_success


@dataclass
class GenerationReport:
    """What ``generate_demos`` did: the store's totals and this run's share."""
    path: Path
    settings: DemoSettings
    n_episodes: int                  # in the store now
    added: int                       # by this run
    failed_seeds: list[int] = field(default_factory=list)   # tried by this run and skipped
    first_seed: int | None = None    # stored seeds' range
    last_seed: int | None = None
    seconds: float = 0.0
    success_steps: list[int] = field(default_factory=list)  # of this run's added episodes

    def summary(self) -> str:
        tried_all = 0 if self.last_seed is None else self.last_seed - self.settings.seed_start + 1
        failed_all = tried_all - self.n_episodes
        seeds = "no seeds" if self.last_seed is None else f"seeds {self.first_seed}..{self.last_seed}"
        lines = [f"{TASK_PREFIX}{self.settings.task}: {self.n_episodes} episodes in {self.path} "
                 f"({seeds}, {failed_all} of {tried_all} failed and skipped)",
                 f"this run: added {self.added}, skipped {len(self.failed_seeds)} failed seeds"
                 + (f" {self.failed_seeds[:10]}{' ...' if len(self.failed_seeds) > 10 else ''}"
                    if self.failed_seeds else "") + f", {self.seconds:.1f} s"]
        if self.success_steps:
            s = np.asarray(self.success_steps)
            lines.append(f"steps to success (added episodes): mean {s.mean():.1f}, max {s.max()}")
        return "\n".join(lines)


def demo_task_names() -> list[str]:
    """Meta-World v3 tasks that have a scripted policy (all 50 in metaworld 3.1), sorted."""
    mw_env.require_metaworld()
    from metaworld.policies import ENV_POLICY_MAP
    return sorted(set(ENV_POLICY_MAP) & set(mw_env.task_names()))


def _unknown_task(task: str) -> DemoGenerationError:
    return DemoGenerationError(
        f"unknown Meta-World task {task!r}; MT10: {', '.join(mw_env.MT10_TASKS)}; all tasks with a "
        f"scripted policy: {', '.join(demo_task_names())}")


def parse_task(spec: str) -> str:
    """``"metaworld/reach-v3"`` -> ``"reach-v3"``; ``DemoGenerationError`` for anything else."""
    if not spec.startswith(TASK_PREFIX):
        raise DemoGenerationError(f"task {spec!r} must look like '{TASK_PREFIX}<task>', "
                                  f"e.g. '{TASK_PREFIX}reach-v3'")
    task = spec[len(TASK_PREFIX):]
    if task not in demo_task_names():
        raise _unknown_task(task)
    return task


def scripted_policy(task: str):
    """A new instance of Meta-World's scripted expert for ``task`` (``get_action(obs (39,)) -> (4,)``)."""
    mw_env.require_metaworld()
    from metaworld.policies import ENV_POLICY_MAP
    if task not in ENV_POLICY_MAP:
        raise _unknown_task(task)
    return ENV_POLICY_MAP[task]()


def run_episode(env: mw_env.MetaWorldEnv, policy, seed: int, max_steps: int,
                post_success_steps: int = POST_SUCCESS_STEPS) -> EpisodeResult:
    """Roll ``policy`` out from ``env.reset(seed=seed)`` for at most ``max_steps`` steps,
    stopping ``post_success_steps`` steps after the first success.  ``env`` must not
    terminate on success (``terminate_on_success=False``)."""
    obs, _ = env.reset(seed=seed)
    states, actions = [], []
    success_step, info = None, {"is_success": False}
    with warnings.catch_warnings():  # the experts' gains saturate on purpose; the env clips
        warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
        for t in range(max_steps):
            # The experts edit their input in place (door-open shifts the handle position).
            action = np.clip(np.asarray(policy.get_action(obs.copy()), dtype=np.float64), -1, 1)
            action = action.astype(np.float32)
            states.append(obs)
            actions.append(action)
            obs, _, _, _, info = env.step(action)
            if success_step is None and info["is_success"]:
                success_step = t + 1
            if success_step is not None and t + 1 >= success_step + post_success_steps:
                break
    return EpisodeResult(seed, np.stack(states).astype(np.float32),
                         np.stack(actions).astype(np.float32), success_step, bool(info["is_success"]))


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
            high is not None and value > high):
        span = f">= {low}" if high is None else f"in {low}..{high}"
        raise DemoGenerationError(f"{name} must be an integer {span}, found {value!r}")
    return int(value)


def _stored_settings(path: Path) -> DemoSettings:
    """The settings recorded in the store at ``path``; ``DemoGenerationError`` if it has none."""
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    raw = attrs.get(SETTINGS_ATTR)
    if not isinstance(raw, dict):
        raise DemoGenerationError(f"{path}: not a Meta-World demo store made by 'diffpolicy-data "
                                  f"generate' (no '{SETTINGS_ATTR}' attribute); choose another --out")
    try:
        return DemoSettings(**raw)
    except TypeError as e:
        raise DemoGenerationError(f"{path}: attribute '{SETTINGS_ATTR}' is not a settings record "
                                  f"({e}): {raw!r}") from e


def _create_store(path: Path, settings: DemoSettings) -> None:
    """An empty store with ``settings`` at ``path``, made under a temporary name and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.creating-{os.getpid()}"
    ReplayBuffer.create(tmp)
    zarr.open_group(str(tmp), mode="r+").attrs[SETTINGS_ATTR] = asdict(settings)
    os.rename(tmp, path)


def _open_store(path: Path, settings: DemoSettings) -> ReplayBuffer:
    """Open (or create) the store for ``settings``, refusing one made with other settings."""
    if not path.exists():
        _create_store(path, settings)
    rb = ReplayBuffer.open(path, mode="a")   # rolls back an append a killed run left half-done
    problem = settings.mismatch(_stored_settings(path), path, "generated", "this command")
    if problem:
        raise DemoGenerationError(problem)
    if rb.n_episodes:
        rb.check_schema(SCHEMA, what=f"a Meta-World demo store")
    return rb


def _stored_seeds(rb: ReplayBuffer) -> np.ndarray:
    """(E,) int64: the reset seed of each stored episode."""
    if rb.n_episodes == 0:
        return np.zeros(0, dtype=np.int64)
    return rb.read("episode_seed")[rb.episode_ends - 1]


def generate_demos(task: str, n_episodes: int, out: str | Path, seed_start: int = 0,
                   max_steps: int = DEFAULT_MAX_STEPS, post_success_steps: int = POST_SUCCESS_STEPS,
                   progress: bool = True,
                   max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES) -> GenerationReport:
    """Fill the store ``out`` with ``n_episodes`` successful scripted episodes of ``task``.

    Resumes an existing store made with the same settings (task, seed_start,
    max_steps, post_success_steps, metaworld and mujoco versions); a store that
    already holds ``n_episodes`` or more is left as it is.
    Raises:
        DemoGenerationError: unknown task, bad numbers, a store with other settings, or
            ``max_consecutive_failures`` seeds in a row that failed (the episodes stored
            before stay).
    """
    try:
        versions = mw_env.metaworld_versions()
    except ImportError as e:
        raise DemoGenerationError(str(e)) from e
    if task not in demo_task_names():
        raise _unknown_task(task)
    n_episodes = _check_int("--episodes", n_episodes, 1)
    seed_start = _check_int("--seed-start", seed_start, 0, 2**63 - 1)
    max_steps = _check_int("--max-steps", max_steps, 1, 500)   # Meta-World's env stops at 500
    post_success_steps = _check_int("--post-success-steps", post_success_steps, 0)
    max_consecutive_failures = _check_int("max_consecutive_failures", max_consecutive_failures, 1)
    out = Path(out)
    settings = DemoSettings(task, seed_start, max_steps, post_success_steps,
                            versions["metaworld"], versions["mujoco"])
    rb = _open_store(out, settings)
    seeds = _stored_seeds(rb)
    seed = int(seeds.max()) + 1 if len(seeds) else seed_start
    report = GenerationReport(out, settings, rb.n_episodes, 0)
    t0 = time.perf_counter()
    if rb.n_episodes < n_episodes:
        from tqdm import tqdm
        env = mw_env.MetaWorldEnv(task, terminate_on_success=False)
        bar = tqdm(total=n_episodes, initial=rb.n_episodes, desc=task, unit="ep", disable=not progress)
        try:
            while rb.n_episodes < n_episodes:
                ep = run_episode(env, scripted_policy(task), seed, max_steps, post_success_steps)
                if ep.success:
                    rb.add_episode({"state": ep.state, "action": ep.action,
                                    "episode_seed": np.full(len(ep.state), seed, dtype=np.int64)})
                    report.added += 1
                    report.success_steps.append(int(ep.success_step))
                else:
                    report.failed_seeds.append(seed)
                    streak = report.failed_seeds[-max_consecutive_failures:]
                    if len(streak) == max_consecutive_failures and streak[0] == seed - len(streak) + 1:
                        raise DemoGenerationError(
                            f"{out}: {len(streak)} seeds in a row ({streak[0]}..{seed}) failed: the "
                            f"scripted policy does not solve {task} within max_steps={max_steps} (and "
                            f"hold it {post_success_steps} steps); the store keeps its {rb.n_episodes} "
                            f"episodes")
                bar.set_postfix(seed=seed, skipped=len(report.failed_seeds), refresh=False)
                bar.update(int(ep.success))
                seed += 1
        finally:
            bar.close()
            env.close()
    seeds = _stored_seeds(rb)
    report.n_episodes = rb.n_episodes
    report.first_seed = int(seeds.min()) if len(seeds) else None
    report.last_seed = int(seeds.max()) if len(seeds) else None
    report.seconds = time.perf_counter() - t0
    return report
