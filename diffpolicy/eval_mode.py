"""``eval_mode(module)``: run a block of code with a module in eval mode, then restore its mode."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Switch ``module`` (and its children) to eval mode; on exit, even after an exception,
    put it back in the mode it had (``module.training``) on entry."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
