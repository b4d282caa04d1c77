"""Networks for NoProp: the paper's denoising block, T of them fused, and ResNet backbones.

``PaperBlock`` is the readable reference (NoProp paper, Fig. 6)::

    image x (B, C, 28, 28): conv32-ReLU-maxpool-drop, conv64-ReLU-drop,
                            conv128-ReLU-maxpool-drop, FC256-BN        -> (B, 256)
    latent z (B, d):        FC256-BN-ReLU, + residual FC256-BN-ReLU-FC256-BN -> (B, 256)
    concat -> FC256-BN-ReLU -> FC128-BN-ReLU -> FC(classes)            -> logits (B, K)

``StackedPaperBlocks`` holds the parameters of ``n`` such blocks and runs them
all in one pass: the first conv is one conv with ``n * 32`` filters (the image
is shared), the others are grouped convolutions (``groups = n``), the fully
connected layers are batched matmuls over ``(n, B, F)`` activations and each
block has its own batch-norm statistics.  Block ``i`` only ever reads its own
slice of every tensor, so the gradient of block ``i``'s loss is zero on every
other block's parameters (``tests/noprop`` checks this); fusing is a speed-up,
not a change of method.  Whether the grouped convolutions beat one plain
convolution per block, and whether channels-last beats NCHW, depends on the
machine, so :meth:`StackedPaperBlocks.set_layout` offers three layouts over the
same parameters and :mod:`diffpolicy.speed` picks by measurement
(``benchmarks/bench_noprop.py`` times them against separate modules).

ResNet backbones are torchvision's ResNet-18/50 with a 1-channel stem.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet50

HIDDEN = 256
CONV_WIDTHS = (32, 64, 128)


class PaperBlock(nn.Module):
    """One NoProp-DT denoising block: ``forward(x (B,C,H,W), z (B,d)) -> logits (B,K)``."""

    def __init__(self, embed_dim: int, n_classes: int, in_channels: int = 1,
                 image_size: int = 28, dropout: float = 0.2):
        super().__init__()
        c1, c2, c3 = CONV_WIDTHS
        flat = c3 * (image_size // 4) ** 2
        self.image = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Flatten(), nn.Linear(flat, HIDDEN), nn.BatchNorm1d(HIDDEN))
        self.z_in = nn.Sequential(nn.Linear(embed_dim, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU())
        self.z_res = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(),
                                   nn.Linear(HIDDEN, HIDDEN), nn.BatchNorm1d(HIDDEN))
        self.out = nn.Sequential(nn.Linear(2 * HIDDEN, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(),
                                 nn.Linear(HIDDEN, 128), nn.BatchNorm1d(128), nn.ReLU(),
                                 nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        fx = self.image(x)
        h = self.z_in(z)
        h = h + self.z_res(h)
        return self.out(torch.cat([fx, h], dim=-1))


class _ReluDropout(torch.autograd.Function):
    """``dropout(relu(x))`` in one pass, with a bool mask saved for the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = torch.empty_like(x, dtype=torch.int16).random_() >= round(p * 32768)   # 0 .. 32767
        keep &= x > 0
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return x * keep * ctx.scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        keep, = ctx.saved_tensors
        if grad.dim() == 4 and keep.is_contiguous(memory_format=torch.channels_last) \
                and not keep.is_contiguous():
            # the gradient of the NCHW-order flatten after the last block arrives NCHW; giving
            # it the input's channels-last format spares max-pool's and conv's backward a copy
            grad = grad.contiguous(memory_format=torch.channels_last)
        return grad * keep * ctx.scale, None


