"""Diffusion Policy: observation encoders + the core's ConditionalUnet1D, EMA, checkpoints, training."""
from diffpolicy.policy.diffusion_policy import DiffusionPolicy, PolicyConfig
from diffpolicy.policy.ema import EMA

__all__ = ["DiffusionPolicy", "EMA", "PolicyConfig"]
