"""ConditionalUnet1D: published sizes, shapes, input errors, and the fast path
(channels-last kernels) against the plain reference path."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from diffpolicy.diffusion import fast_conv
from diffpolicy.diffusion.unet1d import ConditionalUnet1D, count_parameters


def small_unet(fast: bool = True, **kw) -> ConditionalUnet1D:
    torch.manual_seed(0)
    args = dict(input_dim=2, global_cond_dim=6, down_dims=(16, 32, 64), step_embed_dim=16,
                kernel_size=5, n_groups=8, fast=fast)
    args.update(kw)
    return ConditionalUnet1D(**args)


# ---------------------------------------------------------------- architecture

def test_published_lowdim_size_is_65_78M():
    with torch.device("meta"):
        m = ConditionalUnet1D(2, 40, down_dims=(256, 512, 1024), step_embed_dim=256, kernel_size=5)
    assert count_parameters(m) == pytest.approx(65.78e6, rel=1e-3)


def test_published_image_size_is_251_5M():
    # image policy: down_dims [512, 1024, 2048], step embedding 128,
    # condition 2 obs steps x (64 image features + 2 agent position)
    with torch.device("meta"):
        m = ConditionalUnet1D(2, 132, down_dims=(512, 1024, 2048), step_embed_dim=128,
                              kernel_size=5)
    assert count_parameters(m) == pytest.approx(251.5e6, rel=1e-3)


def test_structure_levels_and_blocks():
    m = small_unet()
    # 3 down levels (2 ResBlocks each, downsample on the first two), 2 mid, 2 up levels
    assert len(m.down) == 3 and len(m.mid) == 2 and len(m.up) == 2
    assert [type(level[2]).__name__ for level in m.down] == ["Conv1d", "Conv1d", "Identity"]
    assert all(isinstance(level[2], nn.ConvTranspose1d) for level in m.up)
    # up ResBlocks take the concatenated skip: 2 * d2 -> d1, 2 * d1 -> d0
    assert m.up[0][0].block1.conv.in_channels == 128 and m.up[0][0].block1.conv.out_channels == 32
    assert m.up[1][0].block1.conv.in_channels == 64 and m.up[1][0].block1.conv.out_channels == 16
    # every FiLM sees [step embedding, global cond]
    films = [mod for mod in m.modules() if type(mod).__name__ == "FiLM"]
    assert len(films) == 12 and all(f.proj[1].in_features == 16 + 6 for f in films)


@pytest.mark.parametrize("horizon", [4, 8, 16, 32])
@pytest.mark.parametrize("fast", [False, True])
def test_output_shape(horizon, fast):
    m = small_unet(fast)
    x = torch.randn(3, horizon, 2)
    out = m(x, torch.tensor([0, 5, 99]), torch.randn(3, 6))
    assert out.shape == (3, horizon, 2)
    assert torch.isfinite(out).all()


def test_scalar_timestep_equals_vector():
    m = small_unet()
    x, g = torch.randn(4, 16, 2), torch.randn(4, 6)
    torch.testing.assert_close(m(x, 7, g), m(x, torch.full((4,), 7), g))


def test_output_depends_on_step_and_condition():
    m = small_unet()
    x, g = torch.randn(2, 16, 2), torch.randn(2, 6)
    base = m(x, 10, g)
    assert (m(x, 60, g) - base).abs().max() > 1e-3
    assert (m(x, 10, g + 1.0) - base).abs().max() > 1e-3


def test_no_global_cond():
    m = small_unet(global_cond_dim=0)
    assert m(torch.randn(2, 8, 2), 3).shape == (2, 8, 2)


@pytest.mark.parametrize("call, match", [
    (lambda m: m(torch.randn(2, 10, 2), 0, torch.randn(2, 6)), "divisible by 4"),
    (lambda m: m(torch.randn(2, 16, 3), 0, torch.randn(2, 6)), r"shape \(B, H, 2\)"),
    (lambda m: m(torch.randn(2, 16, 2), 0, torch.randn(2, 5)), r"global_cond must have shape \(2, 6\)"),
    (lambda m: m(torch.randn(2, 16, 2), 0, None), "global_cond must have shape"),
    (lambda m: m(torch.randn(2, 16, 2), torch.zeros(3), torch.randn(2, 6)), "timestep must be"),
])
def test_bad_input_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(small_unet())


@pytest.mark.parametrize("kwargs, match", [
    (dict(down_dims=()), "one positive width per level"),
    (dict(kernel_size=4), "odd"),
    (dict(down_dims=(12, 32, 64)), "divisible by n_groups"),
])
def test_bad_construction_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_unet(**kwargs)


# ---------------------------------------------------------------- fast kernels

@pytest.mark.parametrize("horizon", [2, 4, 8, 16])
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("per_step", [False, True])
def test_conv1d_cl_matches_conv1d(horizon, kernel, per_step, monkeypatch):
    monkeypatch.setattr(fast_conv, "PER_STEP_MIN_ROWS", 0 if per_step else 1 << 62)
    torch.manual_seed(1)
    conv = nn.Conv1d(6, 5, kernel, padding=kernel // 2).double()
    x = torch.randn(3, 6, horizon, dtype=torch.double, requires_grad=True)
    xc = x.detach().transpose(1, 2).contiguous().requires_grad_()
    ref, out = conv(x), fast_conv.conv1d_cl(xc, conv.weight, conv.bias)
    torch.testing.assert_close(out, ref.transpose(1, 2))
    g = torch.randn_like(out)
    gx, gw, gb = torch.autograd.grad(out, (xc, conv.weight, conv.bias), g)
    rx, rw, rb = torch.autograd.grad(ref, (x, conv.weight, conv.bias), g.transpose(1, 2))
    torch.testing.assert_close(gx, rx.transpose(1, 2))
    torch.testing.assert_close(gw, rw)
    torch.testing.assert_close(gb, rb)


@pytest.mark.parametrize("conv, horizon, kernel", [
    (fast_conv._TemporalConv, 4, 5),     # per-step kernel: taps cut off at both ends
    (fast_conv._Im2colConv, 6, 3),       # im2col kernel
])
def test_conv_kernel_gradcheck(conv, horizon, kernel):
    torch.manual_seed(2)
    x = torch.randn(2, horizon, 3, dtype=torch.double, requires_grad=True)
    wk = torch.randn(kernel * 3, 4, dtype=torch.double, requires_grad=True)
    b = torch.randn(4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: conv.apply(x, w, b, kernel), (x, wk, b))


@pytest.mark.parametrize("batch", [1, 32])
def test_inference_path_matches_plain(batch):
    """Under no_grad the fast path uses forward-only kernels; same answer."""
    m = small_unet(fast=True)
    x, g = torch.randn(batch, 16, 2), torch.randn(batch, 6)
    t = torch.randint(0, 100, (batch,))
    with torch.no_grad():
        out = m(x, t, g)
        m.fast = False
        ref = m(x, t, g)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_down_and_upsample_match_reference():
    torch.manual_seed(3)
    down = nn.Conv1d(8, 8, 3, stride=2, padding=1).double()
    up = nn.ConvTranspose1d(8, 8, 4, stride=2, padding=1).double()
    x = torch.randn(2, 8, 6, dtype=torch.double)
    xc = x.transpose(1, 2).contiguous()
    torch.testing.assert_close(fast_conv.downsample_cl(xc, down.weight, down.bias),
                               down(x).transpose(1, 2))
    torch.testing.assert_close(fast_conv.upsample_cl(xc, up.weight, up.bias),
                               up(x).transpose(1, 2))


def test_group_norm_mish_matches_reference_and_gradcheck():
    torch.manual_seed(4)
    x = torch.randn(3, 4, 16, dtype=torch.double, requires_grad=True)
    w = torch.randn(16, dtype=torch.double, requires_grad=True)
    b = torch.randn(16, dtype=torch.double, requires_grad=True)
    out = fast_conv.group_norm_mish_cl(x, 4, w, b)
    ref = F.mish(F.group_norm(x.transpose(1, 2), 4, w, b)).transpose(1, 2)
    torch.testing.assert_close(out, ref)
    assert torch.autograd.gradcheck(lambda x, w, b: fast_conv.group_norm_mish_cl(x, 4, w, b),
                                    (x, w, b))


def test_group_norm_mish_at_extreme_activations():
    """The one-exp Mish (y n / (n + 2)) must neither overflow for large y nor lose the
    negative tail: scale the normalised input up to |y| ~ 1e3."""
    torch.manual_seed(7)
    x = torch.randn(2, 8, 16, requires_grad=True)
    w = torch.full((16,), 400.0, requires_grad=True)
    b = torch.linspace(-30, 30, 16).requires_grad_()
    out = fast_conv.group_norm_mish_cl(x, 4, w, b)
    ref = F.mish(F.group_norm(x.transpose(1, 2), 4, w, b)).transpose(1, 2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(out.sum(), (x, w, b))
    r = torch.autograd.grad(ref.sum(), (x, w, b))
    for a, e in zip(g, r):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-3)


def _outputs_and_grads(m: ConditionalUnet1D, x, t, g):
    m.zero_grad()
    out = m(x, t, g)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(out.dtype)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("per_step", [False, True])
def test_fast_path_matches_plain_path_float32(batch, per_step, monkeypatch):
    monkeypatch.setattr(fast_conv, "PER_STEP_MIN_ROWS", 0 if per_step else 1 << 62)
    m = small_unet(fast=True)
    torch.manual_seed(5)
    x, t, g = torch.randn(batch, 16, 2), torch.randint(0, 100, (batch,)), torch.randn(batch, 6)
    m.fast = False
    ref_out, ref_grads = _outputs_and_grads(m, x, t, g)
    m.fast = True
    out, grads = _outputs_and_grads(m, x, t, g)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    for name, ref in ref_grads.items():
        scale = ref.abs().max().clamp(min=1e-6)
        assert (grads[name] - ref).abs().max() / scale < 1e-4, name


def test_fast_path_matches_plain_path_float64_exactly():
    m = small_unet(fast=True).double()
    x = torch.randn(4, 16, 2, dtype=torch.double)
    t, g = torch.tensor([0, 30, 60, 99]), torch.randn(4, 6, dtype=torch.double)
    m.fast = False
    ref_out, ref_grads = _outputs_and_grads(m, x, t, g)
    m.fast = True
    out, grads = _outputs_and_grads(m, x, t, g)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, rtol=1e-10, atol=1e-12, msg=name)


def test_state_dict_is_layout_independent():
    fast_model, plain_model = small_unet(fast=True), small_unet(fast=False)
    w = fast_model.down[1][0].block1.conv.weight
    assert w.shape == (32, 16, 5) and w.stride() == (1, 32, 32 * 16)   # tap-major storage
    assert plain_model.down[1][0].block1.conv.weight.is_contiguous()
    plain_model.load_state_dict(fast_model.state_dict())
    x, g = torch.randn(2, 16, 2), torch.randn(2, 6)
    torch.testing.assert_close(plain_model(x, 4, g), fast_model(x, 4, g), rtol=1e-4, atol=1e-5)


def test_fast_training_steps_match_plain():
    """Five SGD steps through each path leave the same weights (grads agree step after step)."""
    a, b = small_unet(fast=True), small_unet(fast=False)
    b.load_state_dict(a.state_dict())
    x, t, g = torch.randn(16, 16, 2), torch.randint(0, 100, (16,)), torch.randn(16, 6)
    for m in (a, b):
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        for _ in range(5):
            opt.zero_grad()
            (m(x, t, g) - x).pow(2).mean().backward()
            opt.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_compiled_group_norm_mish_matches():
    torch.manual_seed(6)
    x = torch.randn(8, 4, 32, requires_grad=True)
    w, b = torch.randn(32, requires_grad=True), torch.randn(32, requires_grad=True)
    ref = fast_conv.group_norm_mish_cl(x, 8, w, b)
    rg = torch.autograd.grad(ref.sum(), (x, w, b))
    fast_conv.set_compile(True)
    try:
        out = fast_conv.group_norm_mish_cl(x, 8, w, b)
        og = torch.autograd.grad(out.sum(), (x, w, b))
    finally:
        fast_conv.set_compile(False)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, r in zip(og, rg):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)


def test_plain_path_reuses_a_contiguous_weight_copy_until_the_weight_changes():
    from diffpolicy.diffusion.unet1d import plain_conv
    m = small_unet(fast=True).eval()                # tap-major weights
    conv = m.down[0][0].block1.conv
    assert not conv.weight.is_contiguous()
    x = torch.randn(3, conv.in_channels, 16)
    with torch.no_grad():
        y = plain_conv(conv, x)
        first = conv.__dict__["_plain_weight"][1]
        assert torch.equal(plain_conv(conv, x), y) and conv.__dict__["_plain_weight"][1] is first
        conv.weight.mul_(2.0)                      # an optimiser step bumps the version
        y2 = plain_conv(conv, x)
    assert conv.__dict__["_plain_weight"][1] is not first
    torch.testing.assert_close(y2 - conv.bias[None, :, None], 2 * (y - conv.bias[None, :, None]))
    torch.testing.assert_close(y2, F.conv1d(x, conv.weight.contiguous(), conv.bias, padding=2))


@pytest.mark.parametrize("down_dims, horizon", [((16,), 5), ((16, 32), 6), ((16, 32, 64, 64), 16)])
def test_any_number_of_levels_on_both_paths(down_dims, horizon):
    """1, 2 and 4 levels: the horizon need only be divisible by 2 ** (levels - 1); fast == plain."""
    x, cond = torch.randn(3, horizon, 2, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    fast, plain = (small_unet(fast=f, down_dims=down_dims).double() for f in (True, False))
    out = fast(x, torch.tensor([0, 5, 50]), cond)
    assert out.shape == (3, horizon, 2)
    torch.testing.assert_close(out, plain(x, torch.tensor([0, 5, 50]), cond))
    if len(down_dims) > 1:
        with pytest.raises(ValueError, match=f"divisible by {2 ** (len(down_dims) - 1)}"):
            fast(torch.randn(3, horizon + 1, 2, dtype=torch.float64), 0, cond)
