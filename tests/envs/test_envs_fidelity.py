"""Replaying the 206 human demos: the env must reproduce the recorded data.

Frame ``t`` of the data holds what was observed before action ``t``. The
default run checks a sample of episodes (chosen to include resets where the
agent starts touching the block); the ``slow`` test replays all 206.
"""
from __future__ import annotations

import numpy as np
import pytest

from diffpolicy.envs.pusht import PushTEnv

SAMPLE = (0, 1, 43, 77, 109, 128, 150, 176, 181, 205)


def _replay(demos, i: int, images: bool = False) -> dict[str, np.ndarray]:
    """Step a keypoints env through demo ``i``'s actions from ``reset(seed=i)``."""
    env = PushTEnv(obs_type="keypoints")
    obs, info = env.reset(seed=i)
    out = {"state": [], "keypoints": [], "n_contacts": [], "img": [], "coverage": [info["coverage"]]}
    terminated_at = None
    for t, action in enumerate(demos.action[demos.episode(i)]):
        out["state"].append(env.state())
        out["keypoints"].append(obs[:18].reshape(9, 2))
        out["n_contacts"].append(info["n_contacts"])
        if images:
            out["img"].append(env.observation_image())
        obs, reward, terminated, truncated, info = env.step(action)
        out["coverage"].append(info["coverage"])
        if terminated and terminated_at is None:
            terminated_at = t
    result = {k: np.asarray(v) for k, v in out.items()}
    result["terminated_at"] = terminated_at
    return result


def _angle_diff(a, b):
    return np.abs((a - b + np.pi) % (2 * np.pi) - np.pi)


def _check_states(demos, i, rep):
    data = demos.state[demos.episode(i)].astype(np.float64)
    assert len(rep["state"]) == len(data)
    pos_err = np.abs(rep["state"][:, :4] - data[:, :4]).max()
    ang_err = _angle_diff(rep["state"][:, 4], data[:, 4]).max()
    assert pos_err < 1e-3, f"episode {i}: position error {pos_err} px"
    assert ang_err < 1e-4, f"episode {i}: angle error {ang_err} rad"
    return pos_err, ang_err


def test_sample_replays_reproduce_recorded_states(demos):
    for i in SAMPLE:
        _check_states(demos, i, _replay(demos, i))


def test_keypoint_observation_matches_dataset_keypoints(demos):
    """The ``keypoint`` array agrees with our keypoint observation to 1e-3 px
    whenever the block is not being pushed. While it is (data ``n_contacts`` > 0),
    the recorded keypoints sit up to ~2 px off the recorded ``state``'s pose (they
    do even against the data's own ``state``): they do not come from the same
    simulation as the states, so the bound there is on the size of that offset."""
    errs, contact = [], []
    for i in SAMPLE:
        rep = _replay(demos, i)
        ep = demos.episode(i)
        errs.append(np.abs(rep["keypoints"] - demos.keypoint[ep]).max((1, 2)))
        contact.append(demos.n_contacts[ep] > 0)
    err, contact = np.concatenate(errs), np.concatenate(contact)
    assert (err[~contact] < 1e-3).mean() >= 0.995, np.sort(err[~contact])[-10:]
    assert np.median(err) < 1e-4
    assert np.percentile(err, 95) < 0.05 and err.max() < 2.5


def test_n_contacts_mostly_matches(demos):
    """``n_contacts`` = ceil(contact points over the step's 10 substeps / 10). The data's
    column agrees on ~97 % of frames; the rest sit at the start and end of contacts."""
    agree, total = 0, 0
    for i in SAMPLE:
        rep = _replay(demos, i)
        data = demos.n_contacts[demos.episode(i)]
        agree += int((rep["n_contacts"] == data).sum())
        total += len(data)
    assert agree / total >= 0.95, agree / total


def test_replayed_observation_images_match_dataset(demos):
    for i in (0, 176):
        rep = _replay(demos, i, images=True)
        ours = rep["img"].astype(np.float32)
        theirs = demos.images(demos.episode(i))
        equal = (ours == theirs).all(-1).mean()
        assert equal >= 0.998, f"episode {i}: {equal:.5f} of pixels identical"
        assert np.abs(ours - theirs).mean() < 0.05


@pytest.mark.slow
def test_all_demos_replay_exactly(demos):
    worst_pos = worst_ang = 0.0
    successes, max_rewards = 0, []
    for i in range(len(demos.ends)):
        rep = _replay(demos, i)
        pos, ang = _check_states(demos, i, rep)
        worst_pos, worst_ang = max(worst_pos, pos), max(worst_ang, ang)
        if rep["terminated_at"] is not None:
            successes += 1
            assert rep["terminated_at"] == len(rep["state"]) - 1, f"episode {i} succeeds before its end"
        max_rewards.append(min(1.0, rep["coverage"].max() / 0.95))
    assert successes == 7  # the spec's count of demos that meet the threshold
    assert np.mean(max_rewards) == pytest.approx(0.947, abs=1e-3)