def relu_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(F.relu(x), p, training)`` with an int16 random mask (keep-probability
    resolution 1/32768), fused into one autograd node.

    Same law as the plain ops up to that resolution and the same gradient (zero
    where ``x <= 0``, as ``relu``'s).  Drawing one float per activation and the
    separate ReLU, dropout and their backward passes dominated the blocks'
    elementwise work; this was about 2x faster on CPUs with AVX-512 and with AVX2
    kernels alike, in NCHW and channels-last.  The mask follows ``x``'s memory format.
    """
    if not training or p == 0.0:
        return F.relu(x)
    return _ReluDropout.apply(x, p)


class StackedLinear(nn.Module):
    """``n`` independent linear layers: ``(k, B, i) -> (k, B, o)`` for blocks ``sl``."""

    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        bound = 1 / math.sqrt(d_in)   # nn.Linear's default init, per block
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, d_out).uniform_(-bound, bound))

    def forward(self, h: torch.Tensor, sl: slice = slice(None)) -> torch.Tensor:
        if sl == slice(None):    # no slice view: its backward would zero-fill a weight-sized gradient
            return torch.baddbmm(self.bias.unsqueeze(1), h, self.weight)
        return torch.baddbmm(self.bias[sl].unsqueeze(1), h, self.weight[sl])


class StackedBatchNorm(nn.Module):
    """``n`` independent BatchNorm1d layers on ``(k, B, F)``; statistics over ``B``.

    Matches ``nn.BatchNorm1d`` (biased variance to normalise, unbiased in the
    running estimate, momentum 0.1).  Half/bf16 inputs are normalised in float32.
    """

    def __init__(self, n: int, features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(n, features))
        self.bias = nn.Parameter(torch.zeros(n, features))
        self.register_buffer("running_mean", torch.zeros(n, features))
        self.register_buffer("running_var", torch.ones(n, features))

    def forward(self, x: torch.Tensor, sl: slice = slice(None)) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        if self.training:
            var, mean = torch.var_mean(x, dim=1, unbiased=False)
            with torch.no_grad():
                m, b = self.momentum, x.shape[1]
                self.running_mean[sl].mul_(1 - m).add_(m * mean)
                self.running_var[sl].mul_(1 - m).add_(m * var * b / max(b - 1, 1))
        else:
            mean, var = self.running_mean[sl], self.running_var[sl]
        scale = self.weight[sl] * torch.rsqrt(var + self.eps)
        return (x - mean.unsqueeze(1)) * scale.unsqueeze(1) + self.bias[sl].unsqueeze(1)


class StackedPaperBlocks(nn.Module):
    """``n`` independent :class:`PaperBlock` s evaluated together.

    ``image_features(x (B,C,H,W)) -> (n, B, 256)`` runs every block's image path
    (it does not depend on z, so inference computes it once);
    ``from_features(f (k,B,256), z (k,B,d), sl) -> logits (k,B,K)`` runs the
    latent path of blocks ``sl`` (a slice of length k);
    ``forward(x, z (n,B,d)) -> logits (n,B,K)`` does both for all blocks.
    """

    def __init__(self, n: int, embed_dim: int, n_classes: int, in_channels: int = 1,
                 image_size: int = 28, dropout: float = 0.2, channels_last: bool = True):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4, got {image_size}")
        c1, c2, c3 = CONV_WIDTHS
        self.n, self.embed_dim, self.n_classes = n, embed_dim, n_classes
        self.in_channels, self.image_size, self.dropout = in_channels, image_size, dropout
        self.channels_last = channels_last
        self._layout = "fused"       # see set_layout
        self.conv1 = nn.Conv2d(in_channels, n * c1, 3, padding=1)
        self.conv2 = nn.Conv2d(n * c1, n * c2, 3, padding=1, groups=n)
        self.conv3 = nn.Conv2d(n * c2, n * c3, 3, padding=1, groups=n)
        self.flat = c3 * (image_size // 4) ** 2
        self.img_fc = StackedLinear(n, self.flat, HIDDEN)
        self.img_bn = StackedBatchNorm(n, HIDDEN)
        self.z_in, self.z_in_bn = StackedLinear(n, embed_dim, HIDDEN), StackedBatchNorm(n, HIDDEN)
        self.res1, self.res1_bn = StackedLinear(n, HIDDEN, HIDDEN), StackedBatchNorm(n, HIDDEN)
        self.res2, self.res2_bn = StackedLinear(n, HIDDEN, HIDDEN), StackedBatchNorm(n, HIDDEN)
        self.out1, self.out1_bn = StackedLinear(n, 2 * HIDDEN, HIDDEN), StackedBatchNorm(n, HIDDEN)
        self.out2, self.out2_bn = StackedLinear(n, HIDDEN, 128), StackedBatchNorm(n, 128)
        self.out3 = StackedLinear(n, 128, n_classes)
        # nn.Conv2d initialises per output channel from fan_in: same law as n separate convs
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _conv_params(self, conv: nn.Conv2d, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        if sl == slice(None):
            return conv.weight, conv.bias
        return (conv.weight.unflatten(0, (self.n, -1))[sl].flatten(0, 1),
                conv.bias.unflatten(0, (self.n, -1))[sl].flatten())

    # the first is the reference of the speed probe (the plain ops); see set_layout
    LAYOUTS = ("per_block", "per_block_cl", "fused")

    def set_layout(self, layout: str) -> "StackedPaperBlocks":
        """How the image path runs (same parameters, same results within float rounding).

        ``"per_block"``: one plain convolution per block, contiguous NCHW and
        ``F.dropout`` (the ops separate modules run);
        ``"per_block_cl"``: one convolution per block in channels-last with
        :func:`relu_dropout` (channels-last max-pooling was 2-4x faster than NCHW);
        ``"fused"``: one grouped convolution for all blocks, channels-last.
        Which is fastest depends on the CPU and GPU (:mod:`diffpolicy.speed`
        measures it); call before the optimiser exists.
        """
        if layout not in self.LAYOUTS:
            raise ValueError(f"layout: expected one of {self.LAYOUTS}, got {layout!r}")
        self._layout = layout
        self.channels_last = layout != "per_block"
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for conv in (self.conv1, self.conv2, self.conv3):
            conv.weight.data = conv.weight.data.contiguous(memory_format=fmt)
        return self

    @property
    def layout(self) -> str:
        return self._layout

    def image_features(self, x: torch.Tensor, sl: slice = slice(None)) -> torch.Tensor:
        """Image path of blocks ``sl``: ``(B, C, H, W) -> (k, B, 256)``."""
        k = len(range(self.n)[sl])
        if self._layout != "fused":
            h = torch.stack([self._image_path(x, slice(i, i + 1), 1)[0]
                             for i in range(*sl.indices(self.n))])
            return self.img_bn(self.img_fc(h, sl), sl)
        return self.img_bn(self.img_fc(self._image_path(x, sl, k), sl), sl)

    def _image_path(self, x: torch.Tensor, sl: slice, k: int) -> torch.Tensor:
        """Convolutions of blocks ``sl`` (``k`` of them) before the FC: ``(k, B, C*H*W)``."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        p, train = self.dropout, self.training
        if self._layout == "per_block":                                # the plain ops
            def act(h):
                return F.dropout(F.relu(h), p, train)
        else:
            def act(h):
                return relu_dropout(h, p, train)
        # max-pool before ReLU (they commute) halves the ReLU work on the big maps
        h = F.conv2d(x, *self._conv_params(self.conv1, sl), padding=1)
        if self.channels_last:   # a 1-channel input is NCHW too, so the conv returned NCHW
            h = h.contiguous(memory_format=torch.channels_last)     # (max-pool: 2-4x faster)
        h = act(F.max_pool2d(h, 2))
        h = F.conv2d(h, *self._conv_params(self.conv2, sl), padding=1, groups=k)
        h = act(h)
        h = F.conv2d(h, *self._conv_params(self.conv3, sl), padding=1, groups=k)
        h = act(F.max_pool2d(h, 2))
        return h.reshape(h.shape[0], k, self.flat).transpose(0, 1)     # (k, B, C*H*W), NCHW order

    def from_features(self, feats: torch.Tensor, z: torch.Tensor,
                      sl: slice = slice(None)) -> torch.Tensor:
        h = F.relu(self.z_in_bn(self.z_in(z, sl), sl))
        r = F.relu(self.res1_bn(self.res1(h, sl), sl))
        h = h + self.res2_bn(self.res2(r, sl), sl)
        o = F.relu(self.out1_bn(self.out1(torch.cat([feats, h], dim=-1), sl), sl))
        o = F.relu(self.out2_bn(self.out2(o, sl), sl))
        return self.out3(o, sl)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.image_features(x), z)

    # ---- per-block views: conversion to / from PaperBlock, subsets, merging ----
    def _pairs(self, block: PaperBlock):
        """(stacked tensor, block tensor, kind) for every parameter and buffer."""
        img, zi, zr, out = block.image, block.z_in, block.z_res, block.out
        convs = [(self.conv1, img[0]), (self.conv2, img[4]), (self.conv3, img[7])]
        lins = [(self.img_fc, img[12]), (self.z_in, zi[0]), (self.res1, zr[0]), (self.res2, zr[3]),
                (self.out1, out[0]), (self.out2, out[3]), (self.out3, out[6])]
        bns = [(self.img_bn, img[13]), (self.z_in_bn, zi[1]), (self.res1_bn, zr[1]),
               (self.res2_bn, zr[4]), (self.out1_bn, out[1]), (self.out2_bn, out[4])]
        for s, b in convs:
            yield s.weight, b.weight, "rows"
            yield s.bias, b.bias, "rows"
        for s, b in lins:
            yield s.weight, b.weight, "linear"
            yield s.bias, b.bias, "index"
        for s, b in bns:
            for name in ("weight", "bias", "running_mean", "running_var"):
                yield getattr(s, name), getattr(b, name), "index"

    def _block_slice(self, tensor: torch.Tensor, i: int, kind: str) -> torch.Tensor:
        if kind == "rows":
            return tensor.unflatten(0, (self.n, -1))[i]
        return tensor[i]

    @torch.no_grad()
    def load_block(self, i: int, block: PaperBlock) -> None:
        """Copy ``block``'s parameters and statistics into slot ``i``."""
        for s, b, kind in self._pairs(block):
            self._block_slice(s, i, kind).copy_(b.t() if kind == "linear" else b)

    @torch.no_grad()
    def to_block(self, i: int) -> PaperBlock:
        """Slot ``i`` as a standalone :class:`PaperBlock` (same outputs, same mode)."""
        block = PaperBlock(self.embed_dim, self.n_classes, self.in_channels, self.image_size,
                           self.dropout)
        for s, b, kind in self._pairs(block):
            src = self._block_slice(s, i, kind)
            b.copy_(src.t() if kind == "linear" else src)
        return block.train(self.training)

    @classmethod
    def from_blocks(cls, blocks: list[PaperBlock], channels_last: bool = True) -> "StackedPaperBlocks":
        b0 = blocks[0]
        conv1 = b0.image[0]
        image_size = int(math.isqrt(b0.image[12].in_features // CONV_WIDTHS[2])) * 4
        stacked = cls(len(blocks), b0.z_in[0].in_features, b0.out[6].out_features,
                      conv1.in_channels, image_size, b0.image[3].p, channels_last)
        for i, blk in enumerate(blocks):
            stacked.load_block(i, blk)
        return stacked.train(b0.training)

    def per_block(self, p: torch.Tensor) -> torch.Tensor:
        """A parameter or buffer of this stack viewed block first, ``(n, ...)`` (a view)."""
        return p.unflatten(0, (self.n, -1))

    @torch.no_grad()
    def select(self, ids: list[int]) -> "StackedPaperBlocks":
        """A new stack holding blocks ``ids`` (0-based slots of this stack), same state."""
        return StackedPaperBlocks.from_blocks([self.to_block(i) for i in ids]).set_layout(self.layout)

    @classmethod
    def merge(cls, stacks: list["StackedPaperBlocks"]) -> "StackedPaperBlocks":
        """Concatenate stacks (blocks in the given order)."""
        return cls.from_blocks([s.to_block(i) for s in stacks for i in range(s.n)]
                               ).set_layout(stacks[0].layout)


# ---------------------------------------------------------------- ResNet backbones
def resnet_backbone(name: str = "resnet18", in_channels: int = 1, stem: str = "imagenet",
                    n_outputs: int | None = None) -> tuple[nn.Module, int]:
    """torchvision ResNet-18/50 for small 1-channel images; returns ``(net, out_dim)``.

    ``stem="imagenet"`` keeps the 7x7 stride-2 conv and max-pool (28 px -> 7 px
    after the stem; what the course paper's code ran); ``stem="small"`` uses a
    3x3 stride-1 conv without max-pool (28 px kept; about 2-3x the compute).
    ``n_outputs=None`` drops the final FC: ``net(x) -> (B, 512 | 2048)`` features;
    otherwise ``net(x) -> (B, n_outputs)`` logits.
    """
    makers = {"resnet18": resnet18, "resnet50": resnet50}
    if name not in makers:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(makers)}")
    if stem not in ("imagenet", "small"):
        raise ValueError(f"unknown ResNet stem {stem!r}; expected 'imagenet' or 'small'")
    net = makers[name](weights=None)
    if stem == "imagenet":
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    else:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    out_dim = net.fc.in_features
    net.fc = nn.Identity() if n_outputs is None else nn.Linear(out_dim, n_outputs)
    return net, (out_dim if n_outputs is None else n_outputs)
