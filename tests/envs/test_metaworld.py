"""MetaWorldEnv (diffpolicy.envs.metaworld): registration, seeds, spaces, info, rendering.

Needs the ``metaworld`` extra: without it these tests skip, or fail under ``CI=true``."""
from __future__ import annotations

import importlib
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import diffpolicy.envs.metaworld as mw
from diffpolicy.envs.metaworld import ENV_ID, MAX_EPISODE_STEPS, MT10_TASKS, MetaWorldEnv


pytestmark = pytest.mark.usefixtures("metaworld_installed")


def _expert_success_step(env, seed: int, max_steps: int = 200) -> tuple[int, dict]:
    """Drive ``env`` (reach-v3) with Meta-World's scripted expert until success."""
    from metaworld.policies import SawyerReachV3Policy
    policy = SawyerReachV3Policy()
    obs, _ = env.reset(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(max_steps):
            obs, _, terminated, truncated, info = env.step(policy.get_action(obs.copy()))
            if info["is_success"]:
                return t + 1, {"terminated": terminated, "truncated": truncated, **info}
    raise AssertionError(f"the reach expert did not succeed in {max_steps} steps from seed {seed}")


def test_registered_and_made_by_gymnasium():
    assert ENV_ID in gym.registry
    spec = gym.spec(ENV_ID)
    assert spec.max_episode_steps == MAX_EPISODE_STEPS == 300
    assert spec.entry_point == "diffpolicy.envs.metaworld:MetaWorldEnv"
    importlib.reload(mw)                      # a second registration is skipped, not an error
    env = gym.make(ENV_ID, task_name="reach-v3")
    assert isinstance(env.unwrapped, mw.MetaWorldEnv) and env.unwrapped.task_name == "reach-v3"
    obs, info = env.reset(seed=0)
    assert obs.shape == (39,) and obs.dtype == np.float32
    env.close()


def test_gymnasium_env_checker():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(infinity|spec|symmetric).*")
        check_env(MetaWorldEnv("push-v3"), skip_render_check=True)


def test_time_limit_truncates():
    env = gym.make(ENV_ID, task_name="reach-v3")
    env.reset(seed=1)
    for t in range(MAX_EPISODE_STEPS):
        _, _, terminated, truncated, info = env.step(np.zeros(4, np.float32))  # stands still: no success
        assert not terminated and not info["is_success"]
        assert truncated == (t == MAX_EPISODE_STEPS - 1)
    env.close()


def test_same_seed_same_start_other_seed_other_start():
    env = MetaWorldEnv("pick-place-v3")
    a, _ = env.reset(seed=100000)
    b, _ = env.reset(seed=100001)
    for _ in range(5):
        env.step(env.action_space.sample())
    a_again, _ = env.reset(seed=100000)
    np.testing.assert_array_equal(a, a_again)
    fresh = MetaWorldEnv("pick-place-v3")
    np.testing.assert_array_equal(fresh.reset(seed=100000)[0], a)
    assert not np.allclose(a[4:7], b[4:7]) and not np.allclose(a[-3:], b[-3:])  # object and goal moved
    # Without a seed, reset continues the seeded stream: a new start each time, same sequence.
    c, d = env.reset()[0], env.reset()[0]
    fresh.reset(seed=100000)
    np.testing.assert_array_equal(fresh.reset()[0], c)
    assert not np.allclose(c[-3:], d[-3:]) and not np.allclose(c[-3:], a[-3:])
    env.close()
    fresh.close()


def test_starts_are_drawn_from_the_task_distribution_not_the_mt1_tasks():
    env = MetaWorldEnv("reach-v3")
    inner = env._env
    space = inner._random_reset_space
    goals = []
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        vec = inner._last_rand_vec
        assert np.all(vec >= space.low) and np.all(vec <= space.high)
        np.testing.assert_allclose(obs[-3:], vec[3:], atol=1e-6)   # reach: rand_vec = object xyz, goal xyz
        goals.append(obs[-3:])
    assert len(np.unique(np.round(goals, 6), axis=0)) == 20
    assert not inner._freeze_rand_vec and not inner._partially_observable
    env.close()


def test_actions_are_clipped_and_bad_actions_refused():
    env = MetaWorldEnv("reach-v3")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4))
    env.reset(seed=3)
    big = env.step(np.array([5.0, -5.0, 0.3, 2.0]))[0]
    env.reset(seed=3)
    clipped = env.step(np.array([1.0, -1.0, 0.3, 1.0], np.float32))[0]
    np.testing.assert_array_equal(big, clipped)
    assert big.shape == (39,) and big.dtype == np.float32
    env.reset(seed=3)
    for bad, what in (([np.nan, 0, 0, 0], "finite"), ([0, 0, 0], "shape"), ("left", "real numbers"),
                      ([0, 0, 0, 1j], "real numbers")):
        with pytest.raises(ValueError, match=what):
            env.step(bad)
    np.testing.assert_array_equal(env.step(np.array([1.0, -1.0, 0.3, 1.0]))[0], clipped)  # state unchanged
    env.close()


