"""DDPM/DDIM samplers: agreement with diffusers' ``scheduler.step``, seeding,
timesteps, clipping, and exactness with an analytic (oracle) denoiser."""
from __future__ import annotations

import pytest
import torch

from diffpolicy.diffusion.sampling import DiffusionSampler, sample
from diffpolicy.diffusion.schedule import NoiseSchedule

SHAPE = (6, 16, 2)


def toy_model(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """A fixed nonlinear 'epsilon model' that uses x, t and the condition."""
    w = torch.tensor([[0.7, -0.4], [0.3, 0.9]], dtype=x.dtype)
    return torch.tanh(x @ w + t.to(x.dtype)[:, None, None] / 50.0 + cond[:, None, :2])


def gaussian_oracle(mu: float, std: float, abar: torch.Tensor):
    """Exact epsilon predictor for data x0 ~ N(mu, std^2) (each coordinate) under abar."""
    def model(x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        a = abar.to(x.dtype)[t].reshape(-1, *([1] * (x.dim() - 1)))
        # E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a std^2 + 1 - a)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * std ** 2 + 1 - a)
    return model


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("method, steps, eta", [
    ("ddpm", None, 0.0), ("ddpm", 20, 0.0), ("ddim", 10, 0.0), ("ddim", 16, 0.0), ("ddim", 8, 1.0)])
def test_lean_loop_matches_diffusers_step(name, method, steps, eta):
    sampler = DiffusionSampler(NoiseSchedule(name, 100), method, steps, eta=eta)
    cond = torch.randn(SHAPE[0], 4, generator=torch.Generator().manual_seed(3))
    ours = sampler(toy_model, SHAPE, cond, generator=torch.Generator().manual_seed(1))
    ref = sampler(toy_model, SHAPE, cond, generator=torch.Generator().manual_seed(1), reference=True)
    # a 100-step stochastic chain in float32: allow rounding to accumulate a little
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("method, steps", [("ddpm", 20), ("ddim", 10)])
def test_trailing_spacing_matches_diffusers(method, steps):
    sampler = DiffusionSampler(NoiseSchedule("cosine", 100), method, steps,
                               timestep_spacing="trailing")
    assert sampler.timesteps[0] == 99
    cond = torch.randn(SHAPE[0], 4, generator=torch.Generator().manual_seed(3))
    ours = sampler(toy_model, SHAPE, cond, generator=torch.Generator().manual_seed(1))
    ref = sampler(toy_model, SHAPE, cond, generator=torch.Generator().manual_seed(1), reference=True)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=2e-4)


def test_scheduler_gets_our_betas():
    sched = NoiseSchedule("cosine", 100)
    for method in ("ddpm", "ddim"):
        s = DiffusionSampler(sched, method)
        torch.testing.assert_close(s.scheduler.alphas_cumprod.double(), sched.alpha_bar,
                                   rtol=1e-5, atol=1e-7)
        assert s.scheduler.config.prediction_type == "epsilon"
    assert DiffusionSampler(sched, "ddpm").scheduler.config.variance_type == "fixed_small"


def test_timesteps_and_model_calls():
    sched = NoiseSchedule("cosine", 100)
    assert DiffusionSampler(sched, "ddpm").timesteps == list(range(99, -1, -1))
    assert DiffusionSampler(sched, "ddim", 10).timesteps == list(range(90, -1, -10))
    seen = []

    def spy(x, t, cond):
        assert t.shape == (x.shape[0],) and t.dtype == torch.long and bool((t == t[0]).all())
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    DiffusionSampler(sched, "ddim", 5)(spy, SHAPE)
    assert seen == [80, 60, 40, 20, 0]


def test_seedable_and_stochastic():
    s = DiffusionSampler(NoiseSchedule("cosine", 100), "ddpm", 25)
    cond = torch.zeros(SHAPE[0], 4)
    a = s(toy_model, SHAPE, cond, generator=torch.Generator().manual_seed(7))
    b = s(toy_model, SHAPE, cond, generator=torch.Generator().manual_seed(7))
    c = s(toy_model, SHAPE, cond, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2


def test_ddim_eta0_is_deterministic_given_initial_noise():
    s = DiffusionSampler(NoiseSchedule("cosine", 100), "ddim", 10)
    calls = []

    def model(x, t, cond):
        calls.append(x.clone())
        return toy_model(x, t, cond)

    cond = torch.zeros(SHAPE[0], 4)
    s(model, SHAPE, cond, generator=torch.Generator().manual_seed(0))
    first = calls[0]
    # with eta = 0 the whole chain is a function of x_T: one draw from the generator
    assert torch.equal(first, torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_clip_sample(method):
    def wild(x, t, cond):
        return -40.0 * torch.ones_like(x)        # pushes x0 far outside [-1, 1]

    sched = NoiseSchedule("cosine", 100)
    clipped = DiffusionSampler(sched, method, 10, clip_sample=True)(wild, SHAPE)
    free = DiffusionSampler(sched, method, 10, clip_sample=False)(wild, SHAPE)
    assert clipped.abs().max() <= 1.0 + 1e-6
    assert free.abs().max() > 2.0


@pytest.mark.parametrize("method, steps", [("ddpm", None), ("ddim", 10)])
def test_oracle_point_mass_is_recovered(method, steps):
    """If the data is a single point c, the exact denoiser predicts x0 = c at every
    step, so both samplers must return exactly c."""
    sched = NoiseSchedule("cosine", 100)
    c = 0.37
    oracle = gaussian_oracle(c, 0.0, sched.alpha_bar.float())
    out = DiffusionSampler(sched, method, steps)(oracle, SHAPE,
                                                 generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.full(SHAPE, c), rtol=0, atol=1e-4)


def predicted_moments(sched: NoiseSchedule, method: str, mu: float, std: float):
    """Mean and std of the sampler's output for Gaussian data N(mu, std^2) and the
    oracle denoiser: everything is linear-Gaussian, so propagate (mean, var) through
    the chain in float64.  DDPM uses the schedule's own posterior coefficients,
    DDIM the update x' = sqrt(abar') x0 + sqrt(1 - abar') eps on timesteps 98, 96, .., 0."""
    abar = sched.alpha_bar
    m, v = 0.0, 1.0                                   # x_T ~ N(0, 1)
    steps = range(99, -1, -1) if method == "ddpm" else range(98, -1, -2)
    for t in steps:
        a = abar[t]
        k = (1 - a) / (a * std ** 2 + 1 - a)
        A, b = (1 - k) / a.sqrt(), k * mu             # x0_hat = A x_t + b
        if method == "ddpm":
            c0, ct = sched.posterior_coef_x0[t], sched.posterior_coef_xt[t]
            gain, shift = c0 * A + ct, c0 * b
            noise = sched.posterior_variance[t] if t > 0 else 0.0
        else:
            ap = abar[t - 2] if t >= 2 else torch.tensor(1.0, dtype=torch.float64)
            Ae, be = (1 - a.sqrt() * A) / (1 - a).sqrt(), -a.sqrt() * b / (1 - a).sqrt()
            gain = ap.sqrt() * A + (1 - ap).sqrt() * Ae
            shift, noise = ap.sqrt() * b + (1 - ap).sqrt() * be, 0.0
        m, v = gain * m + shift, gain ** 2 * v + noise
    return float(m), float(v) ** 0.5


@pytest.mark.parametrize("method, steps", [("ddpm", None), ("ddim", 50)])
def test_oracle_gaussian_moments_match_the_exact_chain(method, steps):
    """With the exact denoiser of N(mu, std^2), the samples' mean and std must equal
    those of the discrete chain computed in closed form (and come close to the data:
    a finite chain with fixed_small variance loses a few percent of the spread)."""
    sched = NoiseSchedule("cosine", 100)
    mu, std = 0.3, 0.2
    oracle = gaussian_oracle(mu, std, sched.alpha_bar.float())
    out = DiffusionSampler(sched, method, steps, clip_sample=False)(
        oracle, (4000, 4, 2), generator=torch.Generator().manual_seed(0))
    exp_mean, exp_std = predicted_moments(sched, method, mu, std)
    assert out.mean().item() == pytest.approx(exp_mean, abs=0.005)
    assert out.std().item() == pytest.approx(exp_std, rel=0.02)
    assert exp_mean == pytest.approx(mu, abs=0.005) and exp_std == pytest.approx(std, rel=0.1)


def test_reversed_betas_break_the_oracle():
    """The moment test can fail: a sampler built on a reversed schedule, driving an
    oracle that knows the true schedule, lands far from the data distribution."""
    sched = NoiseSchedule("cosine", 100)
    wrong = NoiseSchedule("cosine", 100)
    wrong.betas = wrong.betas.flip(0)
    oracle = gaussian_oracle(0.3, 0.2, sched.alpha_bar.float())
    out = DiffusionSampler(wrong, "ddpm", clip_sample=False)(
        oracle, (4000, 4, 2), generator=torch.Generator().manual_seed(0))
    exp_mean, exp_std = predicted_moments(sched, "ddpm", 0.3, 0.2)
    assert (abs(out.std().item() - exp_std) > 0.1 * exp_std
            or abs(out.mean().item() - exp_mean) > 0.05)


def test_functional_sample_reuses_sampler():
    sched = NoiseSchedule("cosine", 100)
    cond = torch.zeros(SHAPE[0], 4)
    a = sample(toy_model, sched, SHAPE, cond, method="ddim", num_inference_steps=10,
               generator=torch.Generator().manual_seed(0))
    b = DiffusionSampler(sched, "ddim", 10)(toy_model, SHAPE, cond,
                                            generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    from diffpolicy.diffusion import sampling
    n = len(sampling._SAMPLERS)
    sample(toy_model, sched, SHAPE, cond, method="ddim", num_inference_steps=10)
    assert len(sampling._SAMPLERS) == n


def test_unet_as_model_fn():
    from diffpolicy.diffusion.unet1d import ConditionalUnet1D
    torch.manual_seed(0)
    net = ConditionalUnet1D(2, 4, down_dims=(16, 32, 64), step_embed_dim=16).eval()
    out = DiffusionSampler(NoiseSchedule("cosine", 100), "ddim", 4)(
        net, (3, 16, 2), torch.randn(3, 4), generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 16, 2) and out.abs().max() <= 1.0 + 1e-6


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="euler"), "unknown method 'euler'"),
    (dict(method="ddim", num_inference_steps=0), r"num_inference_steps must be in \[1, 100\]"),
    (dict(method="ddpm", num_inference_steps=101), r"num_inference_steps must be in \[1, 100\]"),
    (dict(method="ddpm", eta=1.0), "eta applies to method='ddim' only"),
    (dict(method="ddim", num_inference_steps=16, timestep_spacing="trailing"),
     "needs num_inference_steps to divide 100"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionSampler(NoiseSchedule("cosine", 100), **kwargs)


def test_cond_batch_mismatch():
    s = DiffusionSampler(NoiseSchedule("cosine", 100), "ddim", 2)
    with pytest.raises(ValueError, match="global_cond batch 5 does not match sample batch 6"):
        s(toy_model, SHAPE, torch.zeros(5, 4))
