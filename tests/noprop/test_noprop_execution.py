"""NoProp execution choice: layouts agree, candidates follow the hardware, auto resolves."""
from __future__ import annotations

import pytest
import torch

from diffpolicy import speed
from diffpolicy.noprop import execution
from diffpolicy.noprop.backprop import BackboneClassifier
from diffpolicy.noprop.blocks import StackedPaperBlocks
from diffpolicy.noprop.dt import NoPropDT
from diffpolicy.noprop.train import TrainConfig, autocast

IMG = 12


@pytest.mark.parametrize("layout", ["per_block", "per_block_cl"])
def test_per_block_layouts_match_fused_outputs_and_gradients(layout):
    torch.manual_seed(0)
    a = StackedPaperBlocks(3, 8, 4, image_size=IMG, dropout=0.0)
    b = StackedPaperBlocks(3, 8, 4, image_size=IMG, dropout=0.0)
    b.load_state_dict(a.state_dict())
    b.set_layout(layout)
    assert (a.layout, b.layout) == ("fused", layout)
    assert b.conv2.weight.is_contiguous(memory_format=torch.channels_last) == (layout == "per_block_cl")
    x, z = torch.randn(6, 1, IMG, IMG), torch.randn(3, 6, 8)
    ya, yb = a(x, z), b(x, z)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-4, rtol=1e-4, msg=name)
    # a subset keeps its layout
    assert b.select([0, 2]).layout == layout
    with pytest.raises(ValueError, match="layout: expected one of"):
        a.set_layout("nchw")


def test_candidates_follow_hardware_and_config(monkeypatch):
    dt = NoPropDT(n_classes=4, T=2, embed_dim=8, image_size=IMG)
    resnet = BackboneClassifier("resnet18", 4)
    monkeypatch.setattr(speed, "bf16_native", lambda device="cpu": False)
    # the plain ops come first: the probe keeps them unless another layout is clearly faster
    assert execution.candidates(dt, "auto", "auto", "cpu") == [
        ("per_block", "fp32"), ("per_block_cl", "fp32"), ("fused", "fp32")]
    assert execution.candidates(resnet, "auto", "auto", "cpu") == [("fused", "fp32")]
    monkeypatch.setattr(speed, "bf16_native", lambda device="cpu": True)
    assert ("per_block", "bf16") in execution.candidates(dt, "auto", "auto", "cpu")
    assert execution.candidates(dt, "bf16", "per_block", "cpu") == [("per_block", "bf16")]


def test_resolve_applies_the_choice_and_fixed_settings_skip_the_probe(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFPOLICY_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = NoPropDT(n_classes=4, T=2, embed_dim=8, image_size=IMG)
    x, y = torch.randn(8, 1, IMG, IMG), torch.tensor([0, 1, 2, 3] * 2)
    logs = []
    cfg = execution.resolve(model, TrainConfig(progress=False), x, y, log=logs.append)
    assert cfg.precision in ("fp32", "bf16") and cfg.layout in StackedPaperBlocks.LAYOUTS
    assert model.blocks.layout == cfg.layout
    assert len(logs) == 1 and "[speed] noprop NoPropDT" in logs[0]
    fixed = execution.resolve(model, TrainConfig(precision="fp32", layout="per_block"), x, y,
                              log=logs.append)
    assert (fixed.precision, fixed.layout, model.blocks.layout) == ("fp32", "per_block", "per_block")
    assert len(logs) == 1                         # nothing measured, nothing logged


def test_unresolved_precision_is_refused():
    with pytest.raises(ValueError, match="precision='auto' is resolved by"):
        autocast("auto")
    with pytest.raises(ValueError, match="layout: expected one of"):
        TrainConfig(layout="grouped")
