"""NoProp-DT: the equations, block locality, and the bugs found in public NoProp code."""
from __future__ import annotations

import dataclasses
import inspect
import json

import pytest
import torch

from diffpolicy.diffusion.schedule import noprop_schedule
from diffpolicy.noprop.dt import NoPropDT, posterior_coefficients
from diffpolicy.noprop.embeddings import LabelEmbedding, class_medoids
from diffpolicy.noprop.train import predict_all

B, K = 16, 10
IMG = 12          # small images: the properties tested do not depend on size


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return NoPropDT(n_classes=K, T=10, embedding="learned", embed_dim=20, dropout=0.0,
                    image_size=IMG)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 1, IMG, IMG, generator=g), torch.randint(0, K, (B,), generator=g)


def test_q_zt_mean_uses_sqrt_alpha_bar(model):
    """Mean sqrt(abar_t) u_y (not abar_t), variance 1 - abar_t."""
    u = torch.full((40000, 20), 2.0)
    t = torch.tensor([2, 5, 9])
    z = model.sample_latents(u, t, torch.randn(3, 40000, u.shape[1]))
    for i, ti in enumerate(t):
        abar = model.alpha_bar[ti]
        torch.testing.assert_close(z[i].mean(0), abar.sqrt() * u[0], atol=0.02, rtol=0)
        assert abs(float(z[i].var(0).mean()) - float(1 - abar)) < 0.01
        assert (z[i].mean(0) - abar * u[0]).abs().max() > 0.05     # abar would be wrong


def test_snr_differences_positive_and_reversed_schedule_rejected(model):
    assert (model.snr_diff > 0).all() and len(model.snr_diff) == model.T
    s = noprop_schedule(10)
    rev = dataclasses.replace(s, alpha_bar=s.alpha_bar.flip(0), snr=s.snr.flip(0),
                              snr_diff=-s.snr_diff.flip(0))
    with pytest.raises(ValueError, match=r"SNR\(t\) - SNR\(t-1\) must be > 0"):
        NoPropDT(schedule=rev)


