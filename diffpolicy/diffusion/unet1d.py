"""ConditionalUnet1D: the temporal-convolution epsilon predictor of Diffusion Policy.

The network maps a noisy action sequence ``(B, H, Da)``, the diffusion step
``(B,)`` and a global condition ``(B, G)`` (flattened observation features) to
the predicted noise ``(B, H, Da)``.  Time runs along a 1-D convolution axis;
the action dimensions are its input channels.

Architecture (Chi et al. 2023, the published low-dim model)::

    cond = [step_encoder(k) (dsed), global_cond (G)]                 (B, dsed + G)
    down:  for (c_in, c_out) in (Da, d0), (d0, d1), (d1, d2):
               ResBlock(c_in, c_out), ResBlock(c_out, c_out), keep skip,
               stride-2 Conv1d(c_out, c_out, 3) except at the last level
    mid:   ResBlock(d2, d2) x 2
    up:    for (c_in, c_out) in (d1, d2), (d0, d1):
               cat skip -> ResBlock(2 c_out, c_in), ResBlock(c_in, c_in),
               ConvTranspose1d(c_in, c_in, 4, stride 2)
    out:   Conv1dBlock(d0, d0) -> Conv1d(d0, Da, 1)

    ResBlock(x, cond) = Block(FiLM(Block(x), cond)) + residual(x)
    Block = Conv1d(k, padding k // 2) -> GroupNorm(n_groups) -> Mish

As in the reference, the skip of the first level is kept but never used.  The
reference has three levels, so the horizon must be divisible by 4
(16 -> 8 -> 4 -> 8 -> 16); any number of levels L >= 1 works here, with the
horizon divisible by ``2 ** (L - 1)``.

Two execution paths share the same parameters (same ``state_dict``):
``fast=False`` runs plain ``nn.Conv1d``/``nn.GroupNorm``/``nn.Mish`` in the
``(B, C, H)`` layout, a faithful re-implementation of the reference;
``fast=True`` (the default) runs the channels-last matmul path of
:mod:`diffpolicy.diffusion.fast_conv`, equal within float tolerance and
several times faster on CPU.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from diffpolicy.diffusion import fast_conv
from diffpolicy.diffusion.embeddings import FiLM, step_encoder


def plain_conv(conv: nn.Conv1d | nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for the plain path, ``(B, C, H)``.

    Weights kept in the fast path's tap-major layout are not contiguous, and
    ``nn.Conv1d`` would copy them on every call.  Without autograd (inference)
    the contiguous copy is made once and reused until the weight changes
    (its version counter), so the plain path runs as fast as with plain weights.
    """
    w = conv.weight
    if w.is_contiguous() or torch.is_grad_enabled() or w.is_inference():   # inference tensors have no version
        return conv(x)
    key = (w.data_ptr(), w._version)
    cached = conv.__dict__.get("_plain_weight")
    if cached is None or cached[0] != key:
        cached = (key, w.detach().contiguous())
        conv.__dict__["_plain_weight"] = cached
    if isinstance(conv, nn.ConvTranspose1d):
        return F.conv_transpose1d(x, cached[1], conv.bias, conv.stride, conv.padding,
                                  conv.output_padding, conv.groups, conv.dilation)
    return conv._conv_forward(x, cached[1], conv.bias)


