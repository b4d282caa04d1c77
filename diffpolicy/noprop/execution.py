"""How a NoProp or baseline model runs on this machine: precision and block layout.

``TrainConfig.precision`` (``auto | fp32 | bf16``) and ``TrainConfig.layout``
(``auto | per_block | per_block_cl | fused``) are resolved here before training starts.  For
each ``auto`` the candidates are timed by :func:`diffpolicy.speed.choose` on one
training step (forward + backward) at the run's batch shape, on a copy of the
model, and the fastest is kept (cached per machine).  bf16 is a candidate only
where the hardware computes it natively (:func:`diffpolicy.speed.bf16_native`):
emulated bf16 was 11x slower than fp32 on an AVX2 CPU.  ``layout`` applies to
models with fused paper blocks (NoProp-DT and its backprop twin); ResNet models
have one layout.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Callable

import torch
from torch import nn

from diffpolicy import speed
from diffpolicy.noprop.blocks import StackedPaperBlocks


def _blocks(model: nn.Module) -> StackedPaperBlocks | None:
    blocks = getattr(model, "blocks", None)
    return blocks if isinstance(blocks, StackedPaperBlocks) else None


def candidates(model: nn.Module, precision: str, layout: str, device: str) -> list[tuple[str, str]]:
    """``(layout, precision)`` pairs worth timing for this model, config and device."""
    blocks = _blocks(model)
    layouts = ([layout] if layout != "auto" else list(StackedPaperBlocks.LAYOUTS)) if blocks is not None \
        else ["fused"]
    if precision != "auto":
        precisions = [precision]
    else:
        precisions = ["fp32"] + (["bf16"] if speed.bf16_native(device) else [])
    return [(lay, prec) for lay in layouts for prec in precisions]


def resolve(model: nn.Module, cfg, x: torch.Tensor, y: torch.Tensor,
            log: Callable[[str], object] | None = print):
    """Apply the chosen layout to ``model`` and return ``cfg`` with a concrete precision/layout.

    ``x (B, C, H, W)``, ``y (B,)``: one training batch (its shape is what is timed).
    """
    from diffpolicy.noprop.train import autocast  # noqa: PLC0415 (train imports this module)

    pairs = candidates(model, cfg.precision, cfg.layout, cfg.device)
    blocks = _blocks(model)
    if len(pairs) == 1:
        choice = pairs[0]
    else:
        x, y = x.to(cfg.device), y.to(cfg.device)
        copies: dict[str, nn.Module] = {}

        def step_fn(lay: str, prec: str):
            if lay not in copies:
                m = copy.deepcopy(model).train()
                if _blocks(m) is not None:
                    _blocks(m).set_layout(lay)
                copies[lay] = m
            m = copies[lay]

            def run():
                m.zero_grad(set_to_none=True)
                with autocast(prec, cfg.device):
                    loss = m.loss(x, y)["total"]
                loss.backward()
            return run

        fns = {f"{lay}_{prec}": step_fn(lay, prec) for lay, prec in pairs}
        n_params = sum(p.numel() for p in model.parameters())
        probe = (f"noprop {type(model).__name__} {n_params} params, train step batch "
                 f"{tuple(x.shape)} on {cfg.device} [{', '.join(fns)}]")
        name = speed.choose(probe, fns, device=cfg.device, log=log)
        choice = next(p for p in pairs if f"{p[0]}_{p[1]}" == name)
    if blocks is not None:
        blocks.set_layout(choice[0])
    return replace(cfg, layout=choice[0], precision=choice[1])
