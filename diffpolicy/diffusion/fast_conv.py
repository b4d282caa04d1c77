"""Channels-last CPU kernels for the temporal UNet (the ``fast=True`` path).

Every tensor here is ``(B, H, C)``: time on axis 1, channels last, so each
time step is one contiguous row of C floats and a temporal convolution is a
few large matrix products.  All functions are exact re-formulations of the
reference layers (equal within float rounding), tested against them in
``tests/diffusion/test_unet.py``.

Why it is faster than ``nn.Conv1d`` on CPU (see ``benchmarks/bench_unet.py``):

* :func:`conv1d_cl`, a "same" convolution of kernel k, runs one matrix
  product per output step t over only the taps that land inside the
  sequence.  At the UNet's deepest level (H = 4, k = 5) 30 % of a padded
  convolution's multiply-adds hit the zero padding; they are skipped, and the
  products (M = B rows, K = up to k C) run near the machine's matmul peak.
  The backward pass is the same products transposed.
* :func:`group_norm_mish_cl` fuses GroupNorm and Mish into one autograd node
  with a hand-written backward and a cheaper Mish (one ``exp`` instead of
  ``exp``, ``log1p`` and ``tanh``); optionally compiled with
  ``torch.compile`` (:func:`set_compile`).
"""
from __future__ import annotations

import functools

import torch
from torch.nn import functional as F

_COMPILE = False
# conv1d_cl runs one product per output step when H <= PER_STEP_MAX_H and the
# products are big enough to stay efficient (batch and input channels both >=
# PER_STEP_MIN_ROWS, so training batches); otherwise one im2col product (fewer
# ops: better for batch-1 inference and the 2-channel input layer).
PER_STEP_MAX_H = 16
PER_STEP_MIN_ROWS = 16
# without autograd, group_norm_mish_cl uses the native ops up to this many elements
SMALL_INFERENCE_NUMEL = 1 << 15
_MISH_CLAMP = 20.0   # tanh(softplus(y)) == 1 in float32 for y > 20


def set_compile(enabled: bool) -> None:
    """Run the fused GroupNorm+Mish through ``torch.compile`` (inductor, needs a C++
    compiler; compiles once per shape, ~20 s the first time).  Off by default."""
    global _COMPILE
    _COMPILE = bool(enabled)


# ----------------------------------------------------------------------------
# Temporal convolution as per-step matrix products
# ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _plan(length: int, kernel: int) -> tuple[tuple[int, int, int, int, int], ...]:
    """For a stride-1 convolution with zero padding kernel // 2: per output step t,
    the valid input steps [s0, s1) and the taps [j0, j1) that read them."""
    pad = kernel // 2
    plan = []
    for t in range(length):
        j0, j1 = max(0, pad - t), min(kernel, length + pad - t)
        plan.append((t, t + j0 - pad, t + j1 - pad, j0, j1))
    return tuple(plan)