class Conv1dBlock(nn.Module):
    """Conv1d(kernel k, padding k // 2) -> GroupNorm(n_groups) -> Mish; ``(B, Cin, H) -> (B, Cout, H)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8):
        super().__init__()
        if out_channels % n_groups:
            raise ValueError(f"Conv1dBlock: out_channels ({out_channels}) must be divisible "
                             f"by n_groups ({n_groups})")
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(n_groups, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(self.norm(plain_conv(self.conv, x)))

    def forward_cl(self, x: torch.Tensor) -> torch.Tensor:
        """Channels-last fast path: ``(B, H, Cin) -> (B, H, Cout)``."""
        y = fast_conv.conv1d_cl(x, self.conv.weight, self.conv.bias)
        return fast_conv.group_norm_mish_cl(y, self.norm.num_groups, self.norm.weight,
                                            self.norm.bias, self.norm.eps)


class ConditionalResidualBlock1D(nn.Module):
    """Block -> FiLM(cond) -> Block, plus a residual (1x1 conv when channels change).

    ``forward(x (B, Cin, H), cond (B, cond_dim)) -> (B, Cout, H)``.
    """

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int,
                 kernel_size: int = 5, n_groups: int = 8):
        super().__init__()
        self.block1 = Conv1dBlock(in_channels, out_channels, kernel_size, n_groups)
        self.film = FiLM(cond_dim, out_channels)
        self.block2 = Conv1dBlock(out_channels, out_channels, kernel_size, n_groups)
        self.residual = (nn.Conv1d(in_channels, out_channels, 1)
                         if in_channels != out_channels else nn.Identity())

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.film(self.block1(x), cond)
        return self.block2(out) + self.residual(x)

    def forward_cl(self, x: torch.Tensor, mish_cond: torch.Tensor) -> torch.Tensor:
        """Channels-last fast path: ``(B, H, Cin) -> (B, H, Cout)``.

        ``mish_cond`` = ``mish(cond)`` ``(B, cond_dim)``, computed once for all blocks
        (every FiLM starts with the same Mish of the same condition).
        """
        linear = self.film.proj[1]
        scale, bias = F.linear(mish_cond, linear.weight, linear.bias).unsqueeze(1).chunk(2, dim=-1)
        out = torch.addcmul(bias, scale, self.block1.forward_cl(x))      # FiLM, (B, H, Cout)
        if isinstance(self.residual, nn.Conv1d):
            res = fast_conv.linear_cl(x, self.residual.weight, self.residual.bias)
        else:
            res = x
        return self.block2.forward_cl(out) + res


class ConditionalUnet1D(nn.Module):
    """Epsilon predictor over action sequences with a global condition (see module doc).

    Args:
        input_dim: action dimension Da (channels of the sequence).
        global_cond_dim: size G of the flattened observation condition (0 for none).
        down_dims: channel widths of the levels, e.g. (d0, d1, d2) for three (any number >= 1;
            the horizon must then be divisible by ``2 ** (len(down_dims) - 1)``).
        step_embed_dim: size of the diffusion-step embedding (dsed).
        kernel_size: temporal kernel of every Conv1dBlock (odd).
        n_groups: GroupNorm groups.
        fast: use the channels-last matmul path (same parameters, same results
            within float tolerance); can be switched later via ``model.fast``.
    """

    def __init__(self, input_dim: int, global_cond_dim: int,
                 down_dims: tuple[int, ...] | list[int] = (256, 512, 1024),
                 step_embed_dim: int = 256, kernel_size: int = 5, n_groups: int = 8,
                 fast: bool = True):
        super().__init__()
        down_dims = tuple(int(d) for d in down_dims)
        if not down_dims or min(down_dims) < 1:
            raise ValueError(f"ConditionalUnet1D: down_dims must hold one positive width per level "
                             f"(e.g. 3 entries for three levels), got {down_dims}")
        if kernel_size % 2 == 0:
            raise ValueError(f"ConditionalUnet1D: kernel_size must be odd, got {kernel_size}")
        if input_dim < 1 or global_cond_dim < 0:
            raise ValueError(f"ConditionalUnet1D: need input_dim >= 1 and global_cond_dim >= 0, "
                             f"got {input_dim} and {global_cond_dim}")
        self.input_dim, self.global_cond_dim = input_dim, global_cond_dim
        self.down_dims, self.kernel_size, self.fast = down_dims, kernel_size, fast
        cond_dim = step_embed_dim + global_cond_dim
        self.step_encoder = step_encoder(step_embed_dim)

        def res(cin: int, cout: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(cin, cout, cond_dim, kernel_size, n_groups)

        dims = (input_dim,) + down_dims
        in_out = list(zip(dims[:-1], dims[1:]))
        self.down = nn.ModuleList()
        for i, (cin, cout) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.down.append(nn.ModuleList([
                res(cin, cout), res(cout, cout),
                nn.Identity() if last else nn.Conv1d(cout, cout, 3, stride=2, padding=1)]))
        self.mid = nn.ModuleList([res(down_dims[-1], down_dims[-1]) for _ in range(2)])
        self.up = nn.ModuleList()
        for cin, cout in reversed(in_out[1:]):
            self.up.append(nn.ModuleList([
                res(2 * cout, cin), res(cin, cin),
                nn.ConvTranspose1d(cin, cin, 4, stride=2, padding=1)]))
        self.final_block = Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups)
        self.final_conv = nn.Conv1d(down_dims[0], input_dim, 1)
        if fast:
            self.time_major_weights_()

    def time_major_weights_(self) -> "ConditionalUnet1D":
        """Store every temporal kernel tap-major in memory (same shapes and values).

        A Conv1d weight keeps its shape ``(Cout, Cin, k)`` but is laid out as a
        contiguous ``(k, Cin, Cout)`` array (a ConvTranspose1d weight ``(Cin, Cout, k)``
        as ``(Cin, k, Cout)``), which is the matrix the fast path multiplies by:
        it then reads the weight as a view instead of copying and transposing it
        twice per training step.  Gradients and optimiser states follow the same
        layout; ``state_dict`` values are unchanged.  Done by the constructor when
        ``fast=True``; the plain path accepts either layout.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv1d) and module.kernel_size[0] > 1:
                w = module.weight.detach()
                module.weight = nn.Parameter(w.permute(2, 1, 0).contiguous().permute(2, 1, 0))
            elif isinstance(module, nn.ConvTranspose1d):
                w = module.weight.detach()
                module.weight = nn.Parameter(w.permute(0, 2, 1).contiguous().permute(0, 2, 1))
        return self

    def standard_weights_(self) -> "ConditionalUnet1D":
        """Undo :meth:`time_major_weights_`: every weight contiguous in its own shape
        (what ``nn.Conv1d`` reads without a copy).  Same values, new parameter objects."""
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and not module.weight.is_contiguous():
                module.weight = nn.Parameter(module.weight.detach().contiguous())
        return self

    def set_fast(self, fast: bool) -> "ConditionalUnet1D":
        """Switch the path and give the weights that path's layout (before an optimiser exists:
        the parameters are replaced).  To switch only the path, set ``model.fast``."""
        self.fast = bool(fast)
        return self.time_major_weights_() if self.fast else self.standard_weights_()

    def _condition(self, timestep: torch.Tensor | int | float, global_cond: torch.Tensor | None,
                   batch: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device)
        if t.dim() == 0:
            t = t.expand(batch)
        elif t.shape != (batch,):
            raise ValueError(f"ConditionalUnet1D: timestep must be a scalar or shape ({batch},), "
                             f"got {tuple(t.shape)}")
        sinusoid, *mlp = self.step_encoder      # the sinusoid is float32; follow the weights
        cond = sinusoid(t).to(mlp[0].weight.dtype)
        for layer in mlp:
            cond = layer(cond)
        if self.global_cond_dim:
            if global_cond is None or global_cond.shape != (batch, self.global_cond_dim):
                found = None if global_cond is None else tuple(global_cond.shape)
                raise ValueError(f"ConditionalUnet1D: global_cond must have shape "
                                 f"({batch}, {self.global_cond_dim}), got {found}")
            cond = torch.cat([cond, global_cond.to(cond.dtype)], dim=-1)
        return cond

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int | float,
                global_cond: torch.Tensor | None = None) -> torch.Tensor:
        """sample ``(B, H, Da)``, timestep ``(B,)`` or scalar, global_cond ``(B, G)`` -> ``(B, H, Da)``."""
        if sample.dim() != 3 or sample.shape[-1] != self.input_dim:
            raise ValueError(f"ConditionalUnet1D: sample must have shape (B, H, {self.input_dim}), "
                             f"got {tuple(sample.shape)}")
        stride = 2 ** (len(self.down_dims) - 1)
        if sample.shape[1] % stride:
            raise ValueError(f"ConditionalUnet1D: horizon H must be divisible by {stride} "
                             f"({len(self.down_dims) - 1} stride-2 levels), got H={sample.shape[1]}")
        cond = self._condition(timestep, global_cond, sample.shape[0], sample.device)
        if self.fast:
            return self._forward_cl(sample, cond)
        return self._forward_plain(sample.transpose(1, 2), cond).transpose(1, 2)

    def _forward_plain(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Reference path in the ``(B, C, H)`` layout."""
        skips = []
        for res1, res2, downsample in self.down:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = x if isinstance(downsample, nn.Identity) else plain_conv(downsample, x)
        for block in self.mid:
            x = block(x, cond)
        for res1, res2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = plain_conv(upsample, res2(res1(x, cond), cond))
        return self.final_conv(self.final_block(x))

    def _forward_cl(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Fast path in the channels-last ``(B, H, C)`` layout."""
        cond = F.mish(cond)
        skips = []
        for res1, res2, downsample in self.down:
            x = res2.forward_cl(res1.forward_cl(x, cond), cond)
            skips.append(x)
            if isinstance(downsample, nn.Conv1d):
                x = fast_conv.downsample_cl(x, downsample.weight, downsample.bias)
        for block in self.mid:
            x = block.forward_cl(x, cond)
        for res1, res2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=-1)
            x = res2.forward_cl(res1.forward_cl(x, cond), cond)
            x = fast_conv.upsample_cl(x, upsample.weight, upsample.bias)
        x = self.final_block.forward_cl(x)
        return fast_conv.linear_cl(x, self.final_conv.weight, self.final_conv.bias)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
