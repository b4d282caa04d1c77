"""Teleoperation recording: episode dicts in the dataset layout, saved via ReplayBuffer."""
from __future__ import annotations

import numpy as np
import pytest

from diffpolicy.datasets.replay_buffer import ReplayBuffer
from diffpolicy.envs import teleop
from diffpolicy.envs.pusht import PushTEnv
from diffpolicy.envs.teleop import DATASET_KEYS, EpisodeRecorder, TeleopSession, collect_episode, save_episode


def test_collect_episode_reproduces_demo_zero_in_dataset_layout(demos, tmp_path):
    ep_slice = demos.episode(0)
    actions = demos.action[ep_slice]
    episode = collect_episode(PushTEnv(obs_type="state"), actions, seed=0)
    T = len(actions)
    assert set(episode) == set(DATASET_KEYS)
    expected_shapes = {"state": (T, 5), "keypoint": (T, 9, 2), "img": (T, 96, 96, 3),
                       "action": (T, 2), "n_contacts": (T, 1)}
    for key, shape in expected_shapes.items():
        assert episode[key].shape == shape and episode[key].dtype == np.float32, key
    np.testing.assert_array_equal(episode["action"], actions)
    np.testing.assert_allclose(episode["state"], demos.state[ep_slice], atol=1e-3)
    assert (episode["img"] == demos.images(ep_slice)).all(-1).mean() > 0.998
    assert 0 <= episode["img"].min() and episode["img"].max() <= 255
    assert (episode["n_contacts"][:, 0] == demos.n_contacts[ep_slice]).mean() > 0.95

    path = tmp_path / "mine.zarr"
    assert save_episode(path, episode) == 0
    assert save_episode(path, collect_episode(PushTEnv(obs_type="state"), actions[:20], seed=0)) == 1
    rb = ReplayBuffer.open(path, mode="r")
    assert rb.n_episodes == 2
    np.testing.assert_array_equal(rb.episode_lengths, [T, 20])
    back = rb.get_episode(0)
    for key in DATASET_KEYS:
        np.testing.assert_array_equal(back[key], episode[key])


def test_frame_t_is_observation_before_action_t():
    env = PushTEnv(obs_type="state")
    actions = np.array([[300.0, 300.0], [100.0, 400.0], [250.0, 250.0]])
    episode = collect_episode(env, actions, seed=4, images=False)
    assert "img" not in episode
    env.reset(seed=4)
    for t, a in enumerate(actions):
        np.testing.assert_array_equal(episode["state"][t], env.state().astype(np.float32))
        assert episode["n_contacts"][t, 0] == env.n_contacts
        env.step(a)


def test_recorder_rejects_bad_frames():
    rec = EpisodeRecorder()
    with pytest.raises(ValueError, match="no frames"):
        rec.to_episode()
    with pytest.raises(ValueError, match="action must be 2 finite numbers"):
        rec.add(np.zeros(5), np.zeros((96, 96, 3), np.uint8), [np.nan, 1.0], 0)


def test_session_waits_then_records_and_saves(demos, tmp_path):
    out = tmp_path / "session.zarr"
    session = TeleopSession(PushTEnv(obs_type="state"), out, first_seed=0)
    agent = session.env.sim.agent_pos
    assert session.tick(agent + [200.0, 0.0]) == "waiting"   # too far: nothing happens
    assert len(session.recorder) == 0
    np.testing.assert_array_equal(session.env.sim.agent_pos, agent)
    actions = demos.action[demos.episode(0)]
    assert np.linalg.norm(actions[0] - agent) < teleop.ENGAGE_RADIUS  # the demo starts by grabbing the agent
    for a in actions:
        assert session.tick(a) == "recording"
    index = session.finish()
    assert index == 0 and session.seed == 1
    saved = ReplayBuffer.open(out).get_episode(0)
    expected = collect_episode(PushTEnv(obs_type="state"), actions, seed=0)
    for key in DATASET_KEYS:
        np.testing.assert_array_equal(saved[key], expected[key])
    # An empty episode is not saved.
    assert session.finish() is None and ReplayBuffer.open(out).n_episodes == 1


def test_session_saves_on_success(tmp_path):
    out = tmp_path / "success.zarr"
    session = TeleopSession(PushTEnv(obs_type="state"), out, first_seed=3)
    angle = np.pi / 4
    c = np.array([0.0, 45.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    p = np.array([256.0, 256.0]) - c + rot @ c
    session.env.reset(options={"state": [60.0, 60.0, p[0], p[1], angle]})  # block already on the goal
    assert session.tick((60.0, 61.0)) == "saved"
    assert ReplayBuffer.open(out).episode_lengths.tolist() == [1]
    assert session.seed == 4 and len(session.recorder) == 0 and not session.engaged


def test_run_teleop_headless(tmp_path, monkeypatch):
    """The interactive loop with a scripted mouse and keyboard (SDL dummy video driver)."""
    import pygame

    path = [None] * 2 + [(222.0 + 3 * k, 97.0 + 2 * k) for k in range(6)]  # grabs the agent at (222, 97)
    state = {"tick": 0}

    def fake_get_pos():
        k = min(state["tick"], len(path) - 1)
        return path[k] if path[k] is not None else (500, 500)

    def fake_events():
        state["tick"] += 1
        if state["tick"] == len(path):
            return [pygame.event.Event(pygame.KEYDOWN, key=pygame.K_s)]
        if state["tick"] > len(path):
            return [pygame.event.Event(pygame.QUIT)]
        return []

    monkeypatch.setattr(pygame.mouse, "get_pos", fake_get_pos)
    monkeypatch.setattr(pygame.event, "get", fake_events)
    saved = teleop.run_teleop(tmp_path / "live.zarr", first_seed=0)
    assert saved == [0]
    episode = ReplayBuffer.open(tmp_path / "live.zarr").get_episode(0)
    assert len(episode["action"]) == 6  # path[2..7] recorded; the save key came with the next tick
    np.testing.assert_array_equal(episode["action"][0], [222.0, 97.0])
