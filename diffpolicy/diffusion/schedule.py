"""Noise schedules: the one source of truth for DDPM (the policy) and NoProp.

DDPM indexing (diffusers' convention): step ``k = 0 .. N-1``, ``alpha_bar[k]``
falls with ``k`` (``k = 0`` is nearly clean, ``k = N-1`` nearly pure noise)::

    q(x_k | x_0) = N(sqrt(alpha_bar[k]) x_0, (1 - alpha_bar[k]) I)

NoProp indexes the other way round: ``t = 0 .. T`` with ``z_0`` nearly pure
noise and ``SNR(t)`` rising with ``t``.  :meth:`NoiseSchedule.noprop` builds
that view from a DDPM schedule of ``T + 1`` steps by reversing the index
(``t <-> k = T - t``); NoProp's inference coefficients ``a_t, b_t, c_t`` are
then exactly the DDPM posterior coefficients of q(x_{k-1} | x_k, x_0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULE_NAMES = ("linear", "cosine", "sigmoid")


def make_betas(name: str, num_steps: int, beta_start: float = 1e-4,
               beta_end: float = 0.02, max_beta: float = 0.999) -> torch.Tensor:
    """Betas ``(num_steps,)`` float64 for a named schedule.

    ``linear`` and ``sigmoid`` follow diffusers' ``linear`` / ``sigmoid``;
    ``cosine`` is diffusers' ``squaredcos_cap_v2`` (Nichol & Dhariwal, s = 0.008,
    each beta capped at ``max_beta``).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if name == "linear":
        return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    if name == "sigmoid":
        x = torch.linspace(-6, 6, num_steps, dtype=torch.float64)
        return torch.sigmoid(x) * (beta_end - beta_start) + beta_start
    if name in ("cosine", "squaredcos_cap_v2"):
        def abar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = [min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta)
                 for i in range(num_steps)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown noise schedule {name!r}; expected one of {SCHEDULE_NAMES}")


class NoiseSchedule:
    """A discrete variance-preserving schedule of ``num_steps`` steps.

    Attributes (all ``(num_steps,)`` float64 tensors, DDPM indexing):
    ``betas``, ``alphas``, ``alpha_bar``, ``snr`` (= abar / (1 - abar)),
    ``log_snr``, and the posterior q(x_{k-1} | x_k, x_0) =
    N(coef_x0[k] x_0 + coef_xt[k] x_k, posterior_variance[k] I), with
    ``alpha_bar[-1] := 1`` for ``k = 0``.
    """

    def __init__(self, name: str = "cosine", num_steps: int = 100,
                 beta_start: float = 1e-4, beta_end: float = 0.02):
        self.name = name
        self.num_steps = num_steps
        self.beta_start, self.beta_end = beta_start, beta_end
        self.betas = make_betas(name, num_steps, beta_start, beta_end)
        self.alphas = 1.0 - self.betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        self.snr = self.alpha_bar / (1.0 - self.alpha_bar)
        self.log_snr = torch.log(self.snr)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        self.alpha_bar_prev = abar_prev
        self.posterior_coef_x0 = abar_prev.sqrt() * self.betas / (1.0 - self.alpha_bar)
        self.posterior_coef_xt = self.alphas.sqrt() * (1.0 - abar_prev) / (1.0 - self.alpha_bar)
        self.posterior_variance = (1.0 - abar_prev) * self.betas / (1.0 - self.alpha_bar)

    def __repr__(self) -> str:
        return (f"NoiseSchedule(name={self.name!r}, num_steps={self.num_steps}, "
                f"alpha_bar[0]={self.alpha_bar[0]:.6f}, alpha_bar[-1]={self.alpha_bar[-1]:.3e})")

    def trained_betas(self) -> list[float]:
        """Betas as a list for diffusers' ``trained_betas`` argument."""
        return self.betas.tolist()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward sample x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

        x0, noise: ``(B, ...)``; t: ``(B,)`` integer steps in ``[0, num_steps)``.
        Returns ``(B, ...)`` in x0's dtype.
        """
        abar = self.alpha_bar.to(x0.device)[t.long()].to(x0.dtype)
        abar = abar.reshape(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def posterior_mean(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x_0); shapes as in :meth:`add_noise`."""
        shape = (-1, *([1] * (x0.dim() - 1)))
        c0 = self.posterior_coef_x0.to(x0.device)[t.long()].to(x0.dtype).reshape(shape)
        ct = self.posterior_coef_xt.to(x0.device)[t.long()].to(x0.dtype).reshape(shape)
        return c0 * x0 + ct * xt

    def noprop(self) -> "NoPropSchedule":
        """NoProp's view of this schedule: ``T = num_steps - 1`` blocks, SNR rising with t."""
        return NoPropSchedule.from_ddpm(self)


@dataclass(frozen=True)
class NoPropSchedule:
    """NoProp-DT's schedule, ``t = 0 .. T`` (index 0 is ``z_0``, nearly pure noise).

    ``alpha_bar``, ``snr``: ``(T + 1,)``; ``alpha[t] = abar_t / abar_{t+1}`` for
    ``t < T`` (so that abar_t = prod_{s=t..T} alpha_s, with alpha[T] = abar_T);
    ``a``, ``b``, ``c``: ``(T + 1,)`` inference coefficients of
    z_t = a_t uhat + b_t z_{t-1} + sqrt(c_t) eps for ``t = 1 .. T`` (entry 0 is NaN);
    ``snr_diff``: ``(T,)`` = SNR(t) - SNR(t-1) for ``t = 1 .. T``, all positive.
    """

    T: int
    alpha_bar: torch.Tensor
    alpha: torch.Tensor
    snr: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    snr_diff: torch.Tensor

    @classmethod
    def from_ddpm(cls, ddpm: NoiseSchedule) -> "NoPropSchedule":
        T = ddpm.num_steps - 1
        if T < 1:
            raise ValueError("NoProp needs a DDPM schedule of at least 2 steps (T >= 1)")
        abar = ddpm.alpha_bar.flip(0)                      # t = 0..T  <->  k = T..0
        alpha = torch.cat([abar[:-1] / abar[1:], abar[-1:]])
        nan = torch.full((1,), float("nan"), dtype=torch.float64)
        # NoProp step t (z_{t-1} -> z_t) is the DDPM posterior step k = T - t + 1.
        k = torch.arange(T, 0, -1)                         # t = 1..T
        a = torch.cat([nan, ddpm.posterior_coef_x0[k]])
        b = torch.cat([nan, ddpm.posterior_coef_xt[k]])
        c = torch.cat([nan, ddpm.posterior_variance[k]])
        snr = abar / (1.0 - abar)
        return cls(T=T, alpha_bar=abar, alpha=alpha, snr=snr, a=a, b=b, c=c,
                   snr_diff=snr[1:] - snr[:-1])


def noprop_schedule(T: int = 10, name: str = "cosine") -> NoPropSchedule:
    """NoProp-DT schedule with ``T`` blocks (a DDPM schedule of ``T + 1`` steps, reversed)."""
    return NoiseSchedule(name, T + 1).noprop()
