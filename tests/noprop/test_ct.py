"""NoProp-CT: learned monotone schedule, loss terms, label-free inference."""
from __future__ import annotations

import inspect

import pytest
import torch

from diffpolicy.noprop.ct import MonotoneSchedule, NoPropCT
from noprop_helpers import IMG


def test_schedule_is_monotone_with_fixed_ends_and_exact_derivative():
    torch.manual_seed(0)
    s = MonotoneSchedule(10.0, -4.0)
    with torch.no_grad():                       # an arbitrary, non-linear learned state
        s.w2.normal_(0, 3)
        s.b2.normal_(0, 3)
        s.w3.normal_(0, 1)
    t = torch.linspace(0, 1, 201)
    g, dg = s.gamma(t)
    torch.testing.assert_close(g[[0, -1]], torch.tensor([10.0, -4.0]))
    assert (dg < 0).all() and (g[1:] < g[:-1]).all()
    assert (s.snr_prime(t) > 0).all() and (s.alpha_bar(t)[1:] > s.alpha_bar(t)[:-1]).all()
    # analytic derivative equals autograd's
    tt = t.clone().requires_grad_()
    auto, = torch.autograd.grad(s.gamma(tt)[0].sum(), tt)
    torch.testing.assert_close(dg, auto, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="gamma_0 must exceed gamma_1"):
        MonotoneSchedule(-4.0, 10.0)


def test_ct_loss_trains_backbone_schedule_embedding_and_head():
    torch.manual_seed(0)
    m = NoPropCT("cnn", n_classes=4, image_size=IMG, dropout=0.0)
    x, y = torch.randn(8, 1, IMG, IMG), torch.tensor([0, 1, 2, 3] * 2)
    losses = m.loss(x, y)
    assert set(losses) == {"total", "diffusion", "ce", "kl"}
    losses["total"].backward()
    for name, p in [("backbone", m.backbone[0].weight), ("schedule", m.schedule.w2),
                    ("embedding", m.embed.weight), ("head", m.head.weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the head sees noisy z_1 only: the denoiser gets no gradient from CE
    g = torch.autograd.grad(m.loss(x, y)["ce"], m.backbone[0].weight, allow_unused=True)[0]
    assert g is None or not g.any()


def test_ct_inference_is_label_free_and_deterministic_mode_repeats():
    torch.manual_seed(0)
    m = NoPropCT("cnn", n_classes=4, image_size=IMG)
    assert list(inspect.signature(m.predict).parameters) == ["x", "stochastic", "steps", "generator"]
    x = torch.randn(5, 1, IMG, IMG)
    out = m.predict(x, steps=20)
    assert out.shape == (5, 4)
    torch.testing.assert_close(m.predict(x, steps=20), out)
    g = torch.Generator()
    torch.testing.assert_close(m.predict(x, True, 20, g.manual_seed(0)),
                               m.predict(x, True, 20, g.manual_seed(0)))


def test_ct_with_resnet18_backbone_runs_on_28px():
    m = NoPropCT("resnet18", n_classes=10)
    x, y = torch.randn(4, 1, 28, 28), torch.arange(4)
    m.loss(x, y)["total"].backward()
    assert m.predict(x, steps=3).shape == (4, 10)


def test_fm_learns_a_batch_and_predicts_nearest_embedding():
    from diffpolicy.noprop.fm import NoPropFM
    torch.manual_seed(0)
    m = NoPropFM("cnn", n_classes=4, image_size=IMG, dropout=0.0)
    assert not hasattr(m, "schedule")
    x = torch.randn(16, 1, IMG, IMG)
    y = torch.arange(16) % 4
    x[:, 0, :3, :3] += 3 * y[:, None, None]                  # a learnable cue
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)

    def fixed_noise_losses():
        m.eval()
        out = {k: v.item() for k, v in m.loss(x, y, generator=torch.Generator().manual_seed(0)).items()}
        m.train()
        return out
    before = fixed_noise_losses()
    for _ in range(30):
        opt.zero_grad()
        m.loss(x, y)["total"].backward()
        opt.step()
    after = fixed_noise_losses()          # the flow term keeps an irreducible variance
    assert after["flow"] < before["flow"] and after["anchor"] < 0.5 * before["anchor"]
    assert m.embed.weight.grad.abs().sum() > 0
    scores = m.predict(x, steps=10)
    assert scores.shape == (16, 4) and (scores <= 0).all()   # negative squared distances
    assert list(inspect.signature(m.predict).parameters) == ["x", "stochastic", "steps", "generator"]
