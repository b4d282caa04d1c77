"""Training: per-block AdamW, epoch plans, model selection, seeds, resume, parallel workers."""
from __future__ import annotations

import math

import pytest
import torch

from diffpolicy.noprop.backprop import BackpropDT
from diffpolicy.noprop.blocks import StackedPaperBlocks
from diffpolicy.noprop.dt import NoPropDT
from diffpolicy.noprop.parallel import block_partition
from diffpolicy.noprop.train import BlockAdamW, TrainConfig, accuracy, epoch_plan, fit, predict_all
from noprop_helpers import IMG, tiny_splits

K = 4


def _dt(T=3, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return NoPropDT(n_classes=K, T=T, embedding="learned", embed_dim=8, dropout=dropout,
                    image_size=IMG)


def _cfg(**kw):
    base = dict(epochs=1, batch_size=16, progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("l2", [False, True])
def test_block_adamw_equals_one_adamw_per_block_and_leaves_others_alone(l2):
    """l2=False: one torch AdamW per block; l2=True: one torch Adam with an L2 penalty."""
    torch.manual_seed(0)          # float64: Adam amplifies rounding where gradients are ~0
    stack = StackedPaperBlocks(2, 6, K, image_size=IMG, dropout=0.0).double()
    ref = stack.to_block(1).double()
    ref_opt = (torch.optim.Adam if l2 else torch.optim.AdamW)(ref.parameters(), lr=1e-2,
                                                              weight_decay=0.1)
    opt = BlockAdamW(stack, lr=1e-2, weight_decay=0.1, l2=l2)
    before0 = stack.to_block(0).state_dict()
    for i in range(3):
        x, z = torch.randn(8, 1, IMG, IMG).double(), torch.randn(2, 8, 6).double()
        opt.zero_grad()
        ref_opt.zero_grad()
        one = slice(1, 2)                              # only block 1 runs and has a loss
        stack.from_features(stack.image_features(x, one), z[one], one)[0].pow(2).mean().backward()
        opt.step(slice(1, 2))
        ref(x, z[1]).pow(2).mean().backward()
        ref_opt.step()
    got = stack.to_block(1).state_dict()
    # biases whose shift a later batch norm cancels have rounding-noise gradients (~1e-17), which
    # Adam normalises into +-lr steps; an L2 penalty then adds a real term to noise of either sign
    cancelled = {n for n, p in ref.named_parameters() if l2 and p.grad.abs().max() < 1e-12}
    assert all(n.endswith(".bias") for n in cancelled)
    for name, value in ref.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        if name in cancelled:
            continue
        torch.testing.assert_close(got[name].double(), value, atol=1e-6, rtol=1e-5, msg=name)
    for name, value in stack.to_block(0).state_dict().items():
        assert torch.equal(value, before0[name]), f"inactive block changed: {name}"
    assert opt.steps.tolist() == [0, 3]


def test_epoch_means_every_block_sees_every_example_once():
    m, g = _dt(T=3), torch.Generator().manual_seed(0)
    assert [len(p) for p in epoch_plan(m, 5, "all", g)] == [5]
    sweep = epoch_plan(m, 5, "sweep", g)
    assert len(sweep) == 3 and all(p == [slice(i, i + 1)] * 5 for i, p in enumerate(sweep))
    assert sum(len(p) for p in epoch_plan(m, 5, "random", g)) == 15
    assert epoch_plan(BackpropDT(K, T=3, image_size=IMG), 5, "sweep", g) == [[slice(None)] * 5]
    with pytest.raises(ValueError, match="block_schedule: expected one of"):
        TrainConfig(block_schedule="backwards")


def test_fit_learns_and_sweep_touches_one_block_per_pass():
    data = tiny_splits()
    m = _dt()
    res = fit(m, data, _cfg(epochs=5, lr=1e-2), log=lambda *_: None)
    assert res["test_acc"]["deterministic"] > 0.8          # 4 classes: chance is 0.25
    assert len(res["history"]) == 5 and res["seconds_per_epoch"] > 0
    m2 = _dt()
    res2 = fit(m2, data, _cfg(block_schedule="sweep", max_steps_per_epoch=6), log=lambda *_: None)
    assert res2["history"][0]["steps"] == 6                  # first pass only: block 1
    fresh = _dt()
    for i in (1, 2):
        assert torch.equal(m2.blocks.per_block(m2.blocks.conv3.weight)[i],
                           fresh.blocks.per_block(fresh.blocks.conv3.weight)[i])
    assert not torch.equal(m2.blocks.per_block(m2.blocks.conv3.weight)[0],
                           fresh.blocks.per_block(fresh.blocks.conv3.weight)[0])


def test_model_selection_never_reads_test_labels():
    data = tiny_splits()
    poisoned = tiny_splits()
    poisoned.test_y = (poisoned.test_y + 1) % K
    r1 = fit(_dt(), data, _cfg(epochs=2), log=lambda *_: None)
    r2 = fit(_dt(), poisoned, _cfg(epochs=2), log=lambda *_: None)
    assert r1["best_epoch"] == r2["best_epoch"]
    assert [h["val_acc"] for h in r1["history"]] == [h["val_acc"] for h in r2["history"]]
    assert r1["test_acc"] != r2["test_acc"]


def test_seeds_reproduce_and_differ():
    data = tiny_splits()
    runs = []
    for seed in (0, 0, 1):
        m = _dt(seed=seed, dropout=0.2)
        fit(m, data, _cfg(seed=seed, max_steps_per_epoch=3), log=lambda *_: None)
        runs.append(m.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_resume_from_checkpoint_continues_identically(tmp_path):
    data = tiny_splits()
    straight = _dt(dropout=0.2)
    fit(straight, data, _cfg(epochs=2, max_steps_per_epoch=3), log=lambda *_: None)
    ck = tmp_path / "ck.pt"
    first = _dt(dropout=0.2)
    fit(first, data, _cfg(epochs=1, max_steps_per_epoch=3), checkpoint=ck, log=lambda *_: None)
    resumed = _dt(seed=7, dropout=0.2)                      # different init: all state comes from ck
    logs = []
    res = fit(resumed, data, _cfg(epochs=2, max_steps_per_epoch=3), checkpoint=ck, log=logs.append)
    assert any("resumed after epoch 1" in line for line in logs) and len(res["history"]) == 2
    # the time the first process spent is carried over, not lost
    assert res["resumed_seconds"] > 0 and torch.load(ck, weights_only=False)["fit_seconds"] > res["resumed_seconds"]
    # the best epoch is restored at the end of both runs; compare the final-epoch checkpoints
    last = torch.load(ck, weights_only=False)["model"]
    ref = _dt(dropout=0.2)
    ck2 = tmp_path / "ck2.pt"
    fit(ref, data, _cfg(epochs=2, max_steps_per_epoch=3), checkpoint=ck2, log=lambda *_: None)
    ref_last = torch.load(ck2, weights_only=False)["model"]
    ck3 = tmp_path / "ck3.pt"
    fit(_dt(), data, _cfg(epochs=1, max_steps_per_epoch=1, lr_schedule="cosine"), checkpoint=ck3,
        log=lambda *_: None)
    with pytest.raises(ValueError, match="cosine"):       # a cosine run's length is fixed
        fit(_dt(), data, _cfg(epochs=2, max_steps_per_epoch=1, lr_schedule="cosine"), checkpoint=ck3,
            log=lambda *_: None)
    for k in ref_last:
        torch.testing.assert_close(last[k], ref_last[k], msg=k)


def test_block_partition():
    assert block_partition(10, 2) == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert block_partition(10, 3) == [[1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    with pytest.raises(ValueError, match="world_size must be in 1..T=10"):
        block_partition(10, 11)


def _close(a: torch.nn.Module, b: torch.nn.Module, atol: float) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sb:
        torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=1e-4, msg=lambda m: f"{k}: {m}")


def _serial_and_two_workers(cfg: TrainConfig):
    """``fit`` of one small NoProp-DT under ``cfg`` in one process and with ``block_workers=2``,
    from the same initial weights: ``data, model kwargs, (serial, result), (parallel, result)``."""
    data = tiny_splits(n_train=48)
    kwargs = dict(n_classes=K, T=4, embedding="learned", embed_dim=8, dropout=0.0, image_size=IMG)
    fitted = []
    for workers in (1, 2):
        torch.manual_seed(0)
        m = NoPropDT(**kwargs)
        fitted.append((m, fit(m, data, TrainConfig(**{**cfg.__dict__, "block_workers": workers}),
                              log=lambda *_: None)))
    return data, kwargs, fitted[0], fitted[1]


def test_block_parallel_fit_on_two_gloo_processes_matches_serial(tmp_path):
    """Blocks split over 2 processes, only head and W_embed synced: the model serial fit gives,
    the same validation curve, and a resume from its checkpoint continues the same run."""
    # one precision and layout for both (auto could measure a different winner for a worker's share)
    cfg = _cfg(epochs=2, max_steps_per_epoch=3, precision="fp32", layout="fused")
    data, kwargs, (serial, res_s), (par, res_p) = _serial_and_two_workers(cfg)
    assert par.block_ids == [1, 2, 3, 4] and [h["steps"] for h in res_p["history"]] == [3, 3]
    assert all(h["seconds"] > h["merge_seconds"] > 0 for h in res_p["history"])
    assert [h["val_acc"] for h in res_p["history"]] == [h["val_acc"] for h in res_s["history"]]
    # the logged loss is the whole model's, not rank 0's share (its blocks + half the shared terms)
    assert [h["loss"] for h in res_p["history"]] == pytest.approx(
        [h["loss"] for h in res_s["history"]], rel=1e-3)
    # a share's grouped convs sum in another order than all T blocks'; where a gradient is ~0,
    # Adam turns that rounding into up to ~lr per step (6 steps of 1e-3 here).  A missing
    # all-reduce moves the shared head and embedding by far more.
    _close(par, serial, atol=1e-3)
    assert torch.equal(predict_all(par, data.test_x), predict_all(serial, data.test_x))
    # interrupted after epoch 1 (a constant-rate run can be extended), then resumed to 2
    ck = tmp_path / "par.pt"
    torch.manual_seed(0)
    first = NoPropDT(**kwargs)
    fit(first, data, TrainConfig(**{**cfg.__dict__, "block_workers": 2, "epochs": 1}),
        checkpoint=ck, log=lambda *_: None)
    torch.manual_seed(0)
    resumed = NoPropDT(**kwargs)
    logs = []
    res_r = fit(resumed, data, TrainConfig(**{**cfg.__dict__, "block_workers": 2}), checkpoint=ck,
                log=logs.append)
    assert any("resumed after epoch 1" in m for m in logs) and len(res_r["history"]) == 2
    _close(resumed, par, atol=1e-6)                 # same processes, same kernels
    # a checkpoint is resumed only with the block_workers it was trained with
    with pytest.raises(ValueError, match="trained with block_workers=2; this config trains in one"):
        fit(NoPropDT(**kwargs), data, cfg, checkpoint=ck, log=lambda *_: None)
    with pytest.raises(ValueError, match="block_workers: expected a whole number"):
        TrainConfig(block_workers=0)


def test_block_parallel_fit_stops_its_helpers_when_rank_0_fails(monkeypatch):
    """An error on rank 0 mid-epoch (the helpers wait inside an all-reduce) reaches the caller
    at once, with the helpers stopped and the process group gone."""
    import time

    import torch.distributed as dist

    from diffpolicy.noprop import train as train_mod

    def boom(self, epoch, desc):
        raise KeyError("rank 0 failed")
    monkeypatch.setattr(train_mod.EpochRunner, "train_epoch", boom)   # rank 0 only: helpers spawn
    kwargs = dict(n_classes=K, T=4, embedding="learned", embed_dim=8, dropout=0.0, image_size=IMG)
    t0 = time.time()
    with pytest.raises(KeyError, match="rank 0 failed"):
        fit(NoPropDT(**kwargs), tiny_splits(n_train=48),
            _cfg(block_workers=2, precision="fp32", layout="fused"), log=lambda *_: None)
    assert time.time() - t0 < 120 and not dist.is_initialized()


def test_block_parallel_fit_refuses_what_it_cannot_split():
    data = tiny_splits(n_train=16)
    with pytest.raises(ValueError, match="trains NoProp-DT's blocks apart; got BackpropDT"):
        fit(BackpropDT(n_classes=K, T=3, embed_dim=8, image_size=IMG, dropout=0.0), data,
            _cfg(block_workers=2, precision="fp32", layout="fused"), log=lambda *_: None)
    with pytest.raises(ValueError, match="block_schedule='all'"):
        fit(_dt(), data, _cfg(block_workers=2, block_schedule="sweep", precision="fp32",
                              layout="fused"), log=lambda *_: None)
    with pytest.raises(ValueError, match="world_size must be in 1..T=3"):
        fit(_dt(), data, _cfg(block_workers=4, precision="fp32", layout="fused"), log=lambda *_: None)


@pytest.fixture
def rates_set(monkeypatch) -> list[float]:
    """Every learning rate training sets (``Optimizers.set_lr``), in order."""
    from diffpolicy.noprop.train import Optimizers
    seen, orig = [], Optimizers.set_lr

    def spy(self, lr):
        seen.append(lr)
        orig(self, lr)
    monkeypatch.setattr(Optimizers, "set_lr", spy)
    return seen


def test_cosine_schedule_decays_the_learning_rate_to_zero(rates_set):
    data = tiny_splits(n_train=32)
    fit(_dt(), data, _cfg(epochs=2, lr=1e-2, lr_schedule="cosine"), log=lambda *_: None)
    seen = rates_set
    assert len(seen) == 4 and seen[0] == pytest.approx(1e-2) and seen[-1] < 1.5e-3
    assert all(a > b for a, b in zip(seen, seen[1:]))
    with pytest.raises(ValueError, match="lr_schedule: expected"):
        TrainConfig(lr_schedule="step")


def test_optimizer_option_picks_adam_with_l2_or_adamw():
    from diffpolicy.noprop.train import Optimizers
    m = _dt()
    assert type(Optimizers(m, _cfg()).rest) is torch.optim.AdamW
    adam = Optimizers(m, _cfg(optimizer="adam", block_schedule="random"))
    assert type(adam.rest) is torch.optim.Adam and adam.blocks.l2
    with pytest.raises(ValueError, match="optimizer"):
        _cfg(optimizer="sgd")


def test_stochastic_mode_is_tested_once_per_sampling_run():
    data = tiny_splits()
    modes = {"stochastic": {"stochastic": True, "runs": 3}, "deterministic": {}}
    res = fit(_dt(), data, _cfg(predict_modes=modes, max_steps_per_epoch=2))
    runs = res["test_acc_runs"]["stochastic"]
    assert len(runs) == 3 and res["test_acc"]["stochastic"] == pytest.approx(sum(runs) / 3)
    assert len(res["test_acc_runs"]["deterministic"]) == 1
    again = fit(_dt(), data, _cfg(predict_modes=modes, max_steps_per_epoch=2))
    assert again["test_acc_runs"] == res["test_acc_runs"]             # seeded sampling noise
    assert again["history"][0]["val_acc"] == res["history"][0]["val_acc"]


def test_learned_schedule_end_points_escape_weight_decay_and_the_schedule_is_logged():
    from diffpolicy.noprop.ct import NoPropCT
    from diffpolicy.noprop.train import Optimizers
    torch.manual_seed(0)
    ct = NoPropCT("cnn", n_classes=K, embed_dim=8, image_size=IMG, learn_endpoints=True)
    opt = Optimizers(ct, _cfg(optimizer="adam"))
    levels = {id(ct.schedule.gamma_0_raw), id(ct.schedule.gap_raw)}
    groups = opt.rest.param_groups
    assert [{id(p) for p in g["params"]} & levels for g in groups] == [set(), levels]
    assert groups[0]["weight_decay"] == 1e-3 and groups[1]["weight_decay"] == 0.0
    res = fit(ct, tiny_splits(), _cfg(max_steps_per_epoch=2, val_overrides={"steps": 5},
                                      predict_modes={"deterministic": {"steps": 5}}))
    sched = res["history"][0]["schedule"]
    assert len(sched["t"]) == 11 and abs(sum(sched["weight"]) - 1) < 1e-6


def test_augment_setting_is_checked_and_trains():
    from diffpolicy.noprop.backprop import BackboneClassifier
    from diffpolicy.noprop.train import Optimizers, TrainConfig, train_epoch
    with pytest.raises(ValueError, match="augment: expected one of"):
        TrainConfig(augment="flip")
    cfg = TrainConfig(augment="crop_flip", precision="fp32", layout="per_block", batch_size=8,
                      progress=False)
    torch.manual_seed(0)
    model = BackboneClassifier("resnet18", 10, stem="small")
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    stats = train_epoch(model, x, y, Optimizers(model, cfg), cfg, *gens)
    assert stats["steps"] == 2 and math.isfinite(stats["loss"])


def test_epoch_loss_is_the_mean_of_the_step_losses():
    """The loss is summed on the model's device and read once an epoch: the value reported
    must still be the mean of each step's total loss."""
    from diffpolicy.noprop.backprop import BackboneClassifier
    from diffpolicy.noprop.train import Optimizers, train_epoch
    cfg = TrainConfig(precision="fp32", batch_size=8, progress=False)
    torch.manual_seed(0)
    model = BackboneClassifier("resnet18", 10, stem="small")
    x, y = torch.randn(24, 1, 28, 28), torch.randint(0, 10, (24,))
    seen = []
    loss_of = model.loss

    def recording_loss(*args, **kw):
        out = loss_of(*args, **kw)
        seen.append(float(out["total"].detach()))
        return out
    model.loss = recording_loss
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    stats = train_epoch(model, x, y, Optimizers(model, cfg), cfg, *gens)
    assert stats["steps"] == len(seen) == 3
    assert stats["loss"] == pytest.approx(sum(seen) / 3, rel=1e-12)
    assert len(set(seen)) == 3                            # three different batches were trained


def test_constant_rate_with_a_decaying_tail():
    """lr_decay_epochs: constant until the last N epochs, then a cosine to 0; validated."""
    from diffpolicy.noprop.train import scheduled_lr
    cfg = _cfg(epochs=10, lr=1e-2, lr_decay_epochs=4)
    assert [scheduled_lr(cfg, e) for e in (0, 3.5, 6)] == [pytest.approx(1e-2)] * 3
    assert scheduled_lr(cfg, 8) == pytest.approx(5e-3) and scheduled_lr(cfg, 10) == pytest.approx(0)
    assert scheduled_lr(_cfg(epochs=10), 9) is None                     # plain constant: untouched
    assert scheduled_lr(_cfg(epochs=10, lr_schedule="cosine"), 5) == pytest.approx(5e-4)
    for bad in (-1, 11, 2.5, True):
        with pytest.raises(ValueError, match="lr_decay_epochs: expected"):
            _cfg(epochs=10, lr_decay_epochs=bad)
    with pytest.raises(ValueError, match="tails a constant rate"):
        _cfg(epochs=10, lr_decay_epochs=2, lr_schedule="cosine")


def test_a_constant_rate_run_resumes_into_a_decaying_tail_that_starts_after_it(tmp_path, rates_set):
    data = tiny_splits(n_train=32)
    quiet = dict(log=lambda *_: None)
    ck = tmp_path / "ck.pt"
    fit(_dt(), data, _cfg(epochs=1, max_steps_per_epoch=1), checkpoint=ck, **quiet)
    keep = ck.read_bytes()
    with pytest.raises(ValueError, match="ran at another learning rate"):   # tail would cover epoch 1
        fit(_dt(), data, _cfg(epochs=2, max_steps_per_epoch=1, lr_decay_epochs=2), checkpoint=ck, **quiet)
    assert ck.read_bytes() == keep                                           # refused before touching it
    assert rates_set == []                                                  # constant: never set
    res = fit(_dt(), data, _cfg(epochs=3, max_steps_per_epoch=1, lr_decay_epochs=2),
              checkpoint=ck, **quiet)
    assert len(res["history"]) == 3
    assert rates_set == [pytest.approx(1e-3), pytest.approx(5e-4)]      # epochs 2 and 3 start the tail
    with pytest.raises(ValueError, match="ran at another learning rate"):   # a decayed run is fixed
        fit(_dt(), data, _cfg(epochs=4, max_steps_per_epoch=1, lr_decay_epochs=2), checkpoint=ck, **quiet)


def test_a_run_does_not_resume_under_another_recipe(tmp_path):
    """Augmentation, optimiser, batch size, weight decay or block schedule changed on resume:
    refused before the checkpoint is touched; execution settings (precision) may change."""
    data = tiny_splits(n_train=32)
    quiet = dict(log=lambda *_: None)
    ck = tmp_path / "ck.pt"
    fit(_dt(), data, _cfg(epochs=1, max_steps_per_epoch=1), checkpoint=ck, **quiet)
    keep = ck.read_bytes()
    for change, named in ((dict(augment="crop_flip"), "augment 'none' there, 'crop_flip' here"),
                          (dict(optimizer="adam"), "optimizer 'adamw' there, 'adam' here"),
                          (dict(batch_size=8), "batch_size 16 there, 8 here"),
                          (dict(weight_decay=0.0), "weight_decay"),
                          (dict(block_schedule="random"), "block_schedule"),
                          (dict(ema=True), "ema False there, True here")):
        with pytest.raises(ValueError, match=f"other settings than this run's.*{named}"):
            fit(_dt(), data, _cfg(epochs=2, max_steps_per_epoch=1, **change), checkpoint=ck, **quiet)
        assert ck.read_bytes() == keep
    res = fit(_dt(), data, _cfg(epochs=2, max_steps_per_epoch=1, precision="fp32"), checkpoint=ck, **quiet)
    assert len(res["history"]) == 2


def test_ema_leaves_training_alone_and_is_what_is_selected_and_tested(tmp_path):
    """With ema=True the live weights train exactly as without it; validation, the selected
    model and the test read the average, which resumes from the checkpoint unchanged."""
    data = tiny_splits()
    quiet = dict(log=lambda *_: None)
    fixed = dict(max_steps_per_epoch=3, precision="fp32", layout="fused")   # one kernel choice for all
    plain_ck, ema_ck = tmp_path / "plain.pt", tmp_path / "ema.pt"
    fit(_dt(dropout=0.2), data, _cfg(epochs=2, **fixed), checkpoint=plain_ck, **quiet)
    m = _dt(dropout=0.2)
    res = fit(m, data, _cfg(epochs=2, ema=True, **fixed), checkpoint=ema_ck, **quiet)
    plain, ema = torch.load(plain_ck, weights_only=False), torch.load(ema_ck, weights_only=False)
    assert all(torch.equal(plain["model"][k], ema["model"][k]) for k in plain["model"])
    avg = ema["ema"]["averaged"]
    assert ema["ema"]["optimization_step"] == 6 and 0 < ema["ema"]["decay"] < 1
    assert not all(torch.equal(avg[k], ema["model"][k]) for k in avg)
    best = ema["best_state"]                     # the average at the best epoch, now in the model
    assert all(torch.equal(v, best[k]) for k, v in m.state_dict().items())
    if res["best_epoch"] == 2:
        assert all(torch.equal(avg[k], best[k]) for k in avg)
    check = _dt()
    check.load_state_dict(avg)
    kw = dict(_cfg().predict_modes["deterministic"])
    assert res["history"][-1]["val_acc"] == accuracy(check, data.val_x, data.val_y, 128, "fp32", **kw)
    # resumed after epoch 1: the same average as the straight run
    part_ck = tmp_path / "part.pt"
    fit(_dt(dropout=0.2), data, _cfg(epochs=1, ema=True, **fixed), checkpoint=part_ck, **quiet)
    one = torch.load(part_ck, weights_only=False)          # one epoch: the selected state is the average
    assert all(torch.equal(one["best_state"][k], v) for k, v in one["ema"]["averaged"].items())
    fit(_dt(seed=5, dropout=0.2), data, _cfg(epochs=2, ema=True, **fixed),
        checkpoint=part_ck, **quiet)
    again = torch.load(part_ck, weights_only=False)["ema"]["averaged"]
    assert all(torch.equal(again[k], avg[k]) for k in avg)


def test_ema_is_a_flag_kept_in_one_process():
    with pytest.raises(ValueError, match="ema: expected true or false"):
        _cfg(ema="yes")
    with pytest.raises(ValueError, match="ema: .*needs block_workers=1"):
        _cfg(ema=True, block_workers=2)


def _grad_norm(grads) -> float:
    return float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads)))


def test_clip_gradients_bounds_one_group_for_a_backbone_model():
    """CT and backprop models: one group, the rule of torch's clip_grad_norm_; a gradient under
    the bound is left bit for bit."""
    from diffpolicy.noprop.ct import NoPropCT
    from diffpolicy.noprop.train import clip_gradients
    torch.manual_seed(0)
    m = NoPropCT("cnn", n_classes=K, image_size=IMG, dropout=0.0)
    x, y = torch.randn(8, 1, IMG, IMG), torch.randint(0, K, (8,))
    (1e3 * m.loss(x, y)["total"]).backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    before = _grad_norm(grads)
    assert before > 2.0
    clipped, groups = clip_gradients(m, 2.0)
    assert (int(clipped), groups) == (1, 1)
    assert _grad_norm(grads) == pytest.approx(2.0, rel=1e-4)
    kept = [g.clone() for g in grads]
    clipped, groups = clip_gradients(m, 10 * before)
    assert int(clipped) == 0 and all(torch.equal(a, b) for a, b in zip(kept, grads))


def test_clip_gradients_clips_noprop_dt_block_by_block():
    """A block's gradient is scaled by its own norm only (locality): a block with a small gradient
    is untouched beside one with a large gradient, and the shared parameters are their own group."""
    from diffpolicy.noprop.train import clip_gradients
    m = _dt(T=3)
    stack = m.blocks
    for p in m.parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 1e-4)
    for p in stack.parameters():
        stack.per_block(p.grad)[1].fill_(1.0)             # block 2 alone has a large gradient
    shared = m.shared_parameters
    for p in shared:
        p.grad.fill_(1.0)

    def block_norms():
        return [_grad_norm([stack.per_block(p.grad)[b] for p in stack.parameters()]) for b in range(3)]

    small = block_norms()[0]
    assert small < 0.5 < block_norms()[1]
    clipped, groups = clip_gradients(m, 0.5)
    assert (int(clipped), groups) == (2, 4)                # block 2 and the shared group, of 3 + 1
    norms = block_norms()
    assert norms[0] == pytest.approx(small, rel=1e-6) and norms[2] == pytest.approx(small, rel=1e-6)
    assert norms[1] == pytest.approx(0.5, rel=1e-4)
    assert _grad_norm([p.grad for p in shared]) == pytest.approx(0.5, rel=1e-4)


