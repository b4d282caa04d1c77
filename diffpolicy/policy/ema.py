"""Exponential moving average of weights with the reference's warm-up schedule.

The decay after ``n`` optimisation steps is (Chi et al. 2023, after
diffusers' ``EMAModel``)::

    step  = max(0, n - update_after_step - 1)
    decay = 0                                   if step == 0
          = clip(1 - (1 + step / inv_gamma) ** -power, min_value, max_value)

With ``power = 0.75`` the first two updates copy the weights (decay 0), the
third uses 0.41, the 1000th 0.994; ``max_value = 0.9999`` is reached only
after ~200k steps, so short CPU runs still get an average that keeps up.
Parameters that do not require gradients, and all buffers, are copied.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, power: float = 0.75, inv_gamma: float = 1.0,
              min_value: float = 0.0, max_value: float = 0.9999,
              update_after_step: int = 0) -> float:
    """Decay used for the update made after ``step`` optimisation steps."""
    s = max(0, step - update_after_step - 1)
    if s <= 0:
        return 0.0
    value = 1.0 - (1.0 + s / inv_gamma) ** -power
    return max(min_value, min(value, max_value))


class EMA:
    """Holds ``averaged``, a frozen deep copy of ``model`` updated by :meth:`update`.

    >>> ema = EMA(policy); loss.backward(); opt.step(); ema.update(policy)
    """

    def __init__(self, model: nn.Module, power: float = 0.75, inv_gamma: float = 1.0,
                 min_value: float = 0.0, max_value: float = 0.9999,
                 update_after_step: int = 0):
        self.averaged = copy.deepcopy(model).eval()
        self.averaged.requires_grad_(False)
        self.power, self.inv_gamma = power, inv_gamma
        self.min_value, self.max_value = min_value, max_value
        self.update_after_step = update_after_step
        self.optimization_step = 0
        self.decay = 0.0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s current weights into the average (call after each optimiser step)."""
        self.decay = ema_decay(self.optimization_step, self.power, self.inv_gamma,
                               self.min_value, self.max_value, self.update_after_step)
        src = dict(model.named_parameters())
        for name, p_avg in self.averaged.named_parameters():
            p = src[name]
            if p.requires_grad:
                p_avg.mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)
            else:
                p_avg.copy_(p.detach())
        src_buf = dict(model.named_buffers())
        for name, b_avg in self.averaged.named_buffers():
            b_avg.copy_(src_buf[name])
        self.optimization_step += 1

    def state_dict(self) -> dict:
        return {"averaged": self.averaged.state_dict(),
                "optimization_step": self.optimization_step, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state["averaged"])
        self.optimization_step = int(state["optimization_step"])
        self.decay = float(state["decay"])