def test_info_is_success_is_a_bool_with_metaworld_keys():
    env = MetaWorldEnv("reach-v3")
    _, info = env.reset(seed=0)
    assert info["is_success"] is False and "success" in info and "near_object" in info
    _, _, _, _, info = env.step(np.zeros(4))
    assert type(info["is_success"]) is bool
    assert {"success", "near_object", "grasp_success", "grasp_reward", "in_place_reward",
            "obj_to_target", "unscaled_reward"} <= set(info)
    step, info = _expert_success_step(env, seed=0)
    assert info["is_success"] is True and info["success"] > 0 and info["terminated"] is True
    keep_going = MetaWorldEnv("reach-v3", terminate_on_success=False)
    step2, info2 = _expert_success_step(keep_going, seed=0)
    assert step2 == step and info2["terminated"] is False
    env.close()
    keep_going.close()


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"unknown task 'reach-v2'.*'reach-v3'"):
        MetaWorldEnv("reach-v2")
    with pytest.raises(ValueError, match="render_mode"):
        MetaWorldEnv("reach-v3", render_mode="human")
    with pytest.raises(ValueError, match="render_size"):
        MetaWorldEnv("reach-v3", render_size=0)
    with pytest.raises(ValueError, match=r"no camera 'nope'.*corner2"):
        MetaWorldEnv("reach-v3", camera_name="nope")
    assert set(MT10_TASKS) <= set(mw.task_names())


def test_render_frame_or_clear_error():
    env = MetaWorldEnv("reach-v3", render_mode="rgb_array", render_size=64)
    env.reset(seed=0)
    try:
        frame = env.render()
    except RuntimeError as e:      # no GL backend on this machine: the evaluation skips videos
        assert "MUJOCO_GL" in str(e) and "EGL" in str(e)
        pytest.skip(f"no MuJoCo rendering here: {e}")
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.std() > 0
    # Upright: the corner cameras are mounted upside down (their up axis points down in the
    # world), so their picture is turned by 180 degrees; topview's is passed on as it is.
    np.testing.assert_array_equal(frame, env._env.render()[::-1, ::-1])
    env.close()
    top = MetaWorldEnv("reach-v3", render_mode="rgb_array", render_size=32, camera_name="topview")
    top.reset(seed=0)
    np.testing.assert_array_equal(top.render(), top._env.render())
    top.close()
    with pytest.warns(UserWarning, match="render_mode=None"):
        assert MetaWorldEnv("reach-v3").render() is None


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_render_error_names_the_backend(monkeypatch):
    env = MetaWorldEnv("reach-v3", render_mode="rgb_array", render_size=32)
    env.reset(seed=0)
    monkeypatch.setenv("MUJOCO_GL", "no-such-backend")   # read when the first frame is made
    with pytest.raises(RuntimeError, match="MUJOCO_GL='no-such-backend'"):
        env.render()
    with pytest.raises(RuntimeError, match="MUJOCO_GL='no-such-backend'"):
        env.render()                  # the second call fails at once, with the same message
    env.close()
