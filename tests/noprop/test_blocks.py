"""The fused T-block network equals T separate paper blocks; ResNet backbones fit 28x28x1; relu_dropout."""
from __future__ import annotations

import pytest
import torch

from diffpolicy.noprop.blocks import PaperBlock, StackedPaperBlocks, relu_dropout, resnet_backbone


def _blocks(n=3, d=6, k=4, dropout=0.0):
    torch.manual_seed(0)
    return [PaperBlock(d, k, dropout=dropout) for _ in range(n)]


@pytest.mark.parametrize("training", [True, False])
def test_stacked_blocks_match_separate_blocks(training):
    blocks = _blocks()
    for b in blocks:   # non-trivial BN statistics for eval mode
        b.train()(torch.randn(8, 1, 28, 28), torch.randn(8, 6))
    stack = StackedPaperBlocks.from_blocks(blocks)
    stack.train(training)
    for b in blocks:
        b.train(training)
    x, z = torch.randn(8, 1, 28, 28), torch.randn(3, 8, 6)
    ref = torch.stack([b(x, z[i]) for i, b in enumerate(blocks)])
    torch.testing.assert_close(stack(x, z), ref, atol=1e-4, rtol=1e-4)
    # a slice of the stack computes exactly those blocks
    sub = stack.from_features(stack.image_features(x, slice(1, 3)), z[1:3], slice(1, 3))
    torch.testing.assert_close(sub, ref[1:3], atol=1e-4, rtol=1e-4)


def test_to_block_select_and_merge_round_trip():
    blocks = _blocks()
    stack = StackedPaperBlocks.from_blocks(blocks).eval()
    x, z = torch.randn(4, 1, 28, 28), torch.randn(3, 4, 6)
    ref = stack(x, z)
    torch.testing.assert_close(stack.to_block(2).eval()(x, z[2]), ref[2])
    merged = StackedPaperBlocks.merge([stack.select([0]), stack.select([1, 2])]).eval()
    torch.testing.assert_close(merged(x, z), ref)


def test_stacked_init_is_independent_per_block():
    stack = StackedPaperBlocks(4, 6, 4)
    w = stack.per_block(stack.conv3.weight)
    assert w.shape[0] == 4 and not torch.equal(w[0], w[1])
    # per-block std of the big FC follows nn.Linear's fan-in law
    assert abs(float(stack.img_fc.weight[0].detach().std()) - (1 / 6272) ** 0.5 / 3 ** 0.5) < 1e-3


@pytest.mark.parametrize("name,stem,dim", [("resnet18", "imagenet", 512), ("resnet18", "small", 512),
                                           ("resnet50", "imagenet", 2048)])
def test_resnet_backbones_take_one_channel_28px(name, stem, dim):
    net, out_dim = resnet_backbone(name, 1, stem)
    assert out_dim == dim
    assert net.eval()(torch.randn(2, 1, 28, 28)).shape == (2, dim)
    clf, k = resnet_backbone(name, 1, stem, n_outputs=10)
    assert k == 10 and clf.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_bad_backbone_names_are_reported():
    with pytest.raises(ValueError, match="unknown backbone 'resnet34'"):
        resnet_backbone("resnet34")
    with pytest.raises(ValueError, match="unknown ResNet stem 'huge'"):
        resnet_backbone("resnet18", stem="huge")


@pytest.mark.parametrize("channels_last", [False, True])
def test_relu_dropout_has_the_law_and_gradient_of_relu_then_dropout(channels_last):
    torch.manual_seed(0)
    x = torch.randn(64, 8, 16, 16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = relu_dropout(x, 0.25, True)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    kept = y != 0
    positive = x.detach() > 0
    assert not (kept & ~positive).any()                                  # relu first
    assert abs(kept[positive].float().mean().item() - 0.75) < 0.01       # keep-probability 1 - p
    torch.testing.assert_close(y[kept], x.detach()[kept] / 0.75)         # inverted-dropout scale
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, torch.where(kept, g / 0.75, 0.0))  # the same mask, zero off it
    # evaluation and p = 0 are the plain relu
    assert torch.equal(relu_dropout(x.detach(), 0.25, False), torch.relu(x.detach()))
    assert torch.equal(relu_dropout(x.detach(), 0.0, True), torch.relu(x.detach()))


def test_channels_last_layouts_keep_channels_last_through_the_image_path(monkeypatch):
    """conv1 on a 1-channel image returns NCHW unless told; the flatten's gradient arrives NCHW.
    Both would send max-pool (forward and backward) through the slow NCHW kernels and copies."""
    stack = StackedPaperBlocks(2, 6, 4, image_size=12, dropout=0.2).set_layout("per_block_cl")
    x = torch.randn(5, 1, 12, 12)
    inputs, grads = [], []
    max_pool2d = torch.nn.functional.max_pool2d

    def spy(h, *args, **kwargs):
        inputs.append(h.is_contiguous(memory_format=torch.channels_last))
        h.register_hook(lambda g: grads.append(g.is_contiguous(memory_format=torch.channels_last)))
        return max_pool2d(h, *args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "max_pool2d", spy)
    stack.image_features(x).sum().backward()
    assert inputs == [True] * 4 and grads == [True] * 4        # 2 blocks x 2 pools