class _TemporalConv(torch.autograd.Function):
    """y[:, t] = bias + sum_j x[:, t + j - pad] @ wk[j] over taps inside the sequence.

    x: ``(B, H, Cin)`` contiguous; wk: ``(k * Cin, Cout)``, row ``j * Cin + c``
    holds ``weight[:, c, j]``; bias: ``(Cout,)``.  Returns ``(B, H, Cout)``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, wk: torch.Tensor, bias: torch.Tensor,
                kernel: int) -> torch.Tensor:
        B, H, cin = x.shape
        xf = x.reshape(B, H * cin)
        out = torch.empty(B, H, wk.shape[1], dtype=x.dtype, device=x.device)
        for t, s0, s1, j0, j1 in _plan(H, kernel):
            torch.mm(xf[:, s0 * cin:s1 * cin], wk[j0 * cin:j1 * cin], out=out[:, t])
        out += bias
        ctx.save_for_backward(x, wk)
        ctx.kernel = kernel
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, wk = ctx.saved_tensors
        B, H, cin = x.shape
        grad = grad.contiguous()
        xf = x.reshape(B, H * cin)
        gx = gw = gb = None
        plan = _plan(H, ctx.kernel)
        if ctx.needs_input_grad[0]:
            gx = torch.zeros(B, H * cin, dtype=x.dtype, device=x.device)
            for t, s0, s1, j0, j1 in plan:
                gx[:, s0 * cin:s1 * cin].addmm_(grad[:, t], wk[j0 * cin:j1 * cin].t())
            gx = gx.view(B, H, cin)
        if ctx.needs_input_grad[1]:
            # a step whose window lies inside the sequence covers every tap: let it
            # write dW (no zero fill), the others accumulate
            full = [p for p in plan if p[4] - p[3] == ctx.kernel]
            rest = [p for p in plan if p[4] - p[3] != ctx.kernel]
            if full:
                t, s0, s1, _, _ = full[0]
                gw = torch.mm(xf[:, s0 * cin:s1 * cin].t(), grad[:, t])
                rest = full[1:] + rest
            else:
                gw = torch.zeros_like(wk)
            for t, s0, s1, j0, j1 in rest:
                gw[j0 * cin:j1 * cin].addmm_(xf[:, s0 * cin:s1 * cin].t(), grad[:, t])
        if ctx.needs_input_grad[2]:
            gb = grad.sum(dim=(0, 1))
        return gx, gw, gb, None


class _Im2colConv(torch.autograd.Function):
    """The same convolution as one im2col product: cols ``(B H, k Cin)`` @ wk.

    Backward: dW = cols^T grad; dx = fold(grad wk^T), the fold being k shifted
    adds (cheaper than autograd's ``unfold_backward``).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, wk: torch.Tensor, bias: torch.Tensor,
                kernel: int) -> torch.Tensor:
        B, H, cin = x.shape
        pad = kernel // 2
        cols = F.pad(x, (0, 0, pad, pad)).unfold(1, kernel, 1)             # (B, H, Cin, k)
        cols = cols.transpose(2, 3).reshape(B * H, kernel * cin)
        ctx.save_for_backward(cols, wk)
        ctx.shape = (B, H, cin, kernel)
        return torch.addmm(bias, cols, wk).view(B, H, -1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cols, wk = ctx.saved_tensors
        B, H, cin, kernel = ctx.shape
        pad = kernel // 2
        g2 = grad.reshape(B * H, -1)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gcols = (g2 @ wk.t()).view(B, H, kernel, cin)
            gpad = torch.zeros(B, H + 2 * pad, cin, dtype=grad.dtype, device=grad.device)
            for j in range(kernel):
                gpad[:, j:j + H].add_(gcols[:, :, j])
            gx = gpad[:, pad:pad + H]
        if ctx.needs_input_grad[1]:
            gw = cols.t() @ g2
        if ctx.needs_input_grad[2]:
            gb = g2.sum(dim=0)
        return gx, gw, gb, None


def conv1d_cl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, padding=k // 2)`` in channels-last layout.

    x: ``(B, H, Cin)``; weight: ``(Cout, Cin, k)`` (``nn.Conv1d`` layout, k odd);
    bias: ``(Cout,)``.  Returns ``(B, H, Cout)``.
    """
    cout, cin, k = weight.shape
    wk = weight.permute(2, 1, 0).reshape(k * cin, cout)   # a view for tap-major weights
    B, H, _ = x.shape
    if H <= PER_STEP_MAX_H and min(B, cin) >= PER_STEP_MIN_ROWS:
        return _TemporalConv.apply(x.contiguous(), wk, bias, k)
    # small layers or long sequences: one im2col product (few ops, little padding waste)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _Im2colConv.apply(x, wk, bias, k)
    cols = F.pad(x, (0, 0, k // 2, k // 2)).unfold(1, k, 1).transpose(2, 3)   # (B, H, k, Cin)
    return torch.addmm(bias, cols.reshape(B * H, k * cin), wk).view(B, H, cout)


def linear_cl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 1x1 ``nn.Conv1d`` (weight ``(Cout, Cin, 1)``) on ``(B, H, Cin)`` -> ``(B, H, Cout)``."""
    return F.linear(x, weight[:, :, 0], bias)


def downsample_cl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``Conv1d(C, C, 3, stride=2, padding=1)`` on ``(B, H, C)`` -> ``(B, H // 2, C)`` (H even)."""
    B, H, cin = x.shape
    cout = weight.shape[0]
    cols = F.pad(x, (0, 0, 1, 1)).unfold(1, 3, 2)                      # (B, H/2, Cin, 3)
    cols = cols.transpose(2, 3).reshape(B * (H // 2), 3 * cin)
    wk = weight.permute(2, 1, 0).reshape(3 * cin, cout)
    return torch.addmm(bias, cols, wk).view(B, H // 2, cout)


def upsample_cl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``ConvTranspose1d(C, C, 4, stride=2, padding=1)`` on ``(B, H, C)`` -> ``(B, 2H, C)``.

    Output step 2m reads inputs m (tap 1) and m - 1 (tap 3); step 2m + 1 reads
    m + 1 (tap 0) and m (tap 2).  One product gives every tap of every input.
    """
    B, H, cin = x.shape
    cout = weight.shape[1]
    z = (x.reshape(B * H, cin) @ weight.permute(0, 2, 1).reshape(cin, 4 * cout))
    z = z.view(B, H, 4, cout)
    even = z[:, :, 1] + F.pad(z[:, :-1, 3], (0, 0, 1, 0))
    odd = z[:, :, 2] + F.pad(z[:, 1:, 0], (0, 0, 0, 1))
    return (torch.stack([even, odd], dim=2) + bias).view(B, 2 * H, cout)


# ----------------------------------------------------------------------------
# Fused GroupNorm + Mish
# ----------------------------------------------------------------------------

def _gn_mish_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     groups: int, eps: float):
    """x ``(B, H, C)`` -> (mish(y), xhat, mish'(y), rstd ``(B, 1, G, 1)``),
    y = groupnorm(x) = xhat * weight + bias.

    With e = exp(y), n = e (e + 2): tanh(softplus(y)) = n / (n + 2), so
    mish(y) = y n / (n + 2) and mish'(y) = n / (n + 2) + 4 y (n - e) / (n + 2)^2
    (y is clamped at 20 inside exp, where both are exact in float32).  Group
    statistics use two passes (mean, then mean of squared deviations), reduced
    over the (H, C / G) entries of each group.
    """
    B, H, C = x.shape
    xg = x.view(B, H, groups, C // groups)
    mean = xg.mean(dim=(1, 3), keepdim=True)
    dev = xg - mean
    rstd = torch.rsqrt((dev * dev).mean(dim=(1, 3), keepdim=True) + eps)
    xhat = dev.mul_(rstd).view(B, H, C)
    y = torch.addcmul(bias, xhat, weight)
    e = torch.exp(y.clamp(max=_MISH_CLAMP))
    n = (e + 2.0).mul_(e)
    d = n + 2.0
    tsp = n / d                                                    # tanh(softplus(y))
    out = y * tsp
    dmish = torch.addcdiv(tsp, n.sub_(e).mul_(y), d.mul_(d), value=4.0)
    return out, xhat, dmish, rstd


def _gn_mish_backward(grad: torch.Tensor, xhat: torch.Tensor, dmish: torch.Tensor,
                      rstd: torch.Tensor, weight: torch.Tensor, groups: int):
    """Gradients (dx, dweight, dbias) of :func:`_gn_mish_forward`.

    dy = grad mish'(y); GroupNorm: dx = rstd (g - mean(g) - xhat mean(g xhat)) with
    g = dy weight, means over each group's (H, C / G) entries.
    """
    B, H, C = xhat.shape
    dy = grad * dmish
    gbias = dy.sum(dim=(0, 1))
    dyx = dy * xhat
    gweight = dyx.sum(dim=(0, 1))
    shape = (B, H, groups, C // groups)
    g = (dy.mul_(weight)).view(shape)
    m1 = g.mean(dim=(1, 3), keepdim=True)
    m2 = dyx.mul_(weight).view(shape).mean(dim=(1, 3), keepdim=True)
    gx = g.sub_(m1).sub_(xhat.view(shape) * m2).mul_(rstd)
    return gx.view(B, H, C), gweight, gbias


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    return torch.compile(fn, dynamic=True)   # one kernel for every (B, H, C)


class _GroupNormMish(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float):
        fwd = _compiled(_gn_mish_forward) if _COMPILE else _gn_mish_forward
        out, xhat, dmish, rstd = fwd(x.contiguous(), weight, bias, groups, eps)
        ctx.save_for_backward(xhat, dmish, rstd, weight)
        ctx.groups = groups
        return out

    @staticmethod
    def backward(ctx, grad):
        xhat, dmish, rstd, weight = ctx.saved_tensors
        bwd = _compiled(_gn_mish_backward) if _COMPILE else _gn_mish_backward
        gx, gw, gb = bwd(grad.contiguous(), xhat, dmish, rstd, weight, ctx.groups)
        return gx, gw, gb, None, None


def _gn_mish_inference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       groups: int, eps: float) -> torch.Tensor:
    """Forward only (nothing saved): group norm, then mish(y) = y n / (n + 2)."""
    B, H, C = x.shape
    xg = x.view(B, H, groups, C // groups)
    mean = xg.mean(dim=(1, 3), keepdim=True)
    dev = xg - mean
    rstd = torch.rsqrt((dev * dev).mean(dim=(1, 3), keepdim=True) + eps)
    y = torch.addcmul(bias, dev.mul_(rstd).view(B, H, C), weight)
    e = torch.exp(y.clamp(max=_MISH_CLAMP))
    n = (e + 2.0).mul_(e)
    return y.mul_(n).div_(n.add_(2.0))


def group_norm_mish_cl(x: torch.Tensor, groups: int, weight: torch.Tensor,
                       bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``mish(group_norm(x))`` for channels-last x ``(B, H, C)`` -> ``(B, H, C)``."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or bias.requires_grad):
        return _GroupNormMish.apply(x, weight, bias, groups, eps)
    if x.numel() <= SMALL_INFERENCE_NUMEL and not _COMPILE:
        # batch-1 inference is dispatch-bound: two native ops beat eight cheap ones
        return F.mish(F.group_norm(x.transpose(1, 2), groups, weight, bias, eps)).transpose(1, 2)
    fwd = _compiled(_gn_mish_inference) if _COMPILE else _gn_mish_inference
    return fwd(x.contiguous(), weight, bias, groups, eps)
