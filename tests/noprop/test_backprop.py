"""Backprop baselines: end-to-end gradients (the contrast with NoProp's locality)."""
from __future__ import annotations

import torch

from diffpolicy.noprop.backprop import BackboneClassifier, BackpropDT
from noprop_helpers import IMG


def test_backprop_twin_sends_gradient_to_every_block():
    torch.manual_seed(0)
    m = BackpropDT(n_classes=4, T=4, image_size=IMG, dropout=0.0)
    x, y = torch.randn(8, 1, IMG, IMG), torch.tensor([0, 1, 2, 3] * 2)
    m.loss(x, y)["total"].backward()
    per_block = m.blocks.per_block(m.blocks.conv3.weight.grad).reshape(4, -1).abs().sum(1)
    assert (per_block > 0).all()
    assert m.predict(x).shape == (8, 4)


def test_backbone_classifier_learns_a_batch():
    torch.manual_seed(0)
    m = BackboneClassifier("resnet18", n_classes=4)
    x, y = torch.randn(8, 1, 28, 28), torch.tensor([0, 1, 2, 3] * 2)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        opt.zero_grad()
        loss = m.loss(x, y)["total"]
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert m.loss(x, y)["total"].item() < first
