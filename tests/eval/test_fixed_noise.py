"""fixed_noise: one initial noise per episode, reused by every policy call of that episode."""
from types import SimpleNamespace

import pytest
import torch

from diffpolicy.diffusion.sampling import DiffusionSampler
from diffpolicy.diffusion.schedule import NoiseSchedule
from diffpolicy.eval import rollout as ro
from diffpolicy.eval.evaluate import evaluate


class NoiseRecordingPolicy:
    """Returns constant actions and records the initial noise of every call."""

    def __init__(self):
        self.config = SimpleNamespace(n_obs_steps=2, n_action_steps=8, horizon=16, action_dim=2, cameras={})
        self.noise = []

    def eval(self):
        return self

    def predict_action(self, obs, initial_noise=None, **kw):
        self.noise.append(initial_noise.clone())
        return torch.full((obs["obs"].shape[0], 8, 2), 256.0)


def test_each_episode_keeps_its_own_noise_across_calls():
    policy = NoiseRecordingPolicy()
    ro.run_rollouts(policy, "pusht_keypoints", [0, 1, 2], max_steps=24, progress=False, fixed_noise=True)
    assert len(policy.noise) == 3 and all(n.shape == (3, 16, 2) for n in policy.noise)
    assert torch.equal(policy.noise[0], policy.noise[2])           # same episode, same noise
    assert not torch.equal(policy.noise[0][0], policy.noise[0][1])  # episodes differ
    again = NoiseRecordingPolicy()
    ro.run_rollouts(again, "pusht_keypoints", [0, 1, 2], max_steps=8, progress=False, fixed_noise=True,
                    sampling_seed=1)
    assert not torch.equal(again.noise[0], policy.noise[0])        # the sampling seed draws it


def test_ddim_from_the_same_initial_noise_is_deterministic():
    sampler = DiffusionSampler(NoiseSchedule("cosine", 100), "ddim", 10)
    model = lambda x, t, c: 0.1 * x + c[:, None, :1]            # noqa: E731
    cond, x0 = torch.randn(4, 3), torch.randn(4, 16, 2)
    a = sampler(model, (4, 16, 2), cond, generator=torch.Generator().manual_seed(0), initial_noise=x0)
    b = sampler(model, (4, 16, 2), cond, generator=torch.Generator().manual_seed(5), initial_noise=x0)
    c = sampler(model, (4, 16, 2), cond, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match=r"initial_noise has shape \(4, 8, 2\), expected \(4, 16, 2\)"):
        sampler(model, (4, 16, 2), cond, initial_noise=torch.zeros(4, 8, 2))


def test_evaluate_refuses_a_non_boolean_fixed_noise(tmp_path):
    from diffpolicy.policy.run_config import ConfigError
    cfg = {"checkpoint": str(tmp_path / "x.pt"), "n_episodes": 1, "video_format": "mp4", "fixed_noise": "yes"}
    with pytest.raises(ConfigError, match="fixed_noise must be true or false, got 'yes'"):
        evaluate(cfg)
