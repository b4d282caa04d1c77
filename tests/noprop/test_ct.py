"""NoProp-CT: learned monotone schedule, loss terms, label-free inference."""
from __future__ import annotations

import inspect
import math

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
    assert list(inspect.signature(m.predict).parameters) == ["x", "stochastic", "steps", "generator",
                                                             "random_start"]
    x = torch.randn(5, 1, IMG, IMG)
    out = m.predict(x, steps=20)
    assert out.shape == (5, 4)
    torch.testing.assert_close(m.predict(x, steps=20), out)
    g = torch.Generator()
    torch.testing.assert_close(m.predict(x, True, 20, g.manual_seed(0)),
                               m.predict(x, True, 20, g.manual_seed(0)))


def test_ct_random_start_draws_z0_and_adds_no_noise_on_the_way():
    """One step by hand: ``head(a uhat(z_0, t=0) + b z_0)`` with ``z_0`` the generator's first
    draw; the paper's sampler adds ``sqrt(c) eps`` on top, the zero start uses ``z_0 = 0``."""
    from diffpolicy.noprop.dt import posterior_coefficients
    torch.manual_seed(0)
    m = NoPropCT("cnn", n_classes=4, image_size=IMG).eval()
    x = torch.randn(5, 1, IMG, IMG)
    g = torch.Generator()
    with torch.no_grad():
        feats = m.image_features(x).float()
        z0 = torch.randn(5, m.embed.dim, generator=g.manual_seed(3))
        a, b, _ = posterior_coefficients(*m.schedule.alpha_bar(torch.tensor([0.0, 1.0])))
        by_hand = m.head(a * m.uhat(feats, z0, torch.zeros(5)) + b * z0)
    torch.testing.assert_close(m.predict(x, steps=1, generator=g.manual_seed(3), random_start=True),
                               by_hand)
    assert not torch.allclose(m.predict(x, True, 1, g.manual_seed(3)), by_hand)
    assert not torch.allclose(m.predict(x, steps=1), by_hand)
    # random_start defaults to stochastic: the paper's sampler starts from noise
    torch.testing.assert_close(m.predict(x, True, 5, g.manual_seed(1)),
                               m.predict(x, True, 5, g.manual_seed(1), random_start=True))


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


# ---------------------------------------------------------------- paper options
PAPER = {"norm": "none", "time_path": "concat", "learn_endpoints": True}

# state_dict of the default NoPropCT("cnn", n_classes=4, image_size=12) before the options
# existed: old checkpoints must keep loading
DEFAULT_CNN_KEYS = {
    "embed.weight": (4, 20), "backbone.0.weight": (32, 1, 3, 3), "backbone.0.bias": (32,),
    "backbone.4.weight": (64, 32, 3, 3), "backbone.4.bias": (64,),
    "backbone.7.weight": (128, 64, 3, 3), "backbone.7.bias": (128,),
    "backbone.12.weight": (256, 1152), "backbone.12.bias": (256,),
    **{f"{m}.{k}": s for m, n in [("backbone.13", 256), ("z_in.1", 256), ("z_res.1", 256),
                                  ("z_res.4", 256), ("out.1", 256), ("out.4", 128)]
       for k, s in [("weight", (n,)), ("bias", (n,)), ("running_mean", (n,)),
                    ("running_var", (n,)), ("num_batches_tracked", ())]},
    "z_in.0.weight": (256, 20), "z_in.0.bias": (256,),
    "z_res.0.weight": (256, 256), "z_res.0.bias": (256,),
    "z_res.3.weight": (256, 256), "z_res.3.bias": (256,),
    "t_mlp.0.weight": (256, 64), "t_mlp.0.bias": (256,),
    "t_mlp.2.weight": (256, 256), "t_mlp.2.bias": (256,),
    "out.0.weight": (256, 512), "out.0.bias": (256,), "out.3.weight": (128, 256),
    "out.3.bias": (128,), "out.6.weight": (4, 128), "out.6.bias": (4,),
    "head.weight": (4, 20), "head.bias": (4,),
    "schedule.w1": (), "schedule.b1": (), "schedule.w2": (64,), "schedule.b2": (64,),
    "schedule.w3": (64,)}


