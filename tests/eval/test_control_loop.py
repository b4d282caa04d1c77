"""policy.reset() / policy.select_action(obs): a robot-style loop, one observation in and one
action out per step, executes exactly what the batched rollouts execute."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from diffpolicy.envs.pusht import PushTEnv
from diffpolicy.eval.evaluate import load_policy
from diffpolicy.eval.rollout import run_rollouts


def _recorded_steps(monkeypatch) -> list[np.ndarray]:
    """Every action any PushTEnv executes, in order."""
    actions, step = [], PushTEnv.step

    def recording(self, action):
        actions.append(np.array(action, dtype=np.float64))
        return step(self, action)
    monkeypatch.setattr(PushTEnv, "step", recording)
    return actions


@pytest.mark.parametrize("stride", [1, 2])
def test_a_control_loop_executes_the_rollouts_actions(keypoints_ckpt, monkeypatch, stride):
    policy, _ = load_policy(keypoints_ckpt)
    policy.config = replace(policy.config, action_stride=stride, n_action_steps=8 if stride == 1 else 5)
    actions = _recorded_steps(monkeypatch)
    (episode,) = run_rollouts(policy, "pusht_keypoints", [100003], max_steps=23, progress=False).episodes
    batched, actions[:] = list(actions), []

    env = PushTEnv("keypoints")
    obs, _ = env.reset(seed=100003)
    gen = torch.Generator().manual_seed(0)          # run_rollouts' default sampling_seed
    policy.reset()
    for _ in range(23):
        action = policy.select_action(torch.as_tensor(obs, dtype=torch.float32), generator=gen)
        assert action.shape == (2,)
        obs, _, terminated, _, _ = env.step(action.numpy())
        if terminated:
            break
    assert len(actions) == len(batched) == episode.steps
    np.testing.assert_array_equal(np.stack(actions), np.stack(batched))


def test_batched_input_reset_and_call_order(keypoints_ckpt):
    policy, _ = load_policy(keypoints_ckpt)
    with pytest.raises(RuntimeError, match="call reset\\(\\) at the start of each episode"):
        policy.select_action(torch.rand(20))
    policy.reset()
    obs = torch.rand(3, 20) * 512
    calls = []
    predict = policy.predict_action
    policy.predict_action = lambda batch, **kw: calls.append(batch["obs"].clone()) or predict(batch, **kw)
    out = [policy.select_action(obs + i) for i in range(9)]                 # Ta = 8: calls at steps 0 and 8
    assert all(a.shape == (3, 2) for a in out) and len(calls) == 2
    torch.testing.assert_close(calls[0], torch.stack([obs, obs], 1))        # first observation repeated
    torch.testing.assert_close(calls[1], torch.stack([obs + 7, obs + 8], 1))
    policy.reset()                                                           # a new episode: a new plan
    policy.select_action(obs)
    assert len(calls) == 3


def test_image_observations_one_step_at_a_time(tmp_path):
    from eval_helpers import make_checkpoint
    policy, _ = load_policy(make_checkpoint(tmp_path / "img.pt", task="pusht_image", obs_type="image"))
    policy.reset()
    step = {"image": torch.rand(3, 96, 96), "obs": torch.rand(2) * 512}
    assert policy.select_action(step).shape == (2,)
    policy.reset()
    assert policy.select_action({k: v[None].repeat(2, *[1] * v.dim()) for k, v in step.items()}).shape == (2, 2)
    with pytest.raises(ValueError, match="batch size changed from 2 to 1 within an episode; call reset"):
        policy.select_action(step)
