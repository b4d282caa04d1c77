"""Which torch device a run uses: ``auto`` picks CUDA when present, else the CPU.

Shared by training and evaluation (neither imports the other for it).
"""
from __future__ import annotations

import torch

from diffpolicy.policy.run_config import ConfigError, check_device


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` -> a device that exists here.

    ``cuda`` means this process's GPU under torchrun (``cuda:<local_rank>``).
    Raises :class:`ConfigError` for an unknown name or a device this machine lacks.
    """
    check_device(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} asked for, but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r} asked for, but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"device={name!r} asked for, but MPS is not available")
    return device
