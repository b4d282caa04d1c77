import pytest
import torch
from torch import nn

from diffpolicy.policy.ema import EMA, ema_decay


def test_decay_follows_warmup_formula():
    assert ema_decay(0) == 0.0 and ema_decay(1) == 0.0
    assert ema_decay(2) == pytest.approx(1 - 2 ** -0.75)
    assert ema_decay(11) == pytest.approx(1 - 11 ** -0.75)
    assert ema_decay(10 ** 9) == 0.9999                      # capped at max_value
    assert ema_decay(5, power=2 / 3) == pytest.approx(1 - 5 ** (-2 / 3))
    decays = [ema_decay(s) for s in range(2, 2000)]
    assert all(b >= a for a, b in zip(decays, decays[1:]))   # monotone warm-up


def test_update_blends_parameters_and_copies_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model[1].running_mean.fill_(5.0)
    ema.update(model)                        # step 0: decay 0 -> exact copy
    for a, b in zip(ema.averaged.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(ema.averaged[1].running_mean, model[1].running_mean)
    ema.update(model)                        # step 1: decay 0
    before = [p.clone() for p in ema.averaged.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    ema.update(model)                        # step 2: decay 1 - 2^-0.75
    d = 1 - 2 ** -0.75
    assert ema.decay == pytest.approx(d)
    for a, old, new in zip(ema.averaged.parameters(), before, model.parameters()):
        torch.testing.assert_close(a, d * old + (1 - d) * new)
        assert not a.requires_grad


def test_state_dict_round_trip():
    model = nn.Linear(2, 2)
    ema = EMA(model)
    for _ in range(5):
        ema.update(model)
    other = EMA(nn.Linear(2, 2))
    other.load_state_dict(ema.state_dict())
    assert other.optimization_step == 5 and other.decay == ema.decay
    assert torch.equal(other.averaged.weight, ema.averaged.weight)
