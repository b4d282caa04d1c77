"""Host tensors onto a model's device without making the host wait for a GPU.

NoProp draws its data order and all of its noise from CPU generators, so that a
seed gives the same numbers on every device (and a run resumed elsewhere
continues the same streams).  A plain ``t.to("cuda")`` from ordinary (pageable)
memory blocks the host until the GPU has run everything queued before the copy;
with several such copies a training step, a small model's GPU sat idle while the
host queued the next kernels.  :func:`to_device` copies through pinned memory
with ``non_blocking=True`` instead (torch's pinned-memory cache keeps the source
block until the copy has run).  Off CUDA it is ``t.to(device, dtype)``.
"""
from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None
              ) -> torch.Tensor:
    """``t`` (any shape, on the CPU) on ``device`` as ``dtype`` (default: ``t``'s own)."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, dtype, non_blocking=True)
    return t.to(device, dtype)


def randn_like_device(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None,
                      like: torch.Tensor) -> torch.Tensor:
    """Standard normal draws of ``shape`` from the CPU ``generator``, on ``like``'s device and dtype."""
    return to_device(torch.randn(shape, generator=generator), like.device, like.dtype)
