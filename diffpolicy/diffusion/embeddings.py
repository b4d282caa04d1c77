"""Time/step embeddings and FiLM conditioning, shared by the UNet and NoProp."""
from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of scalar times.

    t: ``(B,)`` (integer diffusion steps or continuous times, any float scale).
    Returns ``(B, dim)`` = [sin(t w_i), cos(t w_i)] with w_i = max_period^(-i / (dim/2 - 1)).
    """
    if dim < 4 or dim % 2:
        raise ValueError(f"embedding dim must be even and >= 4, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) / (half - 1)
                      * torch.arange(half, device=t.device, dtype=torch.float32))
    args = t.float().reshape(-1, 1) * freqs.reshape(1, -1)
    return torch.cat([args.sin(), args.cos()], dim=-1)


class SinusoidalEmbedding(nn.Module):
    """Module form of :func:`sinusoidal_embedding`: ``(B,) -> (B, dim)``."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        self.dim, self.max_period = dim, max_period

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(t, self.dim, self.max_period)


def step_encoder(dim: int) -> nn.Sequential:
    """Diffusion-step encoder of the reference UNet:
    sinusoidal(dim) -> Linear(dim, 4 dim) -> Mish -> Linear(4 dim, dim); ``(B,) -> (B, dim)``."""
    return nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, dim * 4), nn.Mish(),
                         nn.Linear(dim * 4, dim))


class FiLM(nn.Module):
    """Feature-wise linear modulation: per-channel scale and bias from a condition.

    cond ``(B, cond_dim)`` -> Mish -> Linear -> (scale, bias), each ``(B, C)``;
    ``forward(x (B, C, ...), cond) = scale * x + bias``.
    """

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.channels = channels
        self.proj = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * channels))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = self.proj(cond).chunk(2, dim=-1)
        shape = (x.shape[0], self.channels) + (1,) * (x.dim() - 2)
        return scale.reshape(shape) * x + bias.reshape(shape)
