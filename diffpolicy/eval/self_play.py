"""Self-play Push-T demonstrations: a trained policy's successful episodes, as a demo store.

``record_successes("best.pt", "selfplay.zarr", range(400000, 401000))`` loads a
Push-T policy (a training checkpoint or a pretrained folder), rolls it out on
each reset seed of the range (``run_rollouts``, ``batch`` episodes per call,
``n_envs`` side by side), keeps the episodes that reach the task's success
(Push-T: coverage > 0.95) and appends them to a zarr store laid out like the
human demo store, so that ``diffpolicy-train task=pusht_keypoints
task.dataset_path=selfplay.zarr`` (or ``pusht_state``) trains on it unchanged.
``include_demos=True`` starts the store as a copy of the human demos (their
episodes first), so one ``task.dataset_path`` trains on both.

Store layout (zarr 2, the Push-T set's keys, per step ``t`` of an episode)::

    data/state          (N, 5)    float32  agent x, y, block x, y, angle mod 2 pi, before action t
    data/keypoint       (N, 9, 2) float32  the block's keypoints, before action t
    data/n_contacts     (N, 1)    float32  contacts reported with that observation
    data/action         (N, 2)    float32  the target the env received at t (after the stride)
    data/episode_seed   (N,)      int64    reset seed of the step's episode (human demo i: i)
    meta/episode_ends   (E,)      int64
    .zattrs["diffpolicy_self_play"]           settings (SelfPlaySettings) + checkpoint path
    .zattrs["diffpolicy_self_play_progress"]  next_seed, tried, kept, n_demo_episodes

Nothing else (no ``img``): the image task cannot train from it.  For a
keypoints policy, ``keypoint`` and ``state[0:2]`` give back exactly the
observation the policy saw (in float32).  Replaying ``action`` from
``reset(seed=episode_seed)`` goes through the stored states.

Resuming: every batch's successes are appended episode by episode (each one
rolled back whole if the run is killed mid-way), then the progress is written.
Re-running with the same settings and the same START continues at the first
seed not yet tried (a later END extends the store); a store made with other
settings is refused.  The checkpoint is identified by its SHA-256 (a moved copy
resumes; its path is recorded for information).  ``n_envs`` and ``batch`` are
not settings: they change which noise draws each episode gets, not the
policy's distribution.  A new store is built under a temporary name and renamed
into place, so ``out`` never exists without its settings.  One writer per
store at a time.

Seeds must avoid the test seeds 100000..100499 and the selection seeds
200000..200999 (a policy trained on their successes would be scored on its own
training episodes); 400000 and up is the convention.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from diffpolicy import paths
from diffpolicy.datasets.errors import DatasetError
from diffpolicy.datasets.pusht import PUSHT_SCHEMA
from diffpolicy.datasets.replay_buffer import ArraySpec, ReplayBuffer
from diffpolicy.datasets.store_settings import StoreSettings
from diffpolicy.envs.geometry import keypoints_from_state
from diffpolicy.envs.pusht import PushTEnv
from diffpolicy.eval.rollout import EpisodeSteps, run_rollouts
from diffpolicy.eval.task_env import make_env
from diffpolicy.policy.diffusion_policy import SAMPLERS
from diffpolicy.policy.run_config import ConfigError, TaskConfig

__all__ = ["record_successes", "record_policy_successes", "episode_arrays", "checkpoint_sha256", "check_pusht_task",
           "check_seeds", "SelfPlaySettings", "SelfPlayReport", "SelfPlayError",
           "SETTINGS_ATTR", "PROGRESS_ATTR", "SCHEMA", "RESERVED_SEEDS", "DEFAULT_BATCH"]

SETTINGS_ATTR = "diffpolicy_self_play"
PROGRESS_ATTR = "diffpolicy_self_play_progress"
FORMAT = 1
DEFAULT_BATCH = 50
DEMO_KEYS = ("state", "keypoint", "n_contacts", "action")       # copied from the human demo store
SCHEMA = {**{k: ArraySpec(PUSHT_SCHEMA[k].trailing_shape) for k in DEMO_KEYS},
          "episode_seed": ArraySpec((), ("int64",))}
# (first, last) seeds no self-play run may use: evaluation's test seeds, checkpoint selection's
RESERVED_SEEDS = {"test": (100000, 100499), "selection": (200000, 200999)}
MAX_SEED = 2**32 - 1                                             # PushTEnv.reset's limit


class SelfPlayError(DatasetError):
    """Bad self-play input (checkpoint, task, seeds, numbers) or a store made with other settings."""


@dataclass(frozen=True)
class SelfPlaySettings(StoreSettings):
    """What decides a store's episodes; all must match to extend an existing store."""
    checkpoint_sha256: str
    task: str
    use_ema: bool
    seed_start: int
    n_action_steps: int
    action_stride: int
    sampler: str
    num_inference_steps: int
    max_steps: int
    sampling_seed: int
    include_demos: bool
    format: int = FORMAT