def _block_grads(model, loss):
    params = list(model.blocks.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [(model.blocks.per_block(g) if g is not None else None) for g in grads]


def test_block_locality_in_fused_blocks(model, batch):
    """Block t's loss reaches block t's parameters and no other block's; CE and KL reach none."""
    x, y = batch
    model.train()
    losses = model.loss(x, y)
    for t in range(model.T):
        touched = set()
        for g in _block_grads(model, losses["block"][t]):
            if g is None:
                continue
            flat = g.reshape(model.T, -1).abs().sum(1)
            touched |= set((flat > 0).nonzero().flatten().tolist())
        assert touched == {t}, f"block {t + 1}'s loss reached blocks {sorted(touched)}"
    for name in ("ce", "kl"):
        grads = _block_grads(model, losses[name])
        assert all(g is None or not g.any() for g in grads), f"{name} reached a block"


def test_sum_of_losses_gives_each_block_only_its_own_gradient(model, batch):
    """The fused backward of the summed loss equals per-block backward of each L_t."""
    x, y = batch
    model.train()
    g_noise = torch.Generator()
    losses = model.loss(x, y, generator=g_noise.manual_seed(5))
    total = [g.clone() for g in _block_grads(model, losses["total"])]
    for t in (0, 4, 9):
        own = _block_grads(model, losses["block"][t])
        for gt, go in zip(total, own):
            if go is not None:
                torch.testing.assert_close(gt[t], go[t], atol=1e-6, rtol=1e-5)


def test_learned_embedding_gets_gradient_and_one_hot_is_fixed(batch):
    x, y = batch
    m = NoPropDT(embedding="learned", dropout=0.0, image_size=IMG)
    m.loss(x, y)["total"].backward()
    assert m.embed.weight.grad is not None and m.embed.weight.grad.abs().sum() > 0
    # each shared term on its own reaches W_embed too
    for name in ("ce", "kl"):
        g, = torch.autograd.grad(m.loss(x, y)[name], m.embed.weight)
        assert g.abs().sum() > 0, name
    oh = NoPropDT(embedding="one_hot", dropout=0.0, image_size=IMG)
    assert oh.embed.dim == 10 and not any(p is oh.embed.weight for p in oh.parameters())
    torch.testing.assert_close(oh.embed.weight, torch.eye(10))


def test_learned_embedding_is_orthogonal_at_init():
    w = LabelEmbedding("learned", 10, 20).weight.detach()
    torch.testing.assert_close(w @ w.T, torch.eye(10), atol=1e-5, rtol=0)


def test_prototype_embedding_is_a_class_medoid():
    torch.manual_seed(0)
    imgs = torch.randn(30, 1, 4, 4)
    labels = torch.arange(30) % 3
    imgs[labels == 1] += 5.0
    protos = class_medoids(imgs, labels, 3)
    for k in range(3):
        cls = imgs[labels == k].reshape(10, -1)
        best = cls[torch.cdist(cls, cls).sum(1).argmin()]
        torch.testing.assert_close(protos[k], best)
    emb = LabelEmbedding("prototype", 3, prototypes=protos)
    assert emb.dim == 16 and emb.weight.requires_grad
    with pytest.raises(ValueError, match="prototype embedding needs prototypes"):
        LabelEmbedding("prototype", 3)
    with pytest.raises(ValueError, match="unknown label embedding 'onehot'"):
        LabelEmbedding("onehot", 3)


def test_head_cross_entropy_is_on_logits_of_a_noisy_z_T(model):
    """CE of head(z_T), z_T ~ q(z_T | y); logits go in (no softmax first)."""
    y = torch.tensor([0, 1, 2, 3])
    u, eps = model.embed(y), torch.randn(4, model.embed.dim)
    abar = model.alpha_bar[model.T]
    manual = torch.nn.functional.cross_entropy(model.head(abar.sqrt() * u + (1 - abar).sqrt() * eps), y)
    torch.testing.assert_close(model.head_loss(u, y, eps), manual)
    # a confidently wrong head must cost far more than log(K): a double softmax caps CE near 3.2
    wrong = NoPropDT(embedding="one_hot", dropout=0.0, image_size=IMG)
    with torch.no_grad():
        wrong.head.weight.copy_(50 * torch.eye(10).roll(1, 0))
        wrong.head.bias.zero_()
    ce = wrong.head_loss(wrong.embed(y), y, torch.zeros(4, 10))
    assert ce > 10


def test_inference_takes_no_labels_and_classifies_with_the_head(model, batch):
    x, y = batch
    assert [p for p in inspect.signature(model.predict).parameters] == ["x", "stochastic", "generator"]
    assert "y" not in inspect.signature(predict_all).parameters
    p1 = predict_all(model, x)
    model.eval()
    model.loss(x, (y + 3) % K)          # a poisoned label seen before inference changes nothing
    assert torch.equal(predict_all(model, x), p1)
    # the classifier is the head on z_T, not the denoiser: permuting the head permutes classes
    logits = model.predict(x)
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(0))
    saved = (model.head.weight.data.clone(), model.head.bias.data.clone())
    with torch.no_grad():
        model.head.weight.copy_(saved[0][perm])
        model.head.bias.copy_(saved[1][perm])
    try:
        torch.testing.assert_close(model.predict(x), logits[:, perm])
    finally:
        with torch.no_grad():
            model.head.weight.copy_(saved[0])
            model.head.bias.copy_(saved[1])