def test_default_ct_keeps_the_old_state_dict_so_old_checkpoints_load():
    m = NoPropCT("cnn", n_classes=4, image_size=IMG)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == DEFAULT_CNN_KEYS
    assert (m.norm, m.time_path, m.t_sampling) == ("batch", "add", "uniform")
    assert not m.schedule.learn_endpoints
    NoPropCT("cnn", n_classes=4, image_size=IMG).load_state_dict(m.state_dict())   # strict
    r = NoPropCT("resnet18", n_classes=4)
    assert sorted(k for k in r.state_dict() if k.startswith("img_proj.")) == sorted(
        f"img_proj.{k}" for k in ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                  "1.running_var", "1.num_batches_tracked"])


@pytest.mark.parametrize("kw, name", [({"norm": "layer"}, "norm"), ({"norm": "BATCH"}, "norm"),
                                      ({"time_path": "film"}, "time_path"),
                                      ({"t_sampling": "sobol"}, "t_sampling")])
def test_bad_ct_options_raise_naming_the_option(kw, name):
    with pytest.raises(ValueError, match=rf"^{name}: expected one of"):
        NoPropCT("cnn", n_classes=4, image_size=IMG, **kw)


def test_non_bool_learn_endpoints_and_too_close_endpoints_are_refused():
    with pytest.raises(TypeError, match="^learn_endpoints: expected True or False"):
        NoPropCT("cnn", n_classes=4, image_size=IMG, learn_endpoints="yes")
    with pytest.raises(ValueError, match="^learn_endpoints: gamma_0 - gamma_1 must exceed"):
        MonotoneSchedule(1.0, 1.0 - 1e-4, learn_endpoints=True)


