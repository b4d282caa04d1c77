"""Training loops: block-local NoProp-DT (serial or one process per group of blocks),
NoProp-CT and the backprop baselines, with validation-based model selection.

An *epoch* means every block has seen every training example once, for every
model: NoProp-DT with ``block_schedule="all"`` (every block on every batch,
the fused default) is one pass over the data; ``"sweep"`` (the paper's
Algorithm 1: block 1 for a whole pass, then block 2, ...) and ``"random"`` (a
random block per batch) are T passes.  Backprop models and NoProp-CT: one pass.

Block parameters are updated by :class:`BlockAdamW`, which keeps Adam's state
and step count per block and touches only the blocks being trained: exactly
T separate AdamW optimisers.  The head and ``W_embed`` use ``torch.optim.AdamW``.
``optimizer="adam"`` makes every one of them Adam with an L2 penalty
(``weight_decay`` added to the gradient), as the NoProp paper's CT runs.

``ema=True`` keeps an exponential moving average of the weights
(:class:`diffpolicy.policy.ema.EMA`, the policy's warm-up schedule: decay 0.994 after 1000
steps, 0.998 after 5000), updated after every optimiser step; validation, model selection
and the test then use the average, and the live weights go on training.

``grad_clip=c`` scales each gradient group whose L2 norm exceeds ``c`` down to ``c`` before
the optimiser step (:func:`clip_gradients`; NoProp-DT clips block by block, so no gradient
information crosses blocks); each epoch's ``clipped`` is the fraction of groups scaled.

Inference modes (``predict_modes``) are keyword sets for ``model.predict``; a
mode with ``runs: n`` and ``stochastic: True`` is tested n times with sampling
seeds ``seed + 2 .. seed + 1 + n`` (mean in ``test_acc``, each run in
``test_acc_runs``).  Validation uses the first mode once, with fixed sampling
noise, so model selection does not depend on a lucky draw.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from diffpolicy.datasets.fashion_mnist import AUGMENTATIONS, FMNISTSplits, augment_batch, iterate_batches
from diffpolicy.host_copy import to_device
from diffpolicy.noprop import execution
from diffpolicy.noprop.blocks import StackedPaperBlocks
from diffpolicy.noprop.dt import NoPropDT
from diffpolicy.noprop.embeddings import closest_classes
from diffpolicy.noprop.parallel import BlockWorkers, share
from diffpolicy.policy.ema import EMA
from diffpolicy.serialization import safe_load

BLOCK_SCHEDULES = ("all", "sweep", "random")
OPTIMIZERS = ("adamw", "adam")
NO_DECAY = {"schedule.gamma_0_raw", "schedule.gap_raw"}     # parameter names kept out of weight decay
PRECISIONS = ("auto", "fp32", "bf16")
LAYOUTS = ("auto",) + StackedPaperBlocks.LAYOUTS


@dataclass
class TrainConfig:
    """Optimisation settings (the paper's: AdamW, lr 1e-3, weight decay 1e-3, batch 128)."""

    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-3
    optimizer: str = "adamw"                   # adamw (decoupled decay) | adam (L2 penalty in the gradient)
    lr_schedule: str = "constant"              # constant (the paper) | cosine (decay to 0 by the last epoch)
    lr_decay_epochs: int = 0                   # constant only: the last N epochs decay to 0 on a cosine
    block_schedule: str = "all"
    augment: str = "none"                      # none | crop_flip (pad 2, random 28x28 crop, mirror half)
    seed: int = 0
    precision: str = "auto"                    # auto: fp32 or (where native and faster) bf16, measured
    layout: str = "auto"                       # auto | per_block | per_block_cl | fused (paper blocks), measured
    eval_batch: int = 128                      # larger batches were no faster on CPU (memory-bound convs)
    max_steps_per_epoch: int | None = None     # cut epochs short (timing / smoke runs)
    predict_modes: dict = field(default_factory=lambda: {"deterministic": {}})
    val_overrides: dict = field(default_factory=dict)   # e.g. fewer CT steps on validation
    progress: bool = True
    device: str = "cpu"                        # "cuda" moves model and data (untested here)
    block_workers: int = 1                     # NoProp-DT: blocks split over this many CPU processes
    ema: bool = False                          # validate, select and test a moving average of the weights
    grad_clip: float | None = None             # max L2 norm of a gradient group (clip_gradients); None: off

    def __post_init__(self):
        if self.block_schedule not in BLOCK_SCHEDULES:
            raise ValueError(f"block_schedule: expected one of {BLOCK_SCHEDULES}, "
                             f"got {self.block_schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {self.precision!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {LAYOUTS}, got {self.layout!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment: expected one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule: expected 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not isinstance(self.lr_decay_epochs, int) or isinstance(self.lr_decay_epochs, bool) \
                or not 0 <= self.lr_decay_epochs <= self.epochs:
            raise ValueError(f"lr_decay_epochs: expected a whole number from 0 to epochs "
                             f"({self.epochs}), got {self.lr_decay_epochs!r}")
        if self.lr_decay_epochs and self.lr_schedule != "constant":
            raise ValueError(f"lr_decay_epochs tails a constant rate; lr_schedule "
                             f"{self.lr_schedule!r} sets the whole run's")
        if not self.predict_modes:
            raise ValueError("predict_modes must name at least one inference mode")
        if not isinstance(self.block_workers, int) or isinstance(self.block_workers, bool) \
                or self.block_workers < 1:
            raise ValueError(f"block_workers: expected a whole number >= 1, got {self.block_workers!r}")
        if not isinstance(self.ema, bool):
            raise ValueError(f"ema: expected true or false, got {self.ema!r}")
        if self.ema and self.block_workers > 1:
            raise ValueError("ema: the weight average is kept in one process; it needs block_workers=1")
        if self.grad_clip is not None and (isinstance(self.grad_clip, bool)
                                           or not isinstance(self.grad_clip, (int, float))
                                           or not 0 < self.grad_clip < math.inf):
            raise ValueError(f"grad_clip: expected a positive number (the largest gradient norm) or "
                             f"null (no clipping), got {self.grad_clip!r}")


def autocast(precision: str, device: str = "cpu"):
    """bf16 autocast, or nothing for fp32 (``auto`` must be resolved first: :mod:`.execution`)."""
    if precision == "auto":
        raise ValueError("precision='auto' is resolved by diffpolicy.noprop.execution.resolve "
                         "before training or inference")
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class BlockAdamW:
    """AdamW over a :class:`StackedPaperBlocks`, with per-block state and step counts.

    ``step(active)`` updates only the blocks in the slice ``active``; the rest
    (parameters, moments and step counts) are left untouched, so the result is
    that of one ``torch.optim.AdamW`` per block (``l2=True``: one
    ``torch.optim.Adam`` with ``weight_decay`` as an L2 penalty).
    """

    def __init__(self, stack: StackedPaperBlocks, lr: float = 1e-3, weight_decay: float = 1e-2,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, l2: bool = False):
        self.stack, self.lr, self.wd, self.betas, self.eps = stack, lr, weight_decay, betas, eps
        self.l2 = l2
        self.params = [p for p in stack.parameters() if p.requires_grad]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = torch.zeros(stack.n, dtype=torch.float64)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, active: slice = slice(None)) -> None:
        b1, b2 = self.betas
        self.steps[active] += 1
        k = len(self.steps[active])
        like = self.params[0]                       # all block parameters: one device and dtype
        step_size = to_device(self.lr / (1 - b1 ** self.steps[active]), like.device, like.dtype)
        bc2_sqrt = to_device((1 - b2 ** self.steps[active]).sqrt(), like.device, like.dtype)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            view = self.stack.per_block
            w, g, mm, vv = view(p)[active], view(p.grad)[active], view(m)[active], view(v)[active]
            shape = (k,) + (1,) * (w.dim() - 1)
            if self.l2:
                g = g + self.wd * w
            else:
                w.mul_(1 - self.lr * self.wd)
            mm.lerp_(g, 1 - b1)
            vv.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (vv.sqrt() / bc2_sqrt.reshape(shape)).add_(self.eps)
            w.sub_(step_size.reshape(shape) * mm / denom)

    def state_dict(self) -> dict:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        for dst, src in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"]):
            dst.copy_(src)
        self.steps.copy_(state["steps"])


class Optimizers:
    """BlockAdamW for NoProp-DT's blocks when blocks are trained one at a time, torch's
    fused AdamW for everything else (with all blocks on every batch, one fused AdamW over
    the stacked blocks *is* one AdamW per block: Adam is elementwise)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        per_block = isinstance(model, NoPropDT) and cfg.block_schedule != "all"
        blocks = model.blocks if per_block else None
        block_ids = {id(p) for p in blocks.parameters()} if blocks is not None else set()
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in block_ids]
        # a learned schedule's end points (NoProp-CT learn_endpoints) are noise levels, not weights:
        # decay would pull gamma(0) and the gap towards 0
        levels = {id(p) for n, p in model.named_parameters() if n in NO_DECAY}
        l2 = cfg.optimizer == "adam"
        self.blocks = BlockAdamW(blocks, cfg.lr, cfg.weight_decay, l2=l2) if blocks is not None else None
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in rest)
        adam = torch.optim.Adam if l2 else torch.optim.AdamW
        groups = [{"params": [p for p in rest if id(p) not in levels]},
                  {"params": [p for p in rest if id(p) in levels], "weight_decay": 0.0}]
        self.rest = (adam([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay,
                          fused=fused or None) if rest else None)

    def zero_grad(self) -> None:
        if self.blocks:
            self.blocks.zero_grad()
        if self.rest:
            self.rest.zero_grad(set_to_none=True)

    def step(self, active: slice = slice(None)) -> None:
        if self.blocks:
            self.blocks.step(active)
        if self.rest:
            self.rest.step()

    def set_lr(self, lr: float) -> None:
        if self.blocks:
            self.blocks.lr = lr
        if self.rest:
            for group in self.rest.param_groups:
                group["lr"] = lr

    def state_dict(self) -> dict:
        return {"blocks": self.blocks.state_dict() if self.blocks else None,
                "rest": self.rest.state_dict() if self.rest else None}

    def load_state_dict(self, state: dict) -> None:
        if self.blocks:
            self.blocks.load_state_dict(state["blocks"])
        if self.rest:
            self.rest.load_state_dict(state["rest"])


def train_step(model: nn.Module, opt: Optimizers, x: torch.Tensor, y: torch.Tensor, precision: str,
               active: slice = slice(None)) -> torch.Tensor:
    """One optimiser step on ``x (B, C, H, W)``, ``y (B,)``, training NoProp-DT's blocks in
    ``active`` (other models: everything); returns the loss.  (``train_epoch`` interleaves
    gradient sync and the learning-rate schedule, so it spells these steps out.)"""
    opt.zero_grad()
    with autocast(precision, x.device.type):
        loss = model.loss(x, y, **({"blocks": active} if isinstance(model, NoPropDT) else {}))["total"]
    loss.backward()
    opt.step(active)
    return loss


@torch.no_grad()
def clip_gradients(model: nn.Module, max_norm: float) -> tuple[torch.Tensor, int]:
    """Scale gradients in place so that no group's L2 norm exceeds ``max_norm`` (the rule of
    ``torch.nn.utils.clip_grad_norm_``: factor ``max_norm / (norm + 1e-6)`` where below 1).

    Groups: for NoProp-DT each block (its slice of every stacked parameter) is one group and
    the shared parameters (label embedding, head) another, so a block's update never depends
    on another block's gradient; for every other model all parameters are one group.
    Returns ``(clipped, groups)``: how many groups were scaled (a 0-d tensor on the
    gradients' device, read by the caller when it likes) and how many there are."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return torch.zeros(()), 0
    stack = model.blocks if isinstance(model, NoPropDT) else None
    in_stack = {id(p) for p in stack.parameters()} if stack is not None else set()
    rest = [p for p in params if id(p) not in in_stack]
    clipped, groups = torch.zeros((), device=params[0].device), 0
    if rest:
        norm = torch.nn.utils.clip_grad_norm_(rest, max_norm)
        clipped, groups = clipped + (norm > max_norm), 1
    stacked = [p for p in params if id(p) in in_stack]
    if stacked:
        per_block = [stack.per_block(p.grad) for p in stacked]                # each (n, ...)
        norms = torch.stack([g.flatten(1).float().pow(2).sum(1) for g in per_block]).sum(0).sqrt()
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)                   # (n,)
        for g in per_block:
            g.mul_(scale.to(g.dtype).reshape((-1,) + (1,) * (g.dim() - 1)))
        clipped, groups = clipped + (norms > max_norm).sum(), groups + stack.n
    return clipped, groups


