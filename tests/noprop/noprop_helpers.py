"""Tiny synthetic splits: 12x12 images whose class is a bright patch position."""
from __future__ import annotations

import torch

from diffpolicy.datasets.fashion_mnist import FMNISTSplits

IMG = 12


def tiny_splits(n_train: int = 96, n_val: int = 48, n_test: int = 48, k: int = 4,
                seed: int = 0) -> FMNISTSplits:
    g = torch.Generator().manual_seed(seed)

    def make(n):
        y = torch.randint(0, k, (n,), generator=g)
        x = 0.3 * torch.randn(n, 1, IMG, IMG, generator=g)
        for i, c in enumerate(y.tolist()):
            r, col = divmod(c, 2)
            x[i, 0, r * 6:r * 6 + 6, col * 6:col * 6 + 6] += 1.0
        return x, y

    (tx, ty), (vx, vy), (sx, sy) = make(n_train), make(n_val), make(n_test)
    return FMNISTSplits(tx, ty, vx, vy, sx, sy, 0.0, 1.0, torch.arange(n_train),
                        torch.arange(n_train, n_train + n_val))