def test_grad_clip_trains_logs_and_is_fixed_for_a_run(tmp_path):
    """A bound no gradient reaches trains bit for bit as no clipping; a tight one changes the
    weights and says how often it acted; a run cannot resume under another bound."""
    data = tiny_splits(n_train=32)
    quiet = dict(log=lambda *_: None)
    fixed = dict(max_steps_per_epoch=2, precision="fp32", layout="fused")
    runs = {}
    for name, clip in (("off", None), ("loose", 1e9), ("tight", 1e-3)):
        ck = tmp_path / f"{name}.pt"
        res = fit(_dt(), data, _cfg(epochs=1, grad_clip=clip, **fixed), checkpoint=ck, **quiet)
        runs[name] = (res, torch.load(ck, weights_only=False)["model"])
    assert "clipped" not in runs["off"][0]["history"][0]
    assert runs["loose"][0]["history"][0]["clipped"] == 0.0
    assert runs["tight"][0]["history"][0]["clipped"] == 1.0
    off, loose, tight = (runs[n][1] for n in ("off", "loose", "tight"))
    assert all(torch.equal(off[k], loose[k]) for k in off)
    assert not all(torch.equal(off[k], tight[k]) for k in off)
    keep = (tmp_path / "tight.pt").read_bytes()
    with pytest.raises(ValueError, match="other settings than this run's.*grad_clip 0.001 there, None here"):
        fit(_dt(), data, _cfg(epochs=2, **fixed), checkpoint=tmp_path / "tight.pt", **quiet)
    assert (tmp_path / "tight.pt").read_bytes() == keep


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1", True])
def test_grad_clip_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="grad_clip: expected a positive number"):
        _cfg(grad_clip=bad)