def epoch_plan(model: nn.Module, n_batches: int, schedule: str, gen: torch.Generator
               ) -> list[list[slice]]:
    """Per pass over the data, the block slice each batch trains (``slice(None)`` = all)."""
    if not isinstance(model, NoPropDT) or schedule == "all":
        return [[slice(None)] * n_batches]
    n = model.blocks.n
    if schedule == "sweep":
        return [[slice(i, i + 1)] * n_batches for i in range(n)]
    picks = torch.randint(n, (n, n_batches), generator=gen).tolist()
    return [[slice(i, i + 1) for i in row] for row in picks]


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, file=sys.stderr, mininterval=5.0, leave=False,
                dynamic_ncols=False, ncols=100)


def decay_start(cfg: TrainConfig) -> float:
    """The epoch (0-based, fractional) from which ``cfg``'s learning rate leaves ``cfg.lr``."""
    if cfg.lr_schedule == "cosine":
        return 0.0
    return float(cfg.epochs - cfg.lr_decay_epochs) if cfg.lr_decay_epochs else math.inf


def scheduled_lr(cfg: TrainConfig, at: float) -> float | None:
    """The learning rate at epoch ``at`` (0-based, fractional); None where it stays ``cfg.lr``
    for the whole run (constant, no decay).  Cosine decays to 0 over the run; a constant rate
    with ``lr_decay_epochs`` N holds until N epochs before the end, then decays to 0 on a cosine."""
    start = decay_start(cfg)
    if start == math.inf:
        return None
    frac = min(1.0, max(0.0, (at - start) / (cfg.epochs - start)))
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))