@dataclass
class SelfPlayReport:
    """What a run did: the store's totals (over every run) and this run's share."""
    path: Path
    settings: SelfPlaySettings
    checkpoint: str
    n_demo_episodes: int                 # human demos at the start of the store (include_demos)
    tried: int                           # rollout seeds tried, all runs (seed_start .. next_seed - 1)
    kept: int                            # successful rollouts stored, all runs
    kept_lengths: list[int] = field(default_factory=list)   # steps of each stored rollout episode
    demo_mean_length: float | None = None    # mean human demo length (None: the demo store is not here)
    tried_now: int = 0
    kept_now: int = 0
    seconds: float = 0.0

    @property
    def success_rate(self) -> float | None:
        return self.kept / self.tried if self.tried else None

    def summary(self) -> str:
        s = self.settings
        last = s.seed_start + self.tried - 1
        seeds = f"seeds {s.seed_start}..{last}" if self.tried else "no seeds yet"
        rate = "n/a" if self.success_rate is None else f"{100 * self.success_rate:.1f} %"
        lines = [f"{self.path}: {self.kept} successful episodes of {self.tried} tried ({seeds}; "
                 f"success rate {rate}), {self.n_demo_episodes} human demos before them",
                 f"this run: tried {self.tried_now}, kept {self.kept_now}, {self.seconds:.1f} s",
                 f"policy: {self.checkpoint} (sha256 {s.checkpoint_sha256[:12]}), task {s.task}, "
                 f"{'EMA' if s.use_ema else 'raw'} weights, {s.n_action_steps} actions per call, "
                 f"action stride {s.action_stride}, {s.sampler} {s.num_inference_steps} steps, "
                 f"max {s.max_steps} steps"]
        kept = f"{np.mean(self.kept_lengths):.1f}" if self.kept_lengths else "n/a"
        demos = "n/a (demo store not found)" if self.demo_mean_length is None else f"{self.demo_mean_length:.1f}"
        lines.append(f"mean episode length: kept {kept} steps, human demos {demos} steps")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- input checks
def check_seeds(seeds: Any) -> range:
    """``seeds`` as a non-empty ``range`` of step 1 inside ``0 .. 2**32 - 1`` that avoids
    :data:`RESERVED_SEEDS`; else :class:`SelfPlayError`."""
    if isinstance(seeds, tuple) and len(seeds) == 2:
        seeds = range(*seeds)
    if not isinstance(seeds, range) or seeds.step != 1 or len(seeds) == 0:
        raise SelfPlayError(f"seeds must be a non-empty range of consecutive seeds START:END (END "
                            f"exclusive), e.g. range(400000, 401000), found {seeds!r}")
    if seeds.start < 0 or seeds.stop - 1 > MAX_SEED:
        raise SelfPlayError(f"seeds must lie in 0..{MAX_SEED} (Push-T reset seeds), found "
                            f"{seeds.start}..{seeds.stop - 1}")
    for what, (lo, hi) in RESERVED_SEEDS.items():
        if seeds.start <= hi and lo <= seeds.stop - 1:
            raise SelfPlayError(f"seeds {seeds.start}..{seeds.stop - 1} overlap the {what} seeds {lo}..{hi}, "
                                f"which must stay unseen by training; use seeds from 400000 up")
    return seeds


