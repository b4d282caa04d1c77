"""Which UNet path a policy runs on this machine: the fast channels-last kernels or plain layers.

``policy.fast_unet: auto`` (the default) times both paths of the policy's own
UNet on the shapes that matter and keeps the faster (:func:`diffpolicy.speed.choose`,
cached per machine):

* training: one forward + backward at the per-process batch, each path with
  its own weight layout (:meth:`ConditionalUnet1D.set_fast`), chosen once before
  the optimiser exists;
* inference: one forward at the call's batch size (above 64: the next multiple
  of 16), chosen the first time that size is met.

``true`` or ``false`` fixes the path and measures nothing.  Both paths give
the same outputs within float rounding (``tests/diffusion/test_unet.py``).
"""
from __future__ import annotations

import copy
from typing import Callable

import torch

from diffpolicy import speed
from diffpolicy.diffusion.unet1d import ConditionalUnet1D

EXACT_UP_TO = 64      # the faster path changed between batch 50 and 64 on one CPU: probe exact sizes


def inference_bucket(batch: int) -> int:
    """The probed batch size standing for ``batch``: the batch itself up to ``EXACT_UP_TO``
    (a rollout's shrinking batches each measured once per machine, then cached), above
    that the next multiple of 16."""
    return batch if batch <= EXACT_UP_TO else -(-batch // 16) * 16


def _probe_fns(unet: ConditionalUnet1D, batch: int, horizon: int, train: bool,
               device: torch.device | str) -> dict[str, Callable[[], object]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, horizon, unet.input_dim, generator=gen).to(device)
    t = torch.randint(0, 100, (batch,), generator=gen).to(device)
    cond = torch.randn(batch, unet.global_cond_dim, generator=gen).to(device) \
        if unet.global_cond_dim else None
    fns = {}
    for name, fast in (("plain", False), ("fast", True)):        # plain first: the reference
        with torch.inference_mode(False):     # callers may be in inference mode; copy ordinary tensors
            m = copy.deepcopy(unet)
        if train:
            m.set_fast(fast)

            def run(m=m):
                m.zero_grad(set_to_none=True)
                m(x, t, cond).square().mean().backward()
        else:
            m.fast = fast

            def run(m=m):
                with torch.inference_mode():
                    m(x, t, cond)
        fns[name] = run
    return fns


def choose_unet_path(unet: ConditionalUnet1D, batch: int, horizon: int, train: bool,
                     device: torch.device | str = "cpu",
                     log: Callable[[str], object] | None = print) -> bool:
    """True when the fast path is the faster for this UNet, batch and mode on this machine."""
    what = "train step" if train else "inference"
    n_params = sum(p.numel() for p in unet.parameters())      # EMA copies have requires_grad=False
    probe = (f"unet {list(unet.down_dims)} {n_params} params, {what} batch {batch} "
             f"horizon {horizon} on {torch.device(device).type}")
    fns = _probe_fns(unet, batch, horizon, train, device)
    return speed.choose(probe, fns, device=device, reps=3 if train else 5, log=log) == "fast"
