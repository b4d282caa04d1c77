"""A policy for the self-play tests that needs no training: it plays human demos' recorded actions.

Human demo ``i`` starts at ``reset(seed=i)`` and its actions replay exactly (tests/envs/
test_envs_fidelity.py), so rolled out on seed ``i`` this "policy" does what the human did:
demos 20, 32, 51, 124, 131, 160 and 195 reach coverage > 0.95 (51 at its 73rd and last step),
the others do not.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from diffpolicy.datasets.replay_buffer import ReplayBuffer
from diffpolicy.envs.pusht import PushTEnv

SUCCESSFUL_DEMOS = (20, 32, 51, 124, 131, 160, 195)


class DemoReplayPolicy:
    """``predict_action`` for one env at a time (``n_envs=1``): on the seed of human demo ``i`` it
    returns that demo's next ``n_action_steps`` actions, then repeats its last one.  The episode is
    recognised from its reset observation (the first call sees it ``To`` times)."""

    def __init__(self, store, demo_ids, n_obs_steps: int = 2, n_action_steps: int = 8):
        rb = ReplayBuffer.open(store, mode="r")
        self.actions = {i: rb.get_episode(i)["action"] for i in demo_ids}      # (T, 2) float32
        env = PushTEnv("keypoints")
        self.resets = {i: torch.as_tensor(env.reset(seed=i)[0], dtype=torch.float32) for i in demo_ids}
        self.config = SimpleNamespace(n_obs_steps=n_obs_steps, n_action_steps=n_action_steps, action_stride=1,
                                      horizon=16, action_dim=2, cameras={}, sampler="ddim",
                                      num_inference_steps=10)
        self.current, self.next_step = None, 0
        self.plans: list[np.ndarray] = []          # every plan returned, (Ta, 2)

    def eval(self):
        return self

    def predict_action(self, obs: dict, **_) -> torch.Tensor:
        x = obs["obs"]                                         # (1, To, 20)
        if x.shape[0] != 1:
            raise ValueError(f"DemoReplayPolicy drives one env at a time (n_envs=1), got a batch of {x.shape[0]}")
        for i, first in self.resets.items():
            if all(torch.equal(row, first) for row in x[0]):   # a reset: this episode starts now
                self.current, self.next_step = i, 0
        if self.current is None:
            raise ValueError("DemoReplayPolicy: the first observation is not the reset of one of its demos")
        acts = self.actions[self.current]
        idx = np.minimum(np.arange(self.next_step, self.next_step + self.config.n_action_steps), len(acts) - 1)
        self.next_step += self.config.n_action_steps
        self.plans.append(acts[idx])
        return torch.as_tensor(acts[idx])[None]