def _check_int(name: str, value: Any, low: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise SelfPlayError(f"{name} must be an integer >= {low}{' or None' if allow_none else ''}, "
                            f"found {value!r}")
    return int(value)


def check_pusht_task(task: TaskConfig) -> None:
    """Refuse a task whose rollouts are not Push-T, or whose policy this store could not serve."""
    if task.env_id is None:
        raise SelfPlayError(f"task {task.name!r} names no environment (task.env_id is null): "
                            f"its policy cannot be rolled out")
    if task.cameras:
        raise SelfPlayError(f"task {task.name!r} observes cameras {sorted(task.cameras)}; self-play stores "
                            f"hold the low-dim keys only ({', '.join(SCHEMA)}): use a pusht_keypoints or "
                            f"pusht_state policy")
    if task.action_dim != 2:
        raise SelfPlayError(f"task {task.name!r} has action_dim={task.action_dim}; Push-T's action is the "
                            f"2-d agent target")
    try:
        env = make_env(task)
    except ConfigError as exc:
        raise SelfPlayError(f"cannot build task {task.name!r}'s env: {exc}") from exc
    try:
        if not isinstance(env.unwrapped, PushTEnv):
            raise SelfPlayError(f"task {task.name!r} rolls out in {task.env_id!r} "
                                f"({type(env.unwrapped).__name__}), not Push-T: self-play writes Push-T "
                                f"demo stores")
    finally:
        env.close()


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint file; of a pretrained folder (or its config.json /
    model.safetensors): of its config.json's bytes followed by model.safetensors'."""
    from diffpolicy.policy.pretrained import CONFIG_NAME, WEIGHTS_NAME, is_pretrained_path, pretrained_folder

    p = Path(path)
    if not p.exists():
        raise SelfPlayError(f"checkpoint not found: {p}")
    if is_pretrained_path(p):
        folder = pretrained_folder(p)
        files = [folder / CONFIG_NAME, folder / WEIGHTS_NAME] if folder is not None else [p]
    else:
        files = [p]
    h = hashlib.sha256()
    for f in files:
        if not f.is_file():
            raise SelfPlayError(f"checkpoint {p}: {f} not found")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------- episodes -> arrays
def episode_arrays(steps: EpisodeSteps, seed: int) -> dict[str, np.ndarray]:
    """One recorded Push-T episode as store arrays (``T`` steps, layout in the module docstring).

    ``state`` and ``keypoint`` come from each step's info (``agent_pos``, ``block_pose``), as
    the env computes its own observations; ``n_contacts`` from its info too.
    """
    need = ("agent_pos", "block_pose", "n_contacts")
    for t, info in enumerate(steps.info):
        missing = [k for k in need if k not in info]
        if missing:
            raise SelfPlayError(f"seed {seed}, step {t}: the env's info lacks {missing} (has {sorted(info)}); "
                                f"not a Push-T env")
    agent = np.asarray([info["agent_pos"] for info in steps.info], dtype=np.float64)        # (T, 2)
    block = np.asarray([info["block_pose"] for info in steps.info], dtype=np.float64)       # (T, 3)
    state = np.concatenate([agent, block[:, :2], (block[:, 2:] % (2 * np.pi))], axis=1)   # as PushTEnv.state()
    action = np.asarray(steps.action)
    if action.ndim != 2 or action.shape[1] != 2:
        raise SelfPlayError(f"seed {seed}: actions have shape {action.shape}, expected (T, 2)")
    return {"state": state.astype(np.float32),
            "keypoint": keypoints_from_state(block).astype(np.float32),
            "n_contacts": np.asarray([[info["n_contacts"]] for info in steps.info], dtype=np.float32),
            "action": action.astype(np.float32),
            "episode_seed": np.full(len(action), seed, dtype=np.int64)}


# ---------------------------------------------------------------------------- the store
def _read_attrs(path: Path) -> dict:
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception as e:  # zarr raises several types for a missing/garbled group
        raise SelfPlayError(f"{path}: not a readable zarr group ({type(e).__name__}: {e}); choose "
                            f"another --out") from e


def _stored_settings(path: Path) -> tuple[SelfPlaySettings, dict]:
    """``(settings, progress)`` recorded in the store at ``path``; ``SelfPlayError`` without them."""
    attrs = _read_attrs(path)
    raw, progress = attrs.get(SETTINGS_ATTR), attrs.get(PROGRESS_ATTR)
    if not isinstance(raw, dict) or not isinstance(progress, dict):
        raise SelfPlayError(f"{path}: not a self-play store made by 'diffpolicy-data self-play' (no "
                            f"'{SETTINGS_ATTR}' attribute); choose another --out")
    fields = {k: v for k, v in raw.items() if k != "checkpoint"}
    try:
        return SelfPlaySettings(**fields), progress
    except TypeError as e:
        raise SelfPlayError(f"{path}: attribute '{SETTINGS_ATTR}' is not a settings record ({e}): "
                            f"{raw!r}") from e


def _write_attrs(path: Path, settings: SelfPlaySettings | None = None, checkpoint: str | None = None,
                 progress: dict | None = None) -> None:
    """Set the settings and/or progress attributes (while no ReplayBuffer of ``path`` is open:
    an open one would write its older copy of the attributes back)."""
    root = zarr.open_group(str(path), mode="r+")
    if settings is not None:
        root.attrs[SETTINGS_ATTR] = {**asdict(settings), "checkpoint": checkpoint}
    if progress is not None:
        root.attrs[PROGRESS_ATTR] = progress


def _copy_demos(demo_store: Path, rb: ReplayBuffer) -> int:
    """Append every episode of the human demo store (keys :data:`DEMO_KEYS`, ``episode_seed`` =
    its index) to ``rb``; returns the number of episodes."""
    src = ReplayBuffer.open(demo_store, mode="r")
    if src.n_episodes == 0:
        raise SelfPlayError(f"{demo_store}: the human demo store has no episodes")
    src.check_schema({k: PUSHT_SCHEMA[k] for k in DEMO_KEYS}, what="a copy of the Push-T demos")
    data = src.load_all(list(DEMO_KEYS))
    start = 0
    for i, end in enumerate(src.episode_ends):
        ep = {k: v[start:end].astype(np.float32) for k, v in data.items()}
        ep["episode_seed"] = np.full(end - start, i, dtype=np.int64)     # reset(seed=i) starts demo i
        rb.add_episode(ep)
        start = int(end)
    return src.n_episodes


def _create_store(path: Path, settings: SelfPlaySettings, checkpoint: str, demo_store: Path | None) -> None:
    """A store for ``settings`` at ``path`` (with the human demos when ``demo_store``), built
    under a temporary name and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.creating-{os.getpid()}"
    try:
        rb = ReplayBuffer.create(tmp)
        n_demos = _copy_demos(demo_store, rb) if demo_store is not None else 0
        del rb
        _write_attrs(tmp, settings, checkpoint, {"next_seed": settings.seed_start, "tried": 0, "kept": 0,
                                                 "n_demo_episodes": n_demos})
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _open_store(path: Path, settings: SelfPlaySettings, checkpoint: str,
                demo_store: Path) -> tuple[ReplayBuffer, int, dict]:
    """Open (or create: with a copy of ``demo_store`` when ``settings.include_demos``) the store
    for ``settings``; returns ``(store, n_demo_episodes, recorded progress)``.  Refuses a store of other
    settings, and the human demo store itself."""
    if path.resolve() == demo_store.resolve():
        raise SelfPlayError(f"--out {path} is the human demo store; self-play never writes there")
    if not path.exists():
        _create_store(path, settings, checkpoint, demo_store if settings.include_demos else None)
    stored, progress = _stored_settings(path)        # read-only: nothing written to a foreign store
    problem = settings.mismatch(stored, path, "made", "this run")
    if problem:
        raise SelfPlayError(problem)
    rb = ReplayBuffer.open(path, mode="a")   # rolls back an append a killed run left half-done
    n_demos = int(progress.get("n_demo_episodes", 0))
    if rb.n_episodes:
        rb.check_schema(SCHEMA, what="a self-play store")
    if rb.n_episodes < n_demos:
        raise SelfPlayError(f"{path}: the store holds {rb.n_episodes} episodes but records "
                            f"{n_demos} human demos at its start; it is damaged, choose another --out")
    return rb, n_demos, progress


def _next_seed(rb: ReplayBuffer, n_demos: int, progress: dict, seed_start: int) -> int:
    """The first seed not tried yet: after the recorded progress, and after every stored
    rollout (a run killed between its appends and its progress record)."""
    nxt = max(seed_start, int(progress.get("next_seed", seed_start)))
    if rb.n_episodes > n_demos:
        seeds = rb.read("episode_seed", int(rb.episode_ends[n_demos - 1]) if n_demos else 0)
        nxt = max(nxt, int(seeds.max()) + 1)
    return nxt


def _demo_mean_length(path: Path | None) -> float | None:
    if path is None or not path.exists():
        return None
    try:
        lengths = ReplayBuffer.open(path, mode="r").episode_lengths
    except DatasetError:
        return None
    return float(lengths.mean()) if len(lengths) else None


# ---------------------------------------------------------------------------- the runs
def record_policy_successes(policy, task: TaskConfig, out: str | Path, seeds: range, *,
                            checkpoint: str, checkpoint_sha: str, use_ema: bool = True,
                            include_demos: bool = False, demo_store: str | Path | None = None,
                            n_envs: int | None = None, batch: int = DEFAULT_BATCH,
                            max_steps: int | None = None, sampler: str | None = None,
                            num_inference_steps: int | None = None, sampling_seed: int = 0,
                            device: str | torch.device = "cpu", progress: bool = True) -> SelfPlayReport:
    """Roll ``policy`` (any object ``run_rollouts`` drives: ``config`` with ``n_obs_steps``,
    ``n_action_steps``, ``action_stride``, ``sampler``, ``num_inference_steps``; ``predict_action``)
    out on ``seeds`` of the Push-T ``task`` and append its successful episodes to ``out``.

    ``checkpoint`` / ``checkpoint_sha`` name the policy in the store's settings.  The
    execution settings are read from ``policy.config`` (``sampler`` / ``num_inference_steps``
    None: the policy's).  See :func:`record_successes` for the rest.
    """
    seeds = check_seeds(seeds)
    check_pusht_task(task)
    batch = _check_int("batch", batch, 1)
    n_envs = _check_int("n_envs", n_envs, 1, allow_none=True)
    max_steps = _check_int("max_steps", max_steps if max_steps is not None else task.max_episode_steps, 1)
    sampling_seed = _check_int("sampling_seed", sampling_seed, 0)
    num_inference_steps = _check_int("num_inference_steps", num_inference_steps, 1, allow_none=True)
    cfg = policy.config
    if (sampler or cfg.sampler) not in SAMPLERS:
        raise SelfPlayError(f"sampler must be one of {SAMPLERS} or None (the policy's), found {sampler!r}")
    settings = SelfPlaySettings(
        checkpoint_sha256=checkpoint_sha, task=task.name, use_ema=bool(use_ema), seed_start=seeds.start,
        n_action_steps=int(cfg.n_action_steps), action_stride=int(getattr(cfg, "action_stride", 1)),
        sampler=str(sampler or cfg.sampler), num_inference_steps=int(num_inference_steps or cfg.num_inference_steps),
        max_steps=max_steps, sampling_seed=sampling_seed, include_demos=bool(include_demos))
    out = Path(out)
    demos = Path(demo_store) if demo_store is not None else paths.pusht_zarr_path()
    if include_demos and not demos.exists():
        raise SelfPlayError(f"include_demos: the human demo store {demos} is not here (set "
                            f"${paths.DATA_ENV_VAR} or give demo_store / --demo-store)")
    rb, n_demos, stored_progress = _open_store(out, settings, checkpoint, demos)
    nxt = _next_seed(rb, n_demos, stored_progress, seeds.start)
    del rb
    todo = range(nxt, seeds.stop)
    kept_now, t0 = 0, time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(total=seeds.stop - seeds.start, initial=min(nxt, seeds.stop) - seeds.start, desc="self-play",
               unit="ep", dynamic_ncols=True, disable=not progress)
    try:
        for start in range(todo.start, todo.stop, batch):
            chunk = list(range(start, min(start + batch, todo.stop)))
            result = run_rollouts(policy, task, chunk, max_steps=max_steps, n_envs=n_envs, device=device,
                                  sampling_seed=sampling_seed + start, sampler=settings.sampler,
                                  num_inference_steps=settings.num_inference_steps, progress=False,
                                  record_steps=True)
            keep = [episode_arrays(result.steps[e.seed], e.seed) for e in result.episodes if e.success]
            rb = ReplayBuffer.open(out, mode="a")
            for ep in keep:
                rb.add_episode(ep)
            n_rollouts = rb.n_episodes - n_demos
            del rb
            _write_attrs(out, progress={"next_seed": chunk[-1] + 1, "tried": chunk[-1] + 1 - seeds.start,
                                        "kept": n_rollouts, "n_demo_episodes": n_demos})
            kept_now += len(keep)
            bar.update(len(chunk))
            bar.set_postfix(kept=n_rollouts, refresh=False)
    finally:
        bar.close()
    rb = ReplayBuffer.open(out, mode="r")
    lengths = rb.episode_lengths
    _, final = _stored_settings(out)
    return SelfPlayReport(
        path=out, settings=settings, checkpoint=checkpoint, n_demo_episodes=n_demos,
        tried=max(0, int(final.get("next_seed", seeds.start)) - seeds.start), kept=rb.n_episodes - n_demos,
        kept_lengths=[int(n) for n in lengths[n_demos:]],
        demo_mean_length=(float(lengths[:n_demos].mean()) if n_demos else _demo_mean_length(demos)),
        tried_now=len(todo), kept_now=kept_now, seconds=time.perf_counter() - t0)


def record_successes(checkpoint: str | Path, out: str | Path, seeds: range, *, include_demos: bool = False,
                     demo_store: str | Path | None = None, n_envs: int | None = None,
                     batch: int = DEFAULT_BATCH, action_stride: int | None = None,
                     n_action_steps: int | None = None, sampler: str | None = None,
                     num_inference_steps: int | None = None, use_ema: bool = True,
                     max_steps: int | None = None, sampling_seed: int = 0,
                     device: str | torch.device = "cpu", progress: bool = True) -> SelfPlayReport:
    """Roll the Push-T policy of ``checkpoint`` out on ``seeds`` and store its successes in ``out``.

    Args:
        checkpoint: a training checkpoint (``.pt``) or a pretrained folder, of a Push-T
            low-dim task (pusht_keypoints, pusht_state).
        out: the store (created, or continued when made with the same settings).
        seeds: ``range(START, END)`` of reset seeds, clear of :data:`RESERVED_SEEDS`.
        include_demos: a new store starts with the human demos of ``demo_store`` (default:
            ``diffpolicy.paths.pusht_zarr_path()``), read-only there.
        n_envs / batch: envs side by side / episodes per rollout call (and per commit).
        action_stride / n_action_steps: execution (None: the checkpoint's), as diffpolicy-eval.
        sampler / num_inference_steps: None: the policy's.
        use_ema: the EMA weights (default) or the raw ones.
        max_steps: env steps an episode has to succeed (None: the task's, 300).
        sampling_seed: the sampler's noise; batch ``b`` starting at seed ``s`` uses ``sampling_seed + s``.
        device: where the policy runs ("cpu", "cuda", "auto", ...).
    Returns a :class:`SelfPlayReport`.
    Raises:
        SelfPlayError (a ``DatasetError``): bad seeds or numbers, a non-Push-T task, a store of
            other settings; CheckpointError / ConfigError for an unreadable checkpoint.
    """
    from diffpolicy.device import resolve_device
    from diffpolicy.eval.evaluate import checkpoint_task, load_policy
    from diffpolicy.policy.diffusion_policy import with_execution

    seeds = check_seeds(seeds)      # before anything is loaded
    path = Path(checkpoint)
    sha = checkpoint_sha256(path)
    device = resolve_device(device) if isinstance(device, str) else device
    policy, ckpt = load_policy(path, use_ema=use_ema, device=device)
    task = checkpoint_task(ckpt)
    check_pusht_task(task)
    try:
        policy.config = with_execution(policy.config, n_action_steps, action_stride)
    except ValueError as exc:
        raise SelfPlayError(f"{path}: {exc}") from None
    steps = policy.config.num_train_timesteps
    if num_inference_steps is not None and not 1 <= num_inference_steps <= steps:
        raise SelfPlayError(f"num_inference_steps must be in [1, {steps}] (the checkpoint's "
                            f"num_train_timesteps), found {num_inference_steps}")
    return record_policy_successes(
        policy, task, out, seeds, checkpoint=str(path.resolve()), checkpoint_sha=sha, use_ema=use_ema,
        include_demos=include_demos, demo_store=demo_store, n_envs=n_envs, batch=batch, max_steps=max_steps,
        sampler=sampler, num_inference_steps=num_inference_steps, sampling_seed=sampling_seed, device=device,
        progress=progress)
