"""Rollouts with temporal ensembling: call count and batching, the executed actions, and
equality with the receding horizon where predictions do not overlap."""
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffpolicy.envs.pusht import PushTEnv
from diffpolicy.eval import rollout as ro
from diffpolicy.eval.evaluate import load_policy


class SequencePolicy:
    """Call c returns, for every env, entry j = (100 + 10 c + j, 200 + c): known sequences."""

    def __init__(self, to=2, horizon=16):
        self.config = SimpleNamespace(n_obs_steps=to, n_action_steps=8, horizon=horizon, cameras={})
        self.calls = 0

    def eval(self):
        return self

    def predict_action_sequence(self, obs, **kw):
        n, h = obs["obs"].shape[0], self.config.horizon
        j = torch.arange(h, dtype=torch.float32)
        seq = torch.stack([100 + 10 * self.calls + j, 200 + self.calls + 0 * j], -1)
        self.calls += 1
        return seq[None].repeat(n, 1, 1)


def test_executed_actions_are_the_weighted_means_of_aligned_entries(monkeypatch):
    executed = []

    class Recording(PushTEnv):
        def step(self, action):
            executed.append(np.array(action, dtype=np.float64))
            return super().step(action)

    monkeypatch.setattr(ro, "make_env",
                        lambda task, max_steps=None, render_size=None: Recording("keypoints", "rgb_array"))
    to, m, r = 3, 0.5, 2
    policy = SequencePolicy(to=to)
    res = ro.run_rollouts(policy, "pusht_keypoints", [0], max_steps=7, progress=False, temporal_ensemble=m,
                          replan_every=r)
    assert policy.calls == 4 and res.call_batch == [1, 1, 1, 1]      # calls at steps 0, 2, 4, 6
    assert len(executed) == 7
    for t, action in enumerate(executed):
        made = [c for c in range(4) if 2 * c <= t]                  # calls made at step 2c, oldest first
        w = np.exp(-m * np.arange(len(made)))
        # call c's entry for step t is index To - 1 + t - 2c
        x = np.array([100 + 10 * c + (to - 1 + t - 2 * c) for c in made])
        y = np.array([200 + c for c in made])
        np.testing.assert_allclose(action, [(w * x).sum() / w.sum(), (w * y).sum() / w.sum()], rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from eval_helpers import make_checkpoint
    path = make_checkpoint(tmp_path_factory.mktemp("ens") / "latest.pt")
    policy, _ = load_policy(path)
    policy.config = replace(policy.config, fast_unet=False)          # no speed probe in this test
    policy.unet.set_fast(False)
    return policy


def test_tiny_policy_is_called_every_replan_every_steps(tiny_policy, monkeypatch):
    counts = {"sequence": 0, "predict_action": 0}
    seq_fn, act_fn = tiny_policy.predict_action_sequence, tiny_policy.predict_action

    def sequence(*a, **k):
        counts["sequence"] += 1
        return seq_fn(*a, **k)

    def action(*a, **k):
        counts["predict_action"] += 1
        return act_fn(*a, **k)

    monkeypatch.setattr(tiny_policy, "predict_action_sequence", sequence)
    monkeypatch.setattr(tiny_policy, "predict_action", action)
    res = ro.run_rollouts(tiny_policy, "pusht_keypoints", [100000, 100001], max_steps=10, progress=False,
                          temporal_ensemble=0.1, replan_every=3)
    assert counts == {"sequence": 4, "predict_action": 0}             # steps 0, 3, 6, 9
    assert res.call_batch == [2, 2, 2, 2]
    assert [e.seed for e in res.episodes] == [100000, 100001]
    assert all(e.steps == 10 and 0.0 <= e.max_reward <= 1.0 for e in res.episodes)


def test_without_overlap_ensembling_is_the_receding_horizon(tiny_policy):
    """replan_every = H - To + 1 = 15: no two predictions share a step, so every step executes
    its call's entry To - 1 + k, exactly what n_action_steps = 15 executes."""
    seeds, kw = [100000, 100001], dict(max_steps=20, progress=False, sampling_seed=5)
    ensembled = ro.run_rollouts(tiny_policy, "pusht_keypoints", seeds, temporal_ensemble=3.0, replan_every=15, **kw)
    base = tiny_policy.config
    tiny_policy.config = replace(base, n_action_steps=15)
    try:
        receding = ro.run_rollouts(tiny_policy, "pusht_keypoints", seeds, **kw)
    finally:
        tiny_policy.config = base
    assert ensembled.call_batch == receding.call_batch == [2, 2]
    assert ensembled.episodes == receding.episodes


def test_bad_options_are_refused(tiny_policy):
    with pytest.raises(ValueError, match=r"replan_every must be an integer in \[1, 15\]"):
        ro.run_rollouts(tiny_policy, "pusht_keypoints", [0], max_steps=4, progress=False,
                        temporal_ensemble=0.0, replan_every=16)