def test_grad_clip_with_blocks_split_over_processes_matches_one_process():
    """Clipping is per block and the shared gradient is all-reduced before it is clipped, so
    two workers train the model one process does, and report the same clipped fraction."""
    cfg = _cfg(epochs=1, max_steps_per_epoch=3, precision="fp32", layout="fused", grad_clip=0.05)
    _, _, (serial, res_s), (par, res_p) = _serial_and_two_workers(cfg)
    assert 0 < res_s["history"][0]["clipped"] <= 1
    # each rank counts the shared group, so its weight differs unless all or none are clipped
    assert res_p["history"][0]["clipped"] == pytest.approx(res_s["history"][0]["clipped"], abs=0.1)
    _close(par, serial, atol=1e-3)


def test_closest_classes_names_the_nearest_pair_and_rejects_one_class():
    from diffpolicy.noprop.embeddings import closest_classes
    w = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0], [3.0, 0.5]])
    assert closest_classes(w) == {"distance": 0.5, "classes": [1, 3]}
    with pytest.raises(ValueError, match=r"closest_classes: expected a \(K >= 2, d\) embedding"):
        closest_classes(torch.zeros(1, 4))


def test_each_epoch_logs_the_closest_learned_class_embeddings_and_not_fixed_ones():
    """Two learned embeddings drawn together is a failure the log must show while training."""
    data, logs = tiny_splits(), []
    cfg = _cfg(max_steps_per_epoch=2)
    model = _dt()
    near = fit(model, data, cfg, log=logs.append)["history"][0]["closest_classes"]
    w = model.embed.weight.detach()                      # epoch 1's weights (the selected epoch)
    assert not torch.equal(w, _dt().embed.weight.detach())                # trained, not the start
    pairs = {(i, j): float((w[i] - w[j]).norm()) for i in range(K) for j in range(i + 1, K)}
    (bi, bj), best = min(pairs.items(), key=lambda kv: kv[1])
    assert near["classes"] == [bi, bj] and near["distance"] == pytest.approx(best, rel=1e-5)
    line = next(m for m in logs if "epoch 1/1" in m)
    i, j = near["classes"]
    assert f"closest classes {i}-{j} {near['distance']:.3f} apart" in line
    torch.manual_seed(0)
    one_hot = NoPropDT(n_classes=K, T=3, embedding="one_hot", image_size=IMG)
    assert "closest_classes" not in fit(one_hot, data, cfg, log=lambda *_: None)["history"][0]