def test_deterministic_and_stochastic_inference(model, batch):
    x, _ = batch
    torch.testing.assert_close(model.predict(x), model.predict(x))
    g = torch.Generator()
    s1 = model.predict(x, stochastic=True, generator=g.manual_seed(0))
    s2 = model.predict(x, stochastic=True, generator=g.manual_seed(0))
    s3 = model.predict(x, stochastic=True, generator=g.manual_seed(1))
    torch.testing.assert_close(s1, s2)
    assert not torch.allclose(s1, s3)
    model.train()                            # predict runs in eval mode, then restores the mode
    model.predict(x)
    assert model.training


def test_posterior_coefficients_reproduce_the_shared_schedule():
    s = noprop_schedule(10)
    a, b, c = posterior_coefficients(s.alpha_bar[:-1], s.alpha_bar[1:])
    torch.testing.assert_close(a, s.a[1:])
    torch.testing.assert_close(b, s.b[1:])
    torch.testing.assert_close(c, s.c[1:])


def test_subset_and_merge_keep_the_model(model, batch):
    x, _ = batch
    model.eval()
    parts = [model.subset([1, 2, 3, 4]), model.subset([5, 6, 7, 8, 9, 10])]
    assert parts[0].blocks.n == 4 and parts[1].block_ids[0] == 5
    with pytest.raises(RuntimeError, match="predict needs all 10 blocks"):
        parts[0].predict(x)
    merged = NoPropDT.merge(parts).eval()
    torch.testing.assert_close(merged.predict(x), model.predict(x))
    with pytest.raises(ValueError, match="block_ids must be contiguous"):
        NoPropDT(block_ids=[1, 3])


@pytest.mark.parametrize("embedding", ["one_hot", "learned", "prototype"])
def test_head_starts_as_nearest_embedding_classifier(embedding):
    """The head begins able to read z_T ~ q(z_T | y); a default init cannot (it limited accuracy)."""
    torch.manual_seed(0)
    protos = torch.randn(K, 1, 6, 6) * 3 if embedding == "prototype" else None
    m = NoPropDT(embedding=embedding, prototypes=protos, image_size=IMG)
    y = torch.arange(K).repeat(50)
    u = m.embed(y)
    z_T = m.sample_latents(u, torch.tensor([m.T]), torch.randn(1, *u.shape))[0]
    assert (m.head(z_T).argmax(-1) == y).float().mean() > 0.95
    assert m.head_loss(u, y, torch.randn_like(u)) < 0.1
    torch.manual_seed(0)
    plain = NoPropDT(embedding=embedding, prototypes=protos, image_size=IMG, head_init="default")
    assert plain.head_loss(u.detach(), y, torch.randn_like(u)) > 1.0
    with pytest.raises(ValueError, match="head_init: expected"):
        NoPropDT(head_init="zeros", image_size=IMG)


def test_block_loss_mean_gives_the_shared_parameters_the_papers_balance(batch):
    """'mean' = the expected shared-parameter loss of Algorithm 1 (one block per batch):
    CE + KL + (1/T) sum_t L_t; block gradients keep their direction; one-block batches
    and a parallel worker's share are divided by the blocks trained on the batch overall."""
    x, y = batch
    torch.manual_seed(0)
    summed = NoPropDT(n_classes=K, T=4, dropout=0.0, image_size=IMG)
    mean = NoPropDT(n_classes=K, T=4, dropout=0.0, image_size=IMG, block_loss="mean")
    mean.load_state_dict(summed.state_dict())
    g = torch.Generator()
    ls = summed.loss(x, y, generator=g.manual_seed(3))
    lm = mean.loss(x, y, generator=g.manual_seed(3))
    torch.testing.assert_close(ls["block"], lm["block"])
    torch.testing.assert_close(lm["total"], ls["block"].sum() / 4 + ls["ce"] + ls["kl"])
    one = mean.loss(x, y, blocks=slice(2, 3), generator=g.manual_seed(3))
    torch.testing.assert_close(one["total"], one["block"].sum() + one["ce"] + one["kl"])
    worker = mean.subset([3, 4])                           # parallel share: still over all T
    part = worker.loss(x, y, generator=g.manual_seed(3))
    torch.testing.assert_close(part["total"], part["block"].sum() / 4 + part["ce"] + part["kl"])
    with pytest.raises(ValueError, match="block_loss"):
        NoPropDT(block_loss="avg")