def test_norm_none_has_no_batch_norm_outside_a_resnet_and_none_at_all_with_the_cnn():
    def bn1d_outside_backbone(m):
        return [n for n, mod in m.named_modules()
                if isinstance(mod, torch.nn.BatchNorm1d) and not n.startswith("backbone.")]
    assert bn1d_outside_backbone(NoPropCT("cnn", n_classes=4, image_size=IMG)) != []   # the check bites
    cnn = NoPropCT("cnn", n_classes=4, image_size=IMG, norm="none")
    assert not [n for n, mod in cnn.named_modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    r = NoPropCT("resnet18", n_classes=10, stem="small", **PAPER)
    assert bn1d_outside_backbone(r) == []
    assert any(isinstance(mod, torch.nn.BatchNorm2d) for mod in r.backbone.modules())   # ResNet keeps its own
    x, y = torch.randn(2, 1, 28, 28), torch.arange(2)
    loss = r.loss(x, y)["total"]
    loss.backward()
    assert torch.isfinite(loss) and r.img_proj[0].weight.grad.abs().sum() > 0


def test_time_path_concat_is_a_third_256_path_into_out():
    torch.manual_seed(0)
    add = NoPropCT("cnn", n_classes=4, image_size=IMG)
    cat = NoPropCT("cnn", n_classes=4, image_size=IMG, time_path="concat")
    assert add.out[0].in_features == 2 * 256 and cat.out[0].in_features == 3 * 256
    assert cat.t_mlp[-1].out_features == 256
    cat.eval()
    feats, z = torch.randn(3, 256), torch.randn(3, 20)
    lo, hi = cat.logits(feats, z, torch.zeros(3)), cat.logits(feats, z, torch.full((3,), 0.7))
    assert not torch.allclose(lo, hi)                     # t reaches the output
    grad = torch.autograd.grad(hi.sum(), cat.t_mlp[0].weight)[0]
    assert grad.abs().sum() > 0


def test_learned_endpoints_start_at_the_given_values_and_stay_ordered():
    torch.manual_seed(0)
    s = MonotoneSchedule(10.0, -4.0, learn_endpoints=True)
    assert s.gamma_0 == pytest.approx(10.0) and s.gamma_1 == pytest.approx(-4.0, abs=1e-5)
    t = torch.linspace(0, 1, 101)
    g0, g1 = s.endpoints()
    torch.testing.assert_close(s.gamma(t)[0][[0, -1]], torch.stack([g0, g1]).detach())
    gr0, gr1 = torch.autograd.grad(s.snr(torch.tensor([0.0, 1.0])).sum(), [s.gamma_0_raw, s.gap_raw])
    assert gr0 != 0 and gr1 != 0
    with torch.no_grad():
        s.gap_raw.fill_(-40.0)                             # softplus ~ 0: only MIN_GAP left
        s.w2.normal_(0, 3)
    assert s.gamma_0 > s.gamma_1
    g, dg = s.gamma(t)
    assert (dg < 0).all() and (g[1:] <= g[:-1]).all()
    tt = t.clone().requires_grad_()
    with torch.no_grad():
        s.gap_raw.fill_(2.0)
    auto, = torch.autograd.grad(s.gamma(tt)[0].sum(), tt)
    torch.testing.assert_close(s.gamma(t)[1], auto, atol=1e-4, rtol=1e-4)
    assert not hasattr(MonotoneSchedule(10.0, -4.0), "gap_raw")


def test_paper_ct_trains_a_few_steps_and_learns_its_endpoints():
    torch.manual_seed(0)
    m = NoPropCT("cnn", n_classes=10, image_size=28, t_sampling="stratified", **PAPER)
    x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    ends0 = (m.schedule.gamma_0, m.schedule.gamma_1)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        opt.zero_grad()
        losses = m.loss(x, y, generator=g)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        losses["total"].backward()
        for name, p in m.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        for p in (m.schedule.gamma_0_raw, m.schedule.gap_raw):
            assert p.grad.abs() > 0
        opt.step()
    ends1 = (m.schedule.gamma_0, m.schedule.gamma_1)
    assert ends1[0] != ends0[0] and ends1[1] != ends0[1] and ends1[0] > ends1[1]
    out = m.predict(x[:4], steps=5)
    assert out.shape == (4, 10) and torch.isfinite(out).all()


def test_stratified_t_is_marginally_uniform_and_covers_each_batch_evenly():
    m = NoPropCT("cnn", n_classes=4, image_size=IMG, t_sampling="stratified")
    b, n = 16, 2000
    g = torch.Generator().manual_seed(0)
    t = torch.stack([m.sample_t(b, g)[0] for _ in range(n)]).double()       # (n, b)
    assert ((t >= 0) & (t < 1)).all()
    # each batch: b points 1/b apart on the circle [0, 1)
    gaps = torch.diff(torch.cat([t.sort(1).values, t.min(1, keepdim=True).values + 1], 1), dim=1)
    torch.testing.assert_close(gaps, torch.full_like(gaps, 1 / b), atol=1e-5, rtol=0)
    # each index i is U(0, 1) across batches: mean within 4 s.e. (1/sqrt(12 n)) of 1/2 and a
    # Kolmogorov-Smirnov distance below 1.95/sqrt(n) (the 0.1 % critical value)
    assert ((t.mean(0) - 0.5).abs() < 4 / (12 * n) ** 0.5).all()
    grid = torch.linspace(0, 1, 201, dtype=torch.double)
    ecdf = (t.T[:, :, None] <= grid).double().mean(1)                         # (b, 201)
    assert ((ecdf - grid).abs().amax(1) < 1.95 / n ** 0.5).all()


def test_importance_t_follows_the_snr_derivative_of_the_current_schedule():
    """t ~ p(t) = SNR'(t) / (SNR(1) - SNR(0)): its CDF is (SNR(t) - SNR(0)) / (SNR(1) - SNR(0)).

    Checked on a learned, non-linear schedule by a Kolmogorov-Smirnov distance below the
    0.1 % critical value; the returned density matches SNR'(t) / (SNR(1) - SNR(0)) up to the
    grid's piecewise-constant approximation, and integrates to 1 over the grid.
    """
    torch.manual_seed(0)
    m = NoPropCT("cnn", n_classes=4, image_size=IMG, t_sampling="importance", learn_endpoints=True)
    with torch.no_grad():
        m.schedule.w2.normal_(0, 3)
        m.schedule.b2.normal_(0, 3)
        m.schedule.gamma_0_raw.fill_(3.0)
        m.schedule.gap_raw.fill_(2.0)
    g = torch.Generator().manual_seed(0)
    draws = [m.sample_t(64, g) for _ in range(100)]
    t = torch.cat([d[0] for d in draws]).double()
    density = torch.cat([d[1] for d in draws]).double()
    assert ((t >= 0) & (t <= 1)).all() and torch.isfinite(density).all() and (density > 0).all()
    with torch.no_grad():
        snr = lambda s: m.schedule.snr(s.float()).double()
        ends = snr(torch.tensor([0.0, 1.0]))
        cdf = lambda s: (snr(s) - ends[0]) / (ends[1] - ends[0])
        exact = m.schedule.snr_prime(t.float()).double() / (ends[1] - ends[0])
    ts = t.sort().values
    ecdf = torch.arange(1, len(ts) + 1, dtype=torch.double) / len(ts)
    assert (ecdf - cdf(ts)).abs().max() < 1.95 / len(ts) ** 0.5
    torch.testing.assert_close(density, exact, rtol=0.02, atol=0.0)


def test_stratified_diffusion_loss_is_unbiased_with_lower_variance():
    """Same fixed model (eval mode), per-batch diffusion-loss estimates under each sampler.

    By the CLT each mean over n = 1000 iid batch estimates is normal with the s.e. measured
    from the estimates, so |mean_s - mean_u| < 4 * combined s.e. has a false-alarm rate of
    6e-5 (and the generators are seeded).  The tolerance is checked to be tight (< 15 % of
    the loss) and to reject a biased sampler (t_i = i/B, a left Riemann sum).
    """
    torch.manual_seed(0)
    m = NoPropCT("cnn", n_classes=4, image_size=IMG).eval()
    x, y = torch.randn(16, 1, IMG, IMG), torch.arange(16) % 4

    def estimates(sampling, seed, n=1000):
        m.t_sampling = sampling
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            return torch.stack([m.loss(x, y, generator=g)["diffusion"] for _ in range(n)]).double()

    def z_score(a, b):
        se = (a.var() / len(a) + b.var() / len(b)).sqrt()
        return float((a.mean() - b.mean()) / se), float(4 * se / b.mean())

    uni, strat, imp = estimates("uniform", 1), estimates("stratified", 2), estimates("importance", 4)
    z, rel_tol = z_score(strat, uni)
    assert abs(z) < 4 and rel_tol < 0.15
    assert strat.var() < 0.5 * uni.var()
    z, rel_tol = z_score(imp, uni)
    assert abs(z) < 4 and rel_tol < 0.15
    assert imp.var() < 0.5 * strat.var()
    m.sample_t = lambda b, generator=None: (torch.arange(b) / b, torch.ones(b))  # biased control
    assert abs(z_score(estimates("stratified", 3), uni)[0]) > 4


def test_schedule_diagnostics_weights_sum_to_one_and_match_the_snr():
    torch.manual_seed(0)
    m = NoPropCT("cnn", n_classes=4, image_size=IMG, eta=0.3, learn_endpoints=True)
    with torch.no_grad():                       # a non-linear learned state
        m.schedule.w2.normal_(0, 3)
        m.schedule.b2.normal_(0, 3)
        m.schedule.gamma_0_raw.fill_(1.0)     # SNR(0) not negligible beside SNR(1)
        m.schedule.gap_raw.fill_(4.0)
    d = m.schedule_diagnostics(11)
    for k in ("t", "gamma", "snr", "weight"):
        assert isinstance(d[k], list) and len(d[k]) == 11 and all(type(v) is float for v in d[k]), k
    assert d["t"][0] == 0.0 and d["t"][-1] == 1.0
    assert sum(d["weight"]) == pytest.approx(1.0, abs=1e-9) and min(d["weight"]) > 0
    t = torch.tensor(d["t"])
    torch.testing.assert_close(torch.tensor(d["gamma"]), m.schedule.gamma(t)[0].detach())
    torch.testing.assert_close(torch.tensor(d["snr"]), m.schedule.snr(t).detach())
    sp = m.schedule.snr_prime(t).detach().double()
    torch.testing.assert_close(torch.tensor(d["weight"], dtype=torch.double), sp / sp.sum())
    snr = m.schedule.snr(torch.tensor([0.0, 0.9, 1.0])).detach().double()
    direct = float((snr[2] - snr[1]) / (snr[2] - snr[0]))
    assert d["weight_above_0.9"] == pytest.approx(direct, rel=1e-6)
    # ... which is the share of the integral of SNR'(t) (trapezoid on a fine grid)
    fine = torch.linspace(0, 1, 20001, dtype=torch.double)
    w = m.schedule.snr_prime(fine.float()).detach().double()
    share = torch.trapezoid(w[18000:], fine[18000:]) / torch.trapezoid(w, fine)
    assert d["weight_above_0.9"] == pytest.approx(float(share), rel=1e-3)
    assert 0 < d["weight_above_0.9"] < 1
    assert d["gamma_0"] == pytest.approx(1.0) and d["gamma_0"] > d["gamma_1"]


def test_ct_diagnostics_read_the_denoiser_by_t_and_load_from_a_benchmark_checkpoint(tmp_path):
    """A denoiser whose logits ignore x, z and t (last layer zeroed, bias fixed) is right on
    exactly the examples of its favourite class at every t, with the same mass on the true
    class; one-hot embeddings have norm 1 and pairs sqrt(2) apart; the CLI route rebuilds the
    row from the benchmark's config.json or the finished row's record."""
    import json
    from types import SimpleNamespace
    from diffpolicy.noprop.diagnose import _model_from_checkpoint, ct_diagnostics
    torch.manual_seed(0)
    row = {"name": "ct-x", "kind": "ct", "backbone": "cnn", "embedding": "one_hot", "embed_dim": 4,
           "norm": "none", "time_path": "concat"}
    from diffpolicy.noprop.bench import build_model
    model = build_model(row, SimpleNamespace(n_classes=4))
    with torch.no_grad():
        model.out[-1].weight.zero_()
        model.out[-1].bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0]))
    x, y = torch.randn(10, 1, 28, 28), torch.tensor([0, 0, 0, 1, 2, 3, 1, 2, 3, 1])
    d = ct_diagnostics(model, x, y, ts=(0.0, 1.0), n_per_class=50, batch=4)
    assert d["denoiser_acc_t0"] == d["denoiser_acc_t1"] == pytest.approx(0.3)
    # softmax([3, 0, 0, 0]): class 0's 3 examples put e^3 / (e^3 + 3) on it, the 7 others 1 / (e^3 + 3)
    p_true = (3 * math.exp(3) + 7) / (math.exp(3) + 3) / 10
    assert d["denoiser_mean_p_true_t0"] == d["denoiser_mean_p_true_t1"] == pytest.approx(p_true)
    assert d["embed_norm_mean"] == pytest.approx(1.0) and d["min_pair_distance"] == pytest.approx(2 ** 0.5)
    assert 0 < d["noise_std_t1"] < 0.5 and d["head_acc_on_q_zT"] > 0.9
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"rows": [row]}))
    path = tmp_path / "checkpoints" / "ct-x_seed0.pt"
    torch.save({"best_state": model.state_dict(), "model": None}, path)
    loaded = _model_from_checkpoint(path, lambda: SimpleNamespace(n_classes=4))
    assert ct_diagnostics(loaded, x, y, ts=(0.0, 1.0), n_per_class=50, batch=4) == d
    (tmp_path / "config.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="no row 'ct-x'"):
        _model_from_checkpoint(path, lambda: SimpleNamespace(n_classes=4))
    # a finished row is rebuilt from the settings it ran (its rows/ record), whatever config.json
    # the latest command in that out_dir wrote
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "ct-x_seed0.json").write_text(json.dumps({"config": {"row": row}}))
    loaded = _model_from_checkpoint(path, lambda: SimpleNamespace(n_classes=4))
    assert ct_diagnostics(loaded, x, y, ts=(0.0, 1.0), n_per_class=50, batch=4) == d


