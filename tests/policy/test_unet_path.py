"""fast_unet: auto: the UNet path is measured per use, applied, and fixed values skip it."""
from __future__ import annotations

import pytest
import torch

from diffpolicy import speed
from diffpolicy.datasets import LinearNormalizer
from diffpolicy.policy import execution
from diffpolicy.policy.diffusion_policy import DiffusionPolicy, PolicyConfig


def _policy(fast_unet) -> DiffusionPolicy:
    torch.manual_seed(0)
    norm = LinearNormalizer().fit({"obs": torch.rand(64, 20) * 512, "action": torch.rand(64, 2) * 512})
    return DiffusionPolicy(PolicyConfig(down_dims=(16, 32, 64), step_embed_dim=16,
                                        fast_unet=fast_unet), norm)


def _fake_choose(winner: str, seen: list):
    def choose(probe, candidates, **kw):
        seen.append(probe)
        for fn in candidates.values():       # the candidates must run
            fn()
        return winner
    return choose


@pytest.mark.parametrize("winner", ["fast", "plain"])
def test_auto_training_path_follows_the_measurement_and_sets_the_weight_layout(monkeypatch, winner):
    seen = []
    monkeypatch.setattr(speed, "choose", _fake_choose(winner, seen))
    p = _policy("auto")
    assert p.choose_train_path(32, log=None) is (winner == "fast")
    assert "train step batch 32" in seen[0]
    conv = p.unet.down[0][0].block1.conv
    assert p.unet.fast is (winner == "fast")
    assert conv.weight.is_contiguous() is (winner == "plain")     # plain: nn.Conv1d's own layout
    batch = {"obs": torch.rand(4, 2, 20) * 512, "action": torch.rand(4, 16, 2) * 512}
    p.compute_loss(batch).backward()
    assert p.unet.fast is (winner == "fast")


def test_auto_inference_measures_once_per_batch_size(monkeypatch):
    seen = []
    monkeypatch.setattr(speed, "choose", _fake_choose("plain", seen))
    p = _policy("auto").eval()
    for b in (1, 1, 50, 40, 50, 70, 72):
        out = p.predict_action({"obs": torch.rand(b, 2, 20) * 512})
        assert out.shape == (b, 8, 2)
    assert [s.split("inference batch ")[1].split()[0] for s in seen] == ["1", "50", "40", "80"]
    assert p.unet.fast is False
    assert [execution.inference_bucket(b) for b in (1, 2, 50, 64, 65, 500)] == [1, 2, 50, 64, 80, 512]


def test_fixed_path_measures_nothing(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("probed although fast_unet is fixed")
    monkeypatch.setattr(speed, "choose", fail)
    for value in (True, False):
        p = _policy(value)
        assert p.choose_train_path(32) is value
        p.eval().predict_action({"obs": torch.rand(3, 2, 20) * 512})
        assert p.unet.fast is value


def test_both_paths_sample_the_same_actions(monkeypatch):
    """Whatever the probe picks, a sample differs only by float rounding."""
    outs = []
    for winner in ("fast", "plain"):
        monkeypatch.setattr(speed, "choose", _fake_choose(winner, []))
        p = _policy("auto").eval()
        outs.append(p.predict_action({"obs": torch.rand(3, 2, 20, generator=torch.Generator().manual_seed(1)) * 512},
                                     generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-3, rtol=1e-4)


def test_bad_fast_unet_value_is_refused():
    with pytest.raises(ValueError, match="policy.fast_unet must be true, false or auto, got 'yes'"):
        PolicyConfig(fast_unet="yes")