def check_schedule_extends(before: dict, cfg: TrainConfig, done: int, where: str) -> None:
    """Refuse to resume ``done`` epochs trained under config ``before`` (a checkpoint's) into
    ``cfg`` unless they ran at the learning rates ``cfg`` gives them: a constant-rate run can be
    extended, or given a decaying tail that starts after its last epoch; a decaying one cannot."""
    old = TrainConfig(**{k: before.get(k, getattr(cfg, k)) for k in ("epochs", "lr", "lr_schedule")},
                      lr_decay_epochs=before.get("lr_decay_epochs", 0))   # older checkpoints: none
    new_start, old_start = decay_start(cfg), decay_start(old)
    same = (old.lr, old.epochs, old.lr_schedule, old.lr_decay_epochs) == \
        (cfg.lr, cfg.epochs, cfg.lr_schedule, cfg.lr_decay_epochs)
    if same or (old.lr == cfg.lr and done <= min(new_start, old_start)):
        return
    raise ValueError(f"{where}: its {done} epoch(s) ran at another learning rate than this run "
                     f"gives them ({old.lr_schedule}, lr {old.lr}, {old.epochs} epochs, decay over the "
                     f"last {old.lr_decay_epochs} there; {cfg.lr_schedule}, lr {cfg.lr}, {cfg.epochs} "
                     f"epochs, decay over the last {cfg.lr_decay_epochs} here; a constant-rate run can "
                     "be extended or given a decaying tail that starts after its last epoch): "
                     "use another checkpoint path")