def test_ct_chain_accuracies_average_seeded_runs_of_each_inference_mode():
    """Each mode's figure is the accuracy of ``predict`` with that mode's keywords; the two random
    modes average ``runs`` draws from one seeded generator, so they repeat and change with it."""
    from diffpolicy.noprop.diagnose import ct_chain_accuracies
    from diffpolicy.noprop.train import accuracy
    torch.manual_seed(0)
    m = NoPropCT("cnn", n_classes=4, image_size=IMG)
    x, y = torch.randn(40, 1, IMG, IMG), torch.arange(40) % 4
    d = ct_chain_accuracies(m, x, y, steps=4, runs=2, batch=16, seed=5)
    assert set(d) == {"deterministic_acc", "random_start_acc", "stochastic_acc"}
    g = torch.Generator().manual_seed(5)
    rs = [accuracy(m, x, y, 16, steps=4, generator=g, random_start=True) for _ in range(2)]
    sto = [accuracy(m, x, y, 16, steps=4, generator=g, stochastic=True) for _ in range(2)]
    assert d["deterministic_acc"] == accuracy(m, x, y, 16, steps=4)
    assert d["random_start_acc"] == pytest.approx(sum(rs) / 2)
    assert d["stochastic_acc"] == pytest.approx(sum(sto) / 2)
    assert ct_chain_accuracies(m, x, y, steps=4, runs=2, batch=16, seed=5) == d
