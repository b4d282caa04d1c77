"""Peak memory of one training step, by kind of tensor, for any model of the NoProp table.

Process RSS (what ``bench.run_row`` also records) mixes the dataset, PyTorch's
own libraries and the allocator's caching into one number, so it cannot say
whether NoProp needs less memory than backprop.  Here the step's tensors are
counted as PyTorch creates and frees them (``torch.distributed._tools.MemTracker``,
a dispatch-level tracker that works on CPU and GPU alike), on a copy of the
model after one warm-up step (so optimiser state exists):

* ``params_mb``, ``buffers_mb``, ``grads_mb``, ``optimizer_mb``: the state;
* ``activations_mb``: tensors kept from the forward pass for the backward pass;
* ``temp_mb``: short-lived tensors of the backward pass;
* ``peak_mb``: the largest total at any moment of the step (the categories
  above are their values at that moment).

The figures depend only on shapes and dtypes, not on the CPU, so they compare
across machines; on CUDA ``allocator_peak_mb`` adds the caching allocator's
peak for the same step.  ``active`` picks the NoProp-DT blocks a batch trains:
all of them (``block_schedule="all"``) or one (``"sweep"``/``"random"``), which
is where the paper's memory saving would come from.
"""
from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from diffpolicy.noprop.train import Optimizers, TrainConfig, train_step

MB = 2 ** 20


def _tracker():
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError as exc:                      # a torch build without torch.distributed
        raise RuntimeError("training_step_memory needs torch.distributed._tools.MemTracker, "
                           f"which this PyTorch build lacks ({exc})") from exc
    return MemTracker()


def training_step_memory(model: nn.Module, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor,
                         active: slice = slice(None)) -> dict[str, float]:
    """Peak memory (MB) of one training step of ``model`` on ``x (B, C, H, W)``, ``y (B,)``.

    ``cfg`` gives precision (resolved, not ``auto``), optimiser and block
    schedule; ``active`` the NoProp-DT block slice trained.  ``model`` itself is
    not touched (a copy is stepped).
    """
    if cfg.precision == "auto":
        raise ValueError("training_step_memory: resolve cfg.precision first (fp32 or bf16)")
    model = copy.deepcopy(model).train()
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    opt = Optimizers(model, replace(cfg, block_schedule="all" if active == slice(None) else "random"))

    def step() -> None:
        train_step(model, opt, x, y, cfg.precision, active)

    step()                                          # optimiser state now exists
    tracked = [model] + ([opt.rest] if opt.rest else [])
    block_state = opt.blocks.exp_avg + opt.blocks.exp_avg_sq if opt.blocks else []
    tracker = _tracker()
    tracker.track_external(*tracked, *block_state)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with tracker:
        step()
    peak = tracker.get_tracker_snapshot("peak")[device]
    by_kind = {str(k.value if hasattr(k, "value") else k): v for k, v in peak.items()}
    out = {"params_mb": by_kind.get("Parameter", 0) / MB,
           "buffers_mb": by_kind.get("Buffer", 0) / MB,
           "grads_mb": by_kind.get("Gradient", 0) / MB,
           # torch optimisers' state is "Optstate"; BlockAdamW's moments, tracked by hand, "Other"
           "optimizer_mb": (by_kind.get("Optstate", 0) + by_kind.get("Other", 0)) / MB,
           "activations_mb": by_kind.get("Activation", 0) / MB,
           "temp_mb": by_kind.get("Temp", 0) / MB,
           "peak_mb": by_kind.get("Total", 0) / MB}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["allocator_peak_mb"] = (torch.cuda.max_memory_allocated(device) - base) / MB
    return out