RESUME_FIXED = ("batch_size", "weight_decay", "optimizer", "augment", "block_schedule", "ema", "grad_clip")


def check_same_training(before: dict, cfg: TrainConfig, where: str) -> None:
    """Refuse to resume epochs trained under config ``before`` (a checkpoint's) into ``cfg`` when
    a setting in ``RESUME_FIXED`` differs: the result would mix two recipes under one name.
    Execution settings (precision, layout, device, threads) may change between processes."""
    defaults = TrainConfig()                     # older checkpoints lack the newer settings
    was = {k: before.get(k, getattr(defaults, k)) for k in RESUME_FIXED}
    changed = [f"{k} {was[k]!r} there, {getattr(cfg, k)!r} here"
               for k in RESUME_FIXED if was[k] != getattr(cfg, k)]
    if changed:
        raise ValueError(f"{where}: its epochs trained with other settings than this run's "
                         f"({'; '.join(changed)}): use another checkpoint path")


def train_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: Optimizers,
                cfg: TrainConfig, data_gen: torch.Generator, noise_gen: torch.Generator,
                desc: str = "train", shared_weight: float = 1.0, sync=None, epoch: int = 0,
                ema: EMA | None = None) -> dict:
    """One epoch (see module docstring); returns ``loss`` (mean total), ``seconds``, ``steps``.

    ``epoch`` (0-based) places the epoch in ``cfg.lr_schedule``; ``ema`` is updated after
    every optimiser step."""
    model.train()
    n_batches = -(-len(x) // cfg.batch_size)
    plan = epoch_plan(model, n_batches, cfg.block_schedule, data_gen)
    limit = cfg.max_steps_per_epoch
    total_steps = sum(len(p) for p in plan) if limit is None else min(limit, sum(len(p) for p in plan))
    bar = _progress(total_steps, desc, cfg.progress)
    # the loss is summed where it is computed and read once an epoch (every 20 steps with a
    # progress bar): reading it each step made the host wait for the GPU each step
    steps, loss_sum, t0 = 0, torch.zeros((), dtype=torch.float64, device=x.device), time.perf_counter()
    clipped, groups = torch.zeros((), device=x.device), 0       # gradient groups clipped, seen
    for blocks_of_batch in plan:
        for (xb, yb), sl in zip(iterate_batches(x, y, cfg.batch_size, True, data_gen), blocks_of_batch):
            if limit is not None and steps >= limit:
                break
            if len(xb) < 2:          # batch norm needs two examples
                continue
            xb = augment_batch(xb, cfg.augment, data_gen)
            opt.zero_grad()
            with autocast(cfg.precision, cfg.device):
                losses = model.loss(xb, yb, blocks=sl, generator=noise_gen,
                                    shared_weight=shared_weight)
            losses["total"].backward()
            if sync is not None:
                sync(model)
            if cfg.grad_clip is not None:
                n_clipped, n_groups = clip_gradients(model, cfg.grad_clip)
                clipped, groups = clipped + n_clipped.to(clipped.device), groups + n_groups
            lr = scheduled_lr(cfg, epoch + steps / total_steps)
            if lr is not None:
                opt.set_lr(lr)
            opt.step(sl)
            if ema is not None:
                ema.update(model)
            steps += 1
            loss_sum += losses["total"].detach()
            if bar is not None:
                bar.update(1)
                if steps % 20 == 0:
                    bar.set_postfix(loss=f"{float(loss_sum) / steps:.3f}", refresh=False)
    if bar is not None:
        bar.close()
    loss = float(loss_sum) / max(steps, 1)             # waits for the epoch's last step
    seconds = time.perf_counter() - t0
    clip = {"clipped": float(clipped) / max(groups, 1)} if cfg.grad_clip is not None else {}
    return {"loss": loss, "seconds": seconds, "steps": steps, **clip}


class EpochRunner:
    """What one process trains with: its model (or share), optimiser and generators.

    ``train_epoch(epoch, desc)`` runs :func:`diffpolicy.noprop.train.train_epoch`;
    ``state_dict`` / ``load_state_dict`` carry the optimiser, the data and noise
    generators, torch's global generator (dropout) and the weight average (``cfg.ema``)
    across a checkpoint; ``evaluated`` is the model validation and the test read.
    """

    def __init__(self, model: nn.Module, cfg, x: torch.Tensor, y: torch.Tensor,
                 shared_weight: float = 1.0, sync=None):
        self.model, self.cfg, self.x, self.y = model, cfg, x, y
        self.shared_weight, self.sync = shared_weight, sync
        self.opt = Optimizers(model, cfg)
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.noise_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.ema = EMA(model) if cfg.ema else None
        self.evaluated = self.ema.averaged if self.ema else model

    def train_epoch(self, epoch: int, desc: str) -> dict:
        return train_epoch(self.model, self.x, self.y, self.opt, self.cfg, self.data_gen,
                           self.noise_gen, desc=desc, shared_weight=self.shared_weight,
                           sync=self.sync, epoch=epoch, ema=self.ema)

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "data_gen": self.data_gen.get_state(),
                "noise_gen": self.noise_gen.get_state(), "torch_rng": torch.get_rng_state(),
                **({"ema": self.ema.state_dict()} if self.ema else {})}

    def load_state_dict(self, state: dict) -> None:
        if "block_workers" in state:              # the twin check: parallel.BlockWorkers.load_state_dict
            raise ValueError(f"this checkpoint was trained with block_workers="
                             f"{len(state['block_workers'])}; this config trains in one process "
                             "(use the same setting, or another checkpoint path)")
        self.opt.load_state_dict(state["opt"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        self.data_gen.set_state(state["data_gen"])
        self.noise_gen.set_state(state["noise_gen"])
        torch.set_rng_state(state["torch_rng"])

    def close(self, abort: bool = False) -> None:
        """Nothing to stop in one process (``parallel.BlockWorkers`` stops its helpers)."""


@torch.no_grad()
def predict_all(model: nn.Module, x: torch.Tensor, batch: int = 2000, precision: str = "fp32",
                **predict_kw) -> torch.Tensor:
    """Predicted classes ``(N,)`` in batches.  Takes no labels: inference cannot see them."""
    preds = []
    device = next(model.parameters()).device
    with torch.inference_mode(), autocast(precision, str(device)):
        for i in range(0, len(x), batch):
            preds.append(model.predict(x[i:i + batch].to(device), **predict_kw).argmax(-1).cpu())
    return torch.cat(preds)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000,
             precision: str = "fp32", **predict_kw) -> float:
    return float((predict_all(model, x, batch, precision, **predict_kw) == y.cpu()).float().mean())


def _one_run(mode: dict, sampling_seed: int) -> dict:
    """``model.predict`` keywords for one run of an inference mode (stochastic: seeded noise)."""
    kw = {k: v for k, v in mode.items() if k != "runs"}
    if kw.get("stochastic"):
        kw["generator"] = torch.Generator().manual_seed(sampling_seed)
    return kw


def _save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def resolve_execution(model: nn.Module, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor,
                      log=print) -> TrainConfig:
    """:func:`execution.resolve` for the processes that will train ``model``: with
    ``block_workers > 1`` the probe times one worker's share of NoProp-DT's blocks, and
    the chosen layout is then applied to the whole model."""
    if cfg.block_workers == 1 or not isinstance(model, NoPropDT):
        return execution.resolve(model, cfg, x, y, log=log)
    cfg = execution.resolve(share(model, cfg.block_workers, 0), cfg, x, y, log=log)
    model.blocks.set_layout(cfg.layout)
    return cfg


def fit(model: nn.Module, data: FMNISTSplits, cfg: TrainConfig, checkpoint: Path | None = None,
        desc: str = "", log=print) -> dict:
    """Train, select the epoch with the best validation accuracy, then test it once.

    Validation uses the first of ``cfg.predict_modes`` (with ``cfg.val_overrides``); the test set is touched
    only after training, by the selected model, in every mode.  With
    ``checkpoint`` the state is saved after every epoch and a rerun resumes.  With ``cfg.ema``
    validation reads the weight average, and ``model`` ends holding the selected average.
    ``cfg.block_workers > 1`` (NoProp-DT) trains shares of the blocks in that many processes
    (:mod:`.parallel`); validation, checkpoints and the test run here on the merged model.
    Returns ``history`` (per epoch: loss, seconds, steps, val_acc), ``best_epoch``,
    ``val_acc``, ``test_acc`` {mode: mean acc}, ``test_acc_runs`` {mode: [acc per sampling
    run]}, ``infer_seconds`` {mode: s for the test set, one run},
    ``seconds_per_epoch`` (mean training time, evaluation excluded), ``resumed_seconds``
    (clock time the earlier processes of a resumed run spent on the epochs it kept; 0 for a
    fresh run; the checkpoint carries it as ``fit_seconds``).
    """
    t_fit = time.time()
    torch.manual_seed(cfg.seed)
    model.to(cfg.device)
    train_x, train_y = data.train_x.to(cfg.device), data.train_y.to(cfg.device)
    cfg = resolve_execution(model, cfg, train_x[:cfg.batch_size], train_y[:cfg.batch_size], log=log)
    runner = (BlockWorkers(model, cfg, train_x, train_y, EpochRunner) if cfg.block_workers > 1
              else EpochRunner(model, cfg, train_x, train_y))
    history, best, best_state, start, earlier = [], -1.0, None, 0, 0.0
    if checkpoint is not None and Path(checkpoint).exists():
        ck = safe_load(checkpoint, "NoProp checkpoint")
        before = ck.get("config", {})
        check_schedule_extends(before, cfg, ck["epoch"], str(checkpoint))
        check_same_training(before, cfg, str(checkpoint))
        model.load_state_dict(ck["model"])
        runner.load_state_dict(ck)
        history, best, best_state, start = ck["history"], ck["best"], ck["best_state"], ck["epoch"]
        earlier = float(ck.get("fit_seconds", 0.0))      # checkpoints from before it: 0
        log(f"{desc}: resumed after epoch {start}")
    modes = list(cfg.predict_modes.items())
    evaluated = runner.evaluated                     # the model, or its weight average (cfg.ema)
    try:
        for epoch in range(start, cfg.epochs):
            stats = runner.train_epoch(epoch, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}")
            stats["val_acc"] = accuracy(evaluated, data.val_x, data.val_y, cfg.eval_batch, cfg.precision,
                                        **_one_run({**modes[0][1], **cfg.val_overrides}, cfg.seed + 2))
            stats["epoch"] = epoch + 1
            if hasattr(evaluated, "schedule_diagnostics"):  # NoProp-CT: learned gamma(t), loss weight by t
                stats["schedule"] = evaluated.schedule_diagnostics()
            embed = getattr(evaluated, "embed", None)
            if embed is not None and isinstance(embed.weight, nn.Parameter):   # a learned embedding
                stats["closest_classes"] = closest_classes(embed.weight)
            history.append(stats)
            clip = f" clipped {100 * stats['clipped']:.1f}%" if "clipped" in stats else ""
            pair = stats.get("closest_classes")
            near = (f" closest classes {pair['classes'][0]}-{pair['classes'][1]} {pair['distance']:.3f} apart"
                    if pair else "")
            log(f"{desc}: epoch {epoch + 1}/{cfg.epochs} loss {stats['loss']:.4f}{clip} "
                f"val {100 * stats['val_acc']:.2f}%{near} ({stats['seconds']:.0f} s)")
            if stats["val_acc"] > best:
                best, best_state = stats["val_acc"], copy.deepcopy(evaluated.state_dict())
            if checkpoint is not None:
                _save_atomic({"model": model.state_dict(), **runner.state_dict(), "history": history,
                              "best": best, "best_state": best_state, "epoch": epoch + 1,
                              "config": asdict(cfg), "fit_seconds": earlier + time.time() - t_fit},
                             Path(checkpoint))
    except BaseException:
        runner.close(abort=True)         # block workers may be inside a collective: stop them
        raise
    runner.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    test_acc, test_runs, infer_s = {}, {}, {}
    for name, kw in modes:
        runs = int(kw.get("runs", 1)) if kw.get("stochastic") else 1
        t0 = time.perf_counter()
        test_runs[name] = [accuracy(model, data.test_x, data.test_y, cfg.eval_batch, cfg.precision,
                                    **_one_run(kw, cfg.seed + 2 + r)) for r in range(runs)]
        test_acc[name] = sum(test_runs[name]) / runs
        infer_s[name] = (time.perf_counter() - t0) / runs
    best_epoch = max(history, key=lambda h: h["val_acc"])["epoch"] if history else 0
    return {"history": history, "best_epoch": best_epoch, "val_acc": best, "test_acc": test_acc,
            "test_acc_runs": test_runs,
            "infer_seconds": infer_s, "precision": cfg.precision, "layout": cfg.layout,
            "resumed_seconds": earlier,
            "seconds_per_epoch": sum(h["seconds"] for h in history) / max(len(history), 1)}