def test_latent_diagnostics_read_the_embedding_and_the_head(tmp_path):
    from diffpolicy.noprop.diagnose import _model_from_checkpoint, latent_diagnostics
    torch.manual_seed(0)
    one_hot = NoPropDT(n_classes=K, T=10, embedding="one_hot", image_size=IMG)
    d = latent_diagnostics(one_hot)
    assert d["embed_norm_mean"] == pytest.approx(1.0) and d["min_pair_distance"] == pytest.approx(2 ** 0.5)
    assert d["head_acc_on_q_zT"] > 0.95                     # nearest-embedding head, small noise at T
    assert d["noise_std_last_step"] == pytest.approx(float(one_hot.c[10].sqrt()))
    learned = NoPropDT(n_classes=K, T=10, image_size=28)
    with torch.no_grad():
        learned.embed.weight.mul_(0.1)                      # shrunken embeddings: the noise wins
        learned.head.weight.mul_(0.1)
    small = latent_diagnostics(learned)
    assert small["embed_norm_mean"] == pytest.approx(0.1, rel=1e-4) and small["head_acc_on_q_zT"] < 0.9
    path = tmp_path / "ck.pt"
    torch.save({"best_state": learned.state_dict(), "model": None}, path)
    assert latent_diagnostics(_model_from_checkpoint(path)) == small
    with pytest.raises(ValueError, match="no latest weights in this checkpoint"):
        _model_from_checkpoint(path, latest=True)
    both = tmp_path / "both.pt"                 # selected: the shrunken model; latest: one-hot
    one_hot_28 = NoPropDT(n_classes=K, T=10, embedding="one_hot", image_size=28)
    torch.save({"best_state": learned.state_dict(), "model": one_hot_28.state_dict()}, both)
    assert latent_diagnostics(_model_from_checkpoint(both)) == small
    assert latent_diagnostics(_model_from_checkpoint(both, latest=True)) == latent_diagnostics(one_hot_28)
    # the CLI writes them by checkpoint name, with the machine that read them
    from diffpolicy.noprop.diagnose import main
    assert main([str(path), "--json", str(tmp_path / "diag.json")]) == 0
    written = json.loads((tmp_path / "diag.json").read_text())
    small_pair = small.pop("min_pair_classes")
    assert written["ck"].pop("min_pair_classes") == small_pair and len(small_pair) == 2
    assert written["ck"] == pytest.approx(small) and set(written) == {"ck", "machine"}
    assert written["machine"]["cpu_model"] and written["machine"]["torch"] == torch.__version__


def test_posterior_diagnostics_read_block_one_and_the_chain():
    from diffpolicy.noprop.diagnose import posterior_diagnostics
    from diffpolicy.noprop.train import accuracy
    torch.manual_seed(0)
    model = NoPropDT(n_classes=K, T=4, embedding="one_hot", image_size=IMG)
    logits = torch.linspace(2.0, -1.0, K)
    with torch.no_grad():                                   # block 1 ignores x and z: softmax(logits)
        model.blocks.out3.weight[0].zero_()
        model.blocks.out3.bias[0].copy_(logits)
    x = torch.randn(30, 1, IMG, IMG)
    y = torch.arange(30) % K
    d = posterior_diagnostics(model, x, y, draws=2, runs=2, batch=7)
    p = torch.softmax(logits, -1)
    assert d["block1_mean_p_true"] == pytest.approx(float(p[y].mean()), rel=1e-5)
    assert d["block1_argmax_acc"] == pytest.approx(float((y == 0).float().mean()))
    assert d["deterministic_acc"] == pytest.approx(accuracy(model, x, y))
    assert 0.0 <= d["stochastic_acc"] <= 1.0
