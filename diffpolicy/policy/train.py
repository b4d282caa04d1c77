"""Training loop: data, AdamW + warm-up cosine, EMA, checkpoints, logs, DDP.

``train(cfg)`` takes the composed config (a Hydra ``DictConfig`` or a plain
dict, see :mod:`diffpolicy.policy.run_config`) and returns a :class:`TrainResult`.
Run it on several processes with ``torchrun --nproc_per_node=N -m
diffpolicy.cli.train ...``: each process takes ``batch_size / N`` windows of
every global batch, DDP averages the gradients (gloo on CPU, NCCL on GPU), and
only rank 0 writes files.

What a run writes to ``run_dir``::

    .lock                  pid and start time of the run holding the folder (policy/run_lock.py;
                           a second run into the folder is refused; removed at the end)
    config.yaml            the resolved config
    metrics.csv            step, epoch, loss, loss_steps, lr, samples/s, val loss, eval score ...
                           (loss: the mean over the loss_steps steps since the previous row; fewer
                           than log_every in the first row after a resume and at the end)
    tb/                    TensorBoard events (only when tensorboard is installed)
    checkpoints/latest.pt  every ``checkpoint_every`` steps and at the end (leftover
                           ``*.tmp-<pid>`` files of killed writes are removed at start)
    checkpoints/best_*.pt  best ``keep_best`` by in-training eval score
    training.png           loss / lr / score curves

Determinism: the window order of epoch ``e`` is a permutation seeded by
``(seed, e)`` and checkpoints hold every RNG state, so a resumed run repeats
the uninterrupted one step for step.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from diffpolicy.datasets import DemoData, demo_loader, fit_normalizer, load_demos
from diffpolicy.device import resolve_device
from diffpolicy.eval_mode import eval_mode
from diffpolicy.policy.checkpoint import (FORMAT, CheckpointDir, CheckpointError, load_checkpoint,
                                          rng_state, set_rng_state)
from diffpolicy.policy.diffusion_policy import EXECUTION_KEYS, DiffusionPolicy
from diffpolicy.policy.ema import EMA
from diffpolicy.policy.init_from import initial_weights, range_overshoot
from diffpolicy.policy.run_config import (ConfigError, TrainConfig, check_train_config, dataset_path, demo_spec,
                                         policy_config, to_plain_config)
from diffpolicy.policy.run_lock import RunLock

CSV_FIELDS = ("step", "epoch", "loss", "loss_steps", "lr", "samples_per_s", "val_loss", "eval_score",
              "eval_success", "minutes")


@dataclass
class TrainResult:
    """What :func:`train` hands back (``policy`` and ``ema`` stay on their device)."""

    policy: DiffusionPolicy
    ema: EMA
    step: int
    total_steps: int
    last_loss: float
    run_dir: Path
    minutes: float
    history: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------- set-up pieces


def _distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (1 process: 0, 1, 0)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def load_task_data(run: TrainConfig) -> DemoData:
    """Load the demos the task config names (its store, keys, dimensions; checked)."""
    return load_demos(dataset_path(run.task), demo_spec(run.task), name=run.task.name)


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LR factor: linear warm-up from 0 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
    return factor


def obs_noise_at(step: int, std: float, decay_frac: float, total_steps: int) -> float:
    """Observation-noise std at (0-based) ``step``: ``std`` decaying linearly to 0 at
    ``decay_frac * total_steps`` and 0 after: ``std * max(0, 1 - step / (decay_frac * total_steps))``."""
    if std == 0:
        return 0.0
    return std * max(0.0, 1.0 - step / (decay_frac * total_steps))


def epoch_order(n_windows: int, seed: int, epoch: int) -> torch.Tensor:
    """Window order of one epoch, identical on every process."""
    return torch.randperm(n_windows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


class MetricsLog:
    """Rank-0 records of a run: ``metrics.csv`` (and TensorBoard, if installed), resumable,
    and the run's messages in ``train.log`` (appended across resumes)."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = run_dir / "metrics.csv"
        self.text_path = run_dir / "train.log"
        rows = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self.rows: list[dict] = rows
        with open(self.path, "w", newline="") as f:     # rewrite without rows past the checkpoint
            writer = csv.DictWriter(f, CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
            self.tb = SummaryWriter(str(run_dir / "tb"))
        except Exception:  # noqa: BLE001 (tensorboard not installed)
            self.tb = None

    def write(self, row: dict) -> None:
        row = {k: row.get(k, "") for k in CSV_FIELDS}
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, CSV_FIELDS).writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and v != "":
                    self.tb.add_scalar(k, float(v), int(row["step"]))

    def note(self, message: str, bar=None) -> None:
        """Print ``message`` (through the progress bar, if one is drawn) and append it,
        time-stamped, to ``train.log``."""
        (bar.write if bar is not None else print)(message)
        with open(self.text_path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_metrics(rows: list[dict], path: Path) -> None:
    """Loss (log scale), validation loss and in-training eval score against the step."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in ("", None)]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    s, v = series("loss")
    axes[0].plot(s, v, lw=1, label="train (batch mean)")
    s, v = series("val_loss")
    if s:
        axes[0].plot(s, v, "o-", label="validation (EMA)")
    axes[0].set_yscale("log"); axes[0].set_xlabel("step"); axes[0].set_title("noise-prediction MSE")
    axes[0].legend()
    s, v = series("lr")
    axes[1].plot(s, v); axes[1].set_xlabel("step"); axes[1].set_title("learning rate")
    s, v = series("eval_score")
    if s:
        axes[2].plot(s, v, "o-", label="score (mean max reward)")
        s2, v2 = series("eval_success")
        axes[2].plot(s2, v2, "s--", label="success rate")
        axes[2].set_ylim(0, 1.02); axes[2].legend()
    else:
        axes[2].text(0.5, 0.5, "no in-training evaluation\n(training.eval_every = 0)",
                     ha="center", va="center", transform=axes[2].transAxes)
    axes[2].set_xlabel("step"); axes[2].set_title("rollouts (EMA)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- the loop
def choose_train_path(policy: DiffusionPolicy, batch: int, rank: int, world: int) -> None:
    """UNet path for training (``fast_unet: auto``): rank 0 measures, every rank follows."""
    if policy.config.fast_unet != "auto":
        return
    choice = [policy.choose_train_path(batch) if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(choice, src=0)
        if rank:
            policy.train_fast = bool(choice[0])
            policy.unet.set_fast(policy.train_fast)


def train(cfg: Any, progress: bool = True) -> TrainResult:
    """Train a Diffusion Policy as configured; see the module docstring."""
    run = check_train_config(to_plain_config(cfg))
    rank, world, local_rank = _distributed()
    if world > 1 and run.training.batch_size % world:
        raise ConfigError(f"training.batch_size ({run.training.batch_size}) must be divisible by the "
                          f"number of processes ({world})")
    device = resolve_device(run.device, local_rank)
    # One run per folder: rank 0, the one that writes, holds the lock from before it reads the
    # folder until the run ends; a second run is refused (ConfigError).  ``cleanup`` closes the
    # progress bar even when the run fails, so the error prints on a line of its own.
    with RunLock(run.run_dir) if rank == 0 else contextlib.nullcontext(), contextlib.ExitStack() as cleanup:
        return _train(cfg, run, rank, world, device, progress, cleanup)


def _train(cfg: Any, run: TrainConfig, rank: int, world: int, device: torch.device,
           progress: bool, cleanup: contextlib.ExitStack) -> TrainResult:
    t_cfg = run.training
    run_dir = Path(run.run_dir)
    ckpts = CheckpointDir(run_dir / "checkpoints", t_cfg.keep_best)
    pcfg = policy_config(run)

    # Everything that can be wrong with the input is checked before training starts.
    resume_ckpt = None
    if ckpts.latest.exists():
        if not run.resume:
            raise ConfigError(f"{run_dir} already holds a run ({ckpts.latest}); pass resume=true "
                              f"to continue it or choose another run_dir=")
        resume_ckpt = load_checkpoint(ckpts.latest, task=run.task.name)
        # execution settings (kernels, sampler, actions per call) change how the policy is run,
        # not what it learns: a run may resume under other defaults, and its checkpoints then
        # record the new ones; the actions per call set the training windows when pad_after is null.
        # Keys added since the checkpoint was written (e.g. loss) take their defaults.
        free = EXECUTION_KEYS - ({"n_action_steps"} if t_cfg.pad_after is None else set())
        diff = pcfg.differences(resume_ckpt["policy_config"], ignore=free)
        if diff:
            raise CheckpointError(f"{ckpts.latest} was saved with a different policy config "
                                  f"(differs in: {', '.join(diff)}); use another run_dir=")
    init_weights = None
    if t_cfg.init_from and resume_ckpt is None:
        init_weights = initial_weights(t_cfg.init_from, pcfg, run.task.name)
    data = load_task_data(run)

    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if t_cfg.num_threads:
        torch.set_num_threads(int(t_cfg.num_threads))

    # Same initial weights on every process, different noise afterwards.
    torch.manual_seed(run.seed)
    policy = DiffusionPolicy(pcfg, fit_normalizer(data))
    if init_weights is not None:
        policy.load_state_dict(init_weights)
    policy = policy.to(device)
    choose_train_path(policy, t_cfg.batch_size // world, rank, world)
    ema = EMA(policy, power=t_cfg.ema_power, max_value=t_cfg.ema_max)
    random.seed(run.seed + rank)
    np.random.seed(run.seed + rank)
    torch.manual_seed(run.seed * 7919 + rank)

    split = dict(val_ratio=run.task.val_ratio, seed=run.task.split_seed,
                 max_train_episodes=run.task.max_train_episodes, horizon=pcfg.horizon,
                 n_obs_steps=pcfg.n_obs_steps, n_action_steps=pcfg.n_action_steps, device=device,
                 frame_stride=run.task.frame_stride, pad_after=t_cfg.pad_after)
    loader = demo_loader(data, batch_size=t_cfg.batch_size, split="train", **split)
    val_loader = demo_loader(data, batch_size=256, split="val", shuffle=False, **split)
    n_windows = len(loader.windows)
    steps_per_epoch = n_windows // t_cfg.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"training.batch_size ({t_cfg.batch_size}) exceeds the number of "
                          f"training windows ({n_windows})")
    total_steps = t_cfg.max_steps or t_cfg.max_epochs * steps_per_epoch

    optimizer = torch.optim.AdamW(policy.parameters(), lr=t_cfg.lr, betas=tuple(t_cfg.adam_betas),
                                  weight_decay=t_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(t_cfg.warmup_steps, total_steps))
    step = 0
    if resume_ckpt is not None:
        policy.load_state_dict(resume_ckpt["model"])
        ema.load_state_dict(resume_ckpt["ema"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        step = int(resume_ckpt["step"])
        states = resume_ckpt["rng"]
        if len(states) == world:
            set_rng_state(states[rank])
    model = policy
    if world > 1:
        model = DistributedDataParallel(policy, device_ids=[device.index] if device.type == "cuda" else None)

    log = None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        from omegaconf import OmegaConf  # noqa: PLC0415
        resolved = {**to_plain_config(cfg)}
        resolved.pop("hydra", None)
        OmegaConf.save(OmegaConf.create(resolved), run_dir / "config.yaml")
        log = MetricsLog(run_dir, step if resume_ckpt is not None else None)
        removed, freed = ckpts.remove_temp_files()    # safe: the lock keeps other writers out
        if removed:
            log.note(f"[checkpoints] removed {removed} leftover temporary checkpoint "
                     f"file{'s' if removed > 1 else ''} (*.tmp-<pid>, {freed:,} bytes) from {ckpts.folder}")
        log.note(f"[train] {run.task.name}: {data.n_episodes} episodes, {n_windows} training windows, "
                 f"policy {sum(p.numel() for p in policy.parameters()) / 1e6:.2f} M parameters, "
                 f"{total_steps} steps ({steps_per_epoch} per epoch), {world} process(es) on {device}"
                 + (f", resuming at step {step}" if step else ""))
        if init_weights is not None:
            over = {k: v for k, v in range_overshoot(policy.normalizer, data).items() if v > 0.05}
            log.note(f"[train] starting from the weights and normaliser of {t_cfg.init_from}"
                     + ("".join(f"; {k} leaves its normalised range by {v:.2f}" for k, v in over.items())))

    def checkpoint(metrics: dict) -> dict:
        states = [None] * world
        if world > 1:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        return {"format": FORMAT, "task": run.task.name, "config": to_plain_config(cfg),
                "policy_config": pcfg.to_dict(), "model": policy.state_dict(),
                "ema": ema.state_dict(), "normalizer": policy.normalizer.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "epoch": step // steps_per_epoch, "rng": states, "metrics": metrics}

    bar = None
    if rank == 0 and progress:
        from tqdm import tqdm  # noqa: PLC0415
        bar = cleanup.enter_context(tqdm(total=total_steps, initial=step, desc="train", dynamic_ncols=True))
    per_rank = t_cfg.batch_size // world
    t_start, t_window, n_window = time.perf_counter(), time.perf_counter(), 0
    minutes_before = float(resume_ckpt["metrics"].get("minutes", 0.0)) if resume_ckpt else 0.0
    loss_sum, loss_n, last_loss, order, order_epoch = 0.0, 0, float("nan"), None, -1
    stop = False
    model.train()
    while step < total_steps and not stop:
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(n_windows, run.seed, epoch), epoch
        ids = order[pos * t_cfg.batch_size:(pos + 1) * t_cfg.batch_size][rank * per_rank:(rank + 1) * per_rank]
        batch = to_device(loader.sample_batch(ids), device)
        loss = model(batch, obs_noise_std=obs_noise_at(step, t_cfg.obs_noise_std, t_cfg.obs_noise_decay_frac,
                                                       total_steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t_cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(policy.parameters(), t_cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        ema.update(policy)
        step += 1
        last_loss = float(loss.detach())
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"training loss became {last_loss} at step {step}; "
                                     f"lower training.lr or set training.grad_clip")
        loss_sum, loss_n, n_window = loss_sum + last_loss, loss_n + 1, n_window + t_cfg.batch_size
        if bar is not None:
            bar.update(1)
        row: dict = {}
        if step % t_cfg.log_every == 0 or step == total_steps:
            mean_loss = torch.tensor([loss_sum / loss_n], device=device)
            elapsed = time.perf_counter() - t_start
            flag = torch.tensor([float(t_cfg.max_minutes is not None and elapsed / 60 >= t_cfg.max_minutes)],
                                device=device)
            if world > 1:
                dist.all_reduce(mean_loss)
                mean_loss /= world
                dist.broadcast(flag, 0)
            stop = bool(flag.item())
            sps = n_window / max(1e-9, time.perf_counter() - t_window)
            row = {"step": step, "epoch": round(step / steps_per_epoch, 3),
                   "loss": f"{mean_loss.item():.6f}", "loss_steps": loss_n,
                   "lr": f"{scheduler.get_last_lr()[0]:.3e}",
                   "samples_per_s": f"{sps:.1f}", "minutes": f"{minutes_before + elapsed / 60:.3f}"}
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss.item():.4f}", lr=row["lr"], samples_s=f"{sps:.0f}")
            loss_sum, loss_n, n_window, t_window = 0.0, 0, 0, time.perf_counter()
        if t_cfg.val_every and (step % t_cfg.val_every == 0 or step == total_steps) and len(val_loader.windows):
            row.setdefault("step", step)
            row["val_loss"] = f"{validation_loss(ema.averaged, val_loader, device):.6f}"
        score = None
        # decided alike on every rank: only rank 0 evaluates, but all ranks then checkpoint
        # together (checkpoint() gathers every rank's RNG state)
        evaluated = bool(t_cfg.eval_every and (step % t_cfg.eval_every == 0 or step == total_steps))
        if evaluated:
            if rank == 0:
                score = _in_training_eval(ema.averaged, run, device)
                row.setdefault("step", step)
                row["eval_score"], row["eval_success"] = f"{score[0]:.4f}", f"{score[1]:.4f}"
                log.note(f"[eval] step {step}: score {score[0]:.3f}, success {score[1]:.2f}", bar)
            if world > 1:
                dist.barrier()
        if row and log is not None:
            row.setdefault("minutes", f"{minutes_before + (time.perf_counter() - t_start) / 60:.3f}")
            log.write(row)
        last = step == total_steps or stop
        if step % t_cfg.checkpoint_every == 0 or last or evaluated:
            minutes = minutes_before + (time.perf_counter() - t_start) / 60
            ckpt = checkpoint({"loss": last_loss, "minutes": minutes,
                               **({"eval_score": score[0], "eval_success": score[1]} if score else {})})
            if rank == 0:
                ckpts.save_latest(ckpt)
                if score is not None:
                    ckpts.save_best(ckpt, score[0], step)
            if world > 1:
                dist.barrier()
    if bar is not None:
        bar.close()
    minutes = minutes_before + (time.perf_counter() - t_start) / 60
    if log is not None:
        log.close()
        plot_metrics(log.rows, run_dir / "training.png")
        log.note(f"[train] done: step {step}/{total_steps}, loss {last_loss:.4f}, {minutes:.1f} min; "
                 f"checkpoint {ckpts.latest}")
    return TrainResult(policy=policy, ema=ema, step=step, total_steps=total_steps, last_loss=last_loss,
                       run_dir=run_dir, minutes=minutes, history=log.rows if log else [])


@torch.no_grad()
def validation_loss(policy: DiffusionPolicy, loader, device: torch.device, max_batches: int = 8) -> float:
    """Mean noise-prediction MSE on the validation windows, with fixed noise (comparable across steps)."""
    gen = torch.Generator(device=device).manual_seed(0)
    with eval_mode(policy):
        total, n = 0.0, 0
        for i, batch in enumerate(loader):
            if i >= max_batches:
                break
            batch = to_device(batch, device)
            b = batch["action"].shape[0]
            total += float(policy.compute_loss(batch, generator=gen)) * b
            n += b
    return total / max(1, n)


def _in_training_eval(policy: DiffusionPolicy, run: TrainConfig, device: torch.device) -> tuple[float, float]:
    """(score, success rate) of ``training.eval_episodes`` rollouts on seeds disjoint from the test set."""
    from diffpolicy.eval.rollout import run_rollouts  # noqa: PLC0415 (eval depends on policy, not back)

    t = run.training
    seeds = list(range(t.eval_seed_start, t.eval_seed_start + t.eval_episodes))
    result = run_rollouts(policy, run.task, seeds, max_steps=t.eval_max_steps, device=device,
                          progress=False)
    return result.score, result.success_rate
