"""Class embeddings ``W_embed (K, d)`` for NoProp: one-hot, learned, or prototype.

* ``one_hot``: ``W = I_K`` (``d = K``), fixed.
* ``learned``: ``d = 20`` by default, orthogonal initialisation (rows orthonormal
  when ``K <= d``), trained jointly with the blocks and the head.
* ``prototype``: each row is an image-space medoid of its class (the training
  image with the smallest summed distance to the others of its class), flattened
  (``d = C*H*W``); trained jointly unless ``trainable=False``.
"""
from __future__ import annotations

import torch
from torch import nn

KINDS = ("one_hot", "learned", "prototype")


def class_medoids(images: torch.Tensor, labels: torch.Tensor, n_classes: int,
                  max_per_class: int = 1000, seed: int = 0) -> torch.Tensor:
    """Medoid of each class: ``images (N, ...)``, ``labels (N,)`` -> ``(K, prod(...))``.

    At most ``max_per_class`` images per class (a seeded random subset) keep the
    pairwise-distance cost bounded.
    """
    g = torch.Generator().manual_seed(seed)
    flat = images.reshape(len(images), -1).float()
    rows = []
    for k in range(n_classes):
        idx = (labels == k).nonzero().flatten()
        if len(idx) == 0:
            raise ValueError(f"class {k} has no images; cannot build its prototype")
        idx = idx[torch.randperm(len(idx), generator=g)[:max_per_class]]
        cls = flat[idx]
        rows.append(cls[torch.cdist(cls, cls).sum(1).argmin()])
    return torch.stack(rows)


class LabelEmbedding(nn.Module):
    """``forward(y (B,)) -> u_y (B, d)``; ``weight`` is ``W_embed (K, d)``."""

    def __init__(self, kind: str, n_classes: int, dim: int = 20,
                 prototypes: torch.Tensor | None = None, trainable: bool | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown label embedding {kind!r}; expected one of {KINDS}")
        self.kind, self.n_classes = kind, n_classes
        if kind == "one_hot":
            w = torch.eye(n_classes)
            trainable = False if trainable is None else trainable
        elif kind == "learned":
            w = nn.init.orthogonal_(torch.empty(n_classes, dim))
            trainable = True if trainable is None else trainable
        else:
            if prototypes is None:
                raise ValueError("prototype embedding needs prototypes (K, d); "
                                 "build them with class_medoids(train_x, train_y, K)")
            w = prototypes.reshape(n_classes, -1).float().clone()
            if w.shape[0] != n_classes:
                raise ValueError(f"prototypes: expected {n_classes} rows, found {w.shape[0]}")
            trainable = True if trainable is None else trainable
        if trainable:
            self.weight = nn.Parameter(w)
        else:
            self.register_buffer("weight", w)
        self.dim = w.shape[1]

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.weight[y]


@torch.no_grad()
def closest_classes(weight: torch.Tensor) -> dict:
    """The two closest class embeddings of ``weight (K, d)``, K >= 2.

    ``{"distance": ||W_i - W_j||, "classes": [i, j]}`` with ``i < j``.  Training logs it each
    epoch: two learned embeddings drawn together leave the head unable to tell those classes
    apart in ``z ~ q(z | y)``, whatever the denoiser does.
    """
    w = weight.detach().float()
    if w.ndim != 2 or len(w) < 2:
        raise ValueError(f"closest_classes: expected a (K >= 2, d) embedding, got shape {tuple(w.shape)}")
    dist = torch.cdist(w, w).fill_diagonal_(float("inf"))
    flat = int(dist.argmin())
    i, j = sorted(divmod(flat, len(w)))
    return {"distance": float(dist[i, j]), "classes": [i, j]}


@torch.no_grad()
def init_head_as_nearest_embedding(head: nn.Linear, embed_weight: torch.Tensor,
                                   sharpness: float = 10.0) -> None:
    """Start a linear head ``z -> logits`` as the nearest-class-embedding classifier.

    ``logits_k = c (z . u_k - ||u_k||^2 / 2)`` (= ``-c/2 ||z - u_k||^2`` up to a
    term common to all classes) with ``c = sharpness / mean_k ||u_k||^2``.  The head
    is then trained by cross-entropy as usual; without this start, a linear head
    trained by AdamW at lr 1e-3 needs thousands of steps to turn the near-unit
    latents into confident logits, and it, not the blocks, limited accuracy
    after a few epochs (blocks at ~80 % while the head on clean z_T was at ~25 %).
    """
    w = embed_weight.detach().float()
    c = sharpness / w.pow(2).sum(1).mean().clamp_min(1e-8)
    head.weight.copy_(c * w)
    head.bias.copy_(-0.5 * c * w.pow(2).sum(1))
