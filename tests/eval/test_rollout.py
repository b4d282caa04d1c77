"""Batched rollouts with scripted policies: history bookkeeping, termination, step limits."""
from types import SimpleNamespace

import numpy as np
import torch

from diffpolicy.envs.pusht import PushTEnv
from diffpolicy.eval import rollout as ro


class ScriptedPolicy:
    """Moves the agent +5 px in x per step from its last observed position; records its inputs."""

    def __init__(self, to=2, ta=8):
        self.config = SimpleNamespace(n_obs_steps=to, n_action_steps=ta, cameras={})
        self.calls = []

    def eval(self):
        return self

    def predict_action(self, obs, **kw):
        x = obs["obs"]
        self.calls.append(x.clone())
        pos = x[:, -1, 18:20]
        steps = torch.arange(1, self.config.n_action_steps + 1, dtype=torch.float32)
        return pos[:, None, :] + torch.stack([5 * steps, 0 * steps], -1)[None]


def test_histories_batching_and_step_limit():
    policy = ScriptedPolicy()
    seeds = [100000, 100001, 100002]
    res = ro.run_rollouts(policy, "pusht_keypoints", seeds, max_steps=20, progress=False,
                          record_seeds=(100001,), keep_final_frames=True, video_size=64)
    assert [e.steps for e in res.episodes] == [20, 20, 20]
    assert res.call_batch == [3, 3, 3]                          # ceil(20 / 8) batched calls
    first, second = policy.calls[0], policy.calls[1]
    assert first.shape == (3, 2, 20)
    torch.testing.assert_close(first[:, 0], first[:, 1])        # reset observation repeated
    # replay seed 100001 by hand: the second call sees the observations after steps 7 and 8
    env = PushTEnv("keypoints")
    obs, _ = env.reset(seed=100001)
    seen = [obs]
    for a in policy.predict_action({"obs": torch.as_tensor(np.stack([obs, obs]))[None].float()})[0]:
        obs, *_ = env.step(a.numpy())
        seen.append(obs)
    torch.testing.assert_close(second[1], torch.as_tensor(np.stack(seen[7:9])).float())
    assert len(res.frames[100001]) == 21 and res.frames[100001][0].shape == (64, 64, 3)
    assert set(res.final_frames) == set(seeds)


def test_finished_episodes_leave_the_batch(monkeypatch):
    """An episode that terminates (success) at step 13 stops there; the batch shrinks."""

    class EarlySuccess(PushTEnv):
        def reset(self, *, seed=None, options=None):
            self.n, self.seed_ = 0, seed
            return super().reset(seed=seed, options=options)

        def step(self, action):
            obs, reward, term, trunc, info = super().step(action)
            self.n += 1
            if self.seed_ == 7 and self.n == 13:
                info = {**info, "coverage": 0.97, "is_success": True}
                return obs, 1.0, True, trunc, info
            return obs, reward, term, trunc, info

    monkeypatch.setattr(ro, "make_env",
                        lambda task, max_steps=None, render_size=None: EarlySuccess("keypoints", "rgb_array"))
    res = ro.run_rollouts(ScriptedPolicy(), "pusht_keypoints", [5, 7], max_steps=30, progress=False)
    by_seed = {e.seed: e for e in res.episodes}
    assert by_seed[7].steps == 13 and by_seed[7].success and by_seed[7].max_reward == 1.0
    assert by_seed[7].final_coverage == 0.97
    assert by_seed[5].steps == 30 and not by_seed[5].success
    assert res.call_batch == [2, 2, 1, 1]
    assert res.score == (1.0 + by_seed[5].max_reward) / 2


def test_image_observations_are_stacked_channels_first():
    from diffpolicy.eval.task_env import observations_to_policy
    from diffpolicy.policy.run_config import builtin_task

    env = PushTEnv("image")
    obs, _ = env.reset(seed=0)
    cameras = {"image": {"shape": [3, 96, 96], "crop": [84, 84]}}
    batch = observations_to_policy(builtin_task("pusht_image"), cameras, [[obs, obs], [obs, obs]])
    assert batch["image"].shape == (2, 2, 3, 96, 96) and batch["image"].dtype == torch.float32
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert batch["obs"].shape == (2, 2, 2)
    hwc = {**obs, "image": obs["image"].transpose(1, 2, 0)}          # (H, W, C) images are moved too
    assert torch.equal(observations_to_policy(builtin_task("pusht_image"), cameras, [[hwc, hwc]])["image"],
                       batch["image"][:1])
