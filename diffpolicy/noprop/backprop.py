"""Backprop baselines trained end to end with cross-entropy.

* :class:`BackpropDT`: the paper's backprop twin of NoProp-DT: the same T CNN
  blocks, embedding and head, chained as NoProp's deterministic inference runs
  them (``z_0 = 0``, ``z_t = a_t uhat_t(z_{t-1}, x) + b_t z_{t-1}``), and the
  cross-entropy of ``head(z_T)`` back-propagated through every block.
* :class:`BackboneClassifier`: a ResNet-18/50 classifier (1-channel stem).

Both share NoProp's interface: ``loss(x, y) -> {"total", "ce"}`` and
``predict(x) -> logits (B, K)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffpolicy.diffusion.schedule import noprop_schedule
from diffpolicy.eval_mode import eval_mode
from diffpolicy.noprop.blocks import StackedPaperBlocks, resnet_backbone
from diffpolicy.noprop.embeddings import LabelEmbedding, init_head_as_nearest_embedding


class _CrossEntropyClassifier(nn.Module):
    """Shared by the backprop baselines: ``forward`` gives logits ``(B, K)``; the loss is
    plain cross-entropy on them and ``predict`` runs in eval mode without gradients."""

    def loss(self, x: torch.Tensor, y: torch.Tensor, **_: object) -> dict[str, torch.Tensor]:
        ce = F.cross_entropy(self(x), y)
        return {"total": ce, "ce": ce}

    @torch.no_grad()
    def predict(self, x: torch.Tensor, **_: object) -> torch.Tensor:
        with eval_mode(self):
            return self(x)


class BackpropDT(_CrossEntropyClassifier):
    """T chained paper blocks trained end to end: ``forward(x (B,C,H,W)) -> logits (B,K)``."""

    def __init__(self, n_classes: int = 10, T: int = 10, embedding: str = "learned",
                 embed_dim: int = 20, prototypes: torch.Tensor | None = None,
                 schedule: str = "cosine", dropout: float = 0.2, in_channels: int = 1,
                 image_size: int = 28, channels_last: bool = True,
                 head_init: str = "embedding"):
        super().__init__()
        sched = noprop_schedule(T, schedule)
        self.T = T
        self.register_buffer("a", sched.a.float(), persistent=False)
        self.register_buffer("b", sched.b.float(), persistent=False)
        self.embed = LabelEmbedding(embedding, n_classes, embed_dim, prototypes)
        self.blocks = StackedPaperBlocks(T, self.embed.dim, n_classes, in_channels, image_size,
                                         dropout, channels_last)
        self.head = nn.Linear(self.embed.dim, n_classes)
        if head_init == "embedding":
            init_head_as_nearest_embedding(self.head, self.embed.weight)
        elif head_init != "default":
            raise ValueError(f"head_init: expected 'embedding' or 'default', got {head_init!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.blocks.image_features(x)                               # (T, B, 256)
        z = feats.new_zeros(x.shape[0], self.embed.dim).float()
        for t in range(1, self.T + 1):
            logits = self.blocks.from_features(feats[t - 1:t], z[None], slice(t - 1, t))[0]
            z = self.a[t] * (torch.softmax(logits.float(), -1) @ self.embed.weight) + self.b[t] * z
        return self.head(z)


class BackboneClassifier(_CrossEntropyClassifier):
    """ResNet-18/50 (torchvision, 1-channel stem) classifier: ``(B,C,H,W) -> logits (B,K)``."""

    def __init__(self, backbone: str = "resnet18", n_classes: int = 10, in_channels: int = 1,
                 stem: str = "imagenet"):
        super().__init__()
        self.net, _ = resnet_backbone(backbone, in_channels, stem, n_outputs=n_classes)
        self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))
