"""The schedule is the one source of truth for DDPM and NoProp: check it against
diffusers, against the Gaussian identities, and NoProp's view against its spec."""
import pytest
import torch
from diffusers import DDPMScheduler

from diffpolicy.diffusion.schedule import NoiseSchedule, make_betas, noprop_schedule

DIFFUSERS_NAME = {"linear": "linear", "cosine": "squaredcos_cap_v2", "sigmoid": "sigmoid"}


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("steps", [10, 100, 1000])
def test_matches_diffusers(name, steps):
    ours = NoiseSchedule(name, steps)
    ref = DDPMScheduler(num_train_timesteps=steps, beta_schedule=DIFFUSERS_NAME[name])
    assert torch.allclose(ours.betas, ref.betas.double(), atol=1e-6, rtol=0)
    assert torch.allclose(ours.alpha_bar, ref.alphas_cumprod.double(), atol=1e-6, rtol=0)


def test_derived_quantities_consistent():
    s = NoiseSchedule("cosine", 100)
    assert torch.allclose(s.alpha_bar, torch.cumprod(1 - s.betas, 0))
    assert torch.allclose(s.snr, s.alpha_bar / (1 - s.alpha_bar))
    assert torch.all(s.alpha_bar[1:] < s.alpha_bar[:-1]), "alpha_bar must fall with k"
    assert s.betas.max() <= 0.999 + 1e-12


def test_add_noise_moments():
    """x_k | x_0 has mean sqrt(abar_k) x0 and variance 1 - abar_k (not abar_k x0)."""
    s = NoiseSchedule("linear", 100)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 1.7)
    t = torch.full((n,), 40)
    xt = s.add_noise(x0, torch.randn(n, 1, generator=g), t)
    abar = s.alpha_bar[40].item()
    assert abs(xt.mean().item() - abar ** 0.5 * 1.7) < 0.01
    assert abs(xt.var().item() - (1 - abar)) < 0.01


def test_posterior_matches_bayes_by_sampling():
    """Sample x_k ~ q(x_k|x0), x_{k-1} jointly; regress x_{k-1} on x_k given x0:
    the slope, intercept and residual variance are the posterior's coefficients."""
    s = NoiseSchedule("cosine", 50)
    k = 20
    g = torch.Generator().manual_seed(1)
    n = 400_000
    x0 = 0.8
    abar_prev = s.alpha_bar[k - 1].item()
    x_prev = abar_prev ** 0.5 * x0 + (1 - abar_prev) ** 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    x_k = s.alphas[k].sqrt() * x_prev + s.betas[k].sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
    cov = torch.cov(torch.stack([x_k, x_prev]))
    slope = (cov[0, 1] / cov[0, 0]).item()
    intercept = (x_prev.mean() - slope * x_k.mean()).item()
    resid_var = (cov[1, 1] - cov[0, 1] ** 2 / cov[0, 0]).item()
    assert slope == pytest.approx(s.posterior_coef_xt[k].item(), abs=5e-3)
    assert intercept == pytest.approx(s.posterior_coef_x0[k].item() * x0, abs=5e-3)
    assert resid_var == pytest.approx(s.posterior_variance[k].item(), rel=2e-2)
    mean = s.posterior_mean(torch.tensor([[x0]]), torch.tensor([[0.3]]), torch.tensor([k]))
    assert mean.item() == pytest.approx(s.posterior_coef_x0[k].item() * x0
                                        + s.posterior_coef_xt[k].item() * 0.3, rel=1e-6)


def test_posterior_identities():
    """Closed-form checks: variance = (1-abar_prev)/(1-abar) beta, and coefficients
    reproduce the marginal: c0^2... i.e. E[x_{k-1}] = sqrt(abar_prev) x0."""
    s = NoiseSchedule("linear", 100)
    k = torch.arange(1, 100)
    mean_from_marginal = s.posterior_coef_x0[k] + s.posterior_coef_xt[k] * s.alpha_bar[k].sqrt()
    assert torch.allclose(mean_from_marginal, s.alpha_bar[k - 1].sqrt(), atol=1e-10)
    var_total = s.posterior_variance[k] + s.posterior_coef_xt[k] ** 2 * (1 - s.alpha_bar[k])
    assert torch.allclose(var_total, 1 - s.alpha_bar[k - 1], atol=1e-10)


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("T", [3, 10, 50])
def test_noprop_view(name, T):
    p = noprop_schedule(T, name)
    assert p.T == T and p.alpha_bar.shape == (T + 1,)
    assert torch.all(p.snr_diff > 0), "SNR(t) - SNR(t-1) must be positive for every t"
    assert torch.allclose(p.snr_diff, p.snr[1:] - p.snr[:-1])
    # abar_t = prod_{s=t..T} alpha_s
    for t in range(T + 1):
        assert p.alpha_bar[t].item() == pytest.approx(p.alpha[t:].prod().item(), rel=1e-9)
    # the spec's a_t, b_t, c_t
    t = torch.arange(1, T + 1)
    abar, abar_prev, alpha_prev = p.alpha_bar[t], p.alpha_bar[t - 1], p.alpha[t - 1]
    assert torch.allclose(p.a[1:], abar.sqrt() * (1 - alpha_prev) / (1 - abar_prev))
    assert torch.allclose(p.b[1:], alpha_prev.sqrt() * (1 - abar) / (1 - abar_prev))
    assert torch.allclose(p.c[1:], (1 - abar) * (1 - alpha_prev) / (1 - abar_prev))
    assert torch.all(p.c[1:] > 0)
    if name == "cosine":  # linear betas (1e-4..0.02) are meant for ~1000 steps
        assert p.alpha_bar[0] < 1e-3, "z_0 must be (nearly) pure noise"


def test_noprop_view_is_ddpm_reversed():
    ddpm = NoiseSchedule("cosine", 11)
    p = ddpm.noprop()
    assert torch.equal(p.alpha_bar, ddpm.alpha_bar.flip(0))


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown noise schedule 'cosinus'"):
        make_betas("cosinus", 10)
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        NoiseSchedule("linear", 0)
    with pytest.raises(ValueError, match="at least 2 steps"):
        NoiseSchedule("linear", 1).noprop()
