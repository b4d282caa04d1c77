"""eval_mode switches a module (children included) to eval and restores its previous mode."""
from __future__ import annotations

import pytest
import torch

from diffpolicy.eval_mode import eval_mode


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))


@pytest.mark.parametrize("start_training", [True, False])
def test_restores_the_mode_it_found(start_training):
    net = _net().train(start_training)
    with eval_mode(net) as same:
        assert same is net and not net.training and not net[1].training
        x = torch.ones(64, 4)
        assert torch.equal(net(x), net(x))          # dropout off inside
    assert net.training is start_training and net[1].training is start_training


def test_restores_after_an_exception():
    net = _net().train()
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(net):
            raise RuntimeError("boom")
    assert net.training and net[1].training
