"""Self-play demos (diffpolicy.eval.self_play, ``diffpolicy-data self-play``) and the step records
of ``run_rollouts`` they are made from."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from diffpolicy.cli.data import main
from diffpolicy.datasets.demos import load_demos
from diffpolicy.datasets.pusht import load_pusht
from diffpolicy.datasets.replay_buffer import ReplayBuffer
from diffpolicy.eval.self_play import (PROGRESS_ATTR, SETTINGS_ATTR, SelfPlayError, check_pusht_task,
                                           check_seeds, record_policy_successes, record_successes)
from diffpolicy.envs.pusht import PushTEnv
from diffpolicy.eval.evaluate import load_policy
from diffpolicy.eval.rollout import run_rollouts
from diffpolicy.policy.diffusion_policy import with_execution
from diffpolicy.policy.run_config import TaskConfig, builtin_task, demo_spec
from self_play_helpers import DemoReplayPolicy
from zarr_stores import write_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from eval_helpers import make_checkpoint  # noqa: E402  (tests/eval: a tiny untrained checkpoint)

FAST = dict(max_steps=8, batch=2, progress=False)        # untrained policy: short episodes, no successes


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")


def _replay(seed: int, actions: np.ndarray):
    """Step a keypoints env through ``actions`` from ``reset(seed)``: the observations and states
    before each action, and whether the last step terminated (success)."""
    env = PushTEnv("keypoints")
    obs, _ = env.reset(seed=seed)
    seen, states, terminated = [], [], False
    for a in actions:
        assert not terminated, "the episode succeeded before its last stored action"
        seen.append(obs)
        states.append(env.state())
        obs, _, terminated, _, _ = env.step(a)
    return np.asarray(seen), np.asarray(states), terminated


# ------------------------------------------------------------------ run_rollouts(record_steps=True)
def test_recorded_steps_are_what_the_env_received_after_the_stride(ckpt):
    policy, _ = load_policy(ckpt)
    policy.config = with_execution(policy.config, action_stride=2)       # 7 of the 16 planned actions
    plans = []
    predict = policy.predict_action

    def recording_predict(*args, **kwargs):
        out = predict(*args, **kwargs)
        plans.append(out[0].cpu().numpy())
        return out

    policy.predict_action = recording_predict
    res = run_rollouts(policy, "pusht_keypoints", [400001], max_steps=17, progress=False, record_steps=True)
    steps = res.steps[400001]
    assert len(steps) == res.episodes[0].steps == 17 and steps.action.shape == (17, 2)
    np.testing.assert_array_equal(steps.action, np.concatenate(plans)[:17])
    seen, _, _ = _replay(400001, steps.action)
    np.testing.assert_array_equal(np.asarray(steps.obs), seen)
    reset_info = PushTEnv("keypoints").reset(seed=400001)[1]
    np.testing.assert_array_equal(steps.info[0]["block_pose"], reset_info["block_pose"])


def test_recording_is_off_by_default_and_changes_nothing(ckpt):
    policy, _ = load_policy(ckpt)
    plain = run_rollouts(policy, "pusht_keypoints", [400002, 400003], max_steps=10, progress=False)
    recorded = run_rollouts(policy, "pusht_keypoints", [400002, 400003], max_steps=10, progress=False,
                            record_steps=True, temporal_ensemble=0.01)
    again = run_rollouts(policy, "pusht_keypoints", [400002, 400003], max_steps=10, progress=False,
                         record_steps=True)
    assert plain.steps == {}
    assert [e.max_reward for e in plain.episodes] == [e.max_reward for e in again.episodes]
    for seed in (400002, 400003):
        assert len(recorded.steps[seed]) == 10      # ensembling: one executed action per step, all recorded
        seen, _, _ = _replay(seed, recorded.steps[seed].action)
        np.testing.assert_array_equal(np.asarray(recorded.steps[seed].obs), seen)


# ------------------------------------------------------------------ successes -> store
def _record_demo_replays(store: Path, out: Path, seeds: range, **kw):
    policy = DemoReplayPolicy(store, list(seeds))
    kw.setdefault("demo_store", store)
    report = record_policy_successes(policy, builtin_task("pusht_keypoints"), out, seeds, checkpoint="human-replay",
                                     checkpoint_sha="0" * 64, n_envs=1, batch=2, max_steps=150, progress=False,
                                     **kw)
    return report, policy


def test_a_kept_episode_replays_from_its_seed_and_succeeds(pusht_zarr, tmp_path):
    """Seeds 50..52 replay human demos 50, 51, 52; only 51 reaches coverage > 0.95, and only it is stored."""
    out = tmp_path / "selfplay.zarr"
    report, policy = _record_demo_replays(pusht_zarr, out, range(50, 53))
    assert (report.tried, report.kept, report.kept_lengths) == (3, 1, [73])
    rb = ReplayBuffer.open(out, mode="r", verify=True)
    ep = rb.get_episode(0)
    assert sorted(ep) == ["action", "episode_seed", "keypoint", "n_contacts", "state"]
    assert (ep["episode_seed"] == 51).all()
    np.testing.assert_array_equal(ep["action"], ReplayBuffer.open(pusht_zarr).get_episode(51)["action"])
    seen, states, succeeded = _replay(51, ep["action"])
    assert succeeded
    np.testing.assert_array_equal(ep["state"], states.astype(np.float32))
    # the keypoints task's observation, read the training way, is what the policy was shown
    data = load_demos(out, demo_spec(builtin_task("pusht_keypoints")))
    np.testing.assert_array_equal(data.frames["obs"].numpy(), seen.astype(np.float32))
    np.testing.assert_array_equal(data.frames["action"].numpy(), ep["action"])
    assert load_pusht(out, "state").frames["obs"].shape == (73, 5)


def test_resume_after_a_kill_between_appends_and_progress(pusht_zarr, tmp_path):
    out = tmp_path / "selfplay.zarr"
    _record_demo_replays(pusht_zarr, out, range(50, 53))
    zarr.open_group(str(out), mode="r+").attrs[PROGRESS_ATTR] = {"next_seed": 50, "tried": 0, "kept": 0,
                                                                 "n_demo_episodes": 0}
    report, policy = _record_demo_replays(pusht_zarr, out, range(50, 53))
    assert (report.tried_now, report.kept_now, report.kept, report.tried) == (1, 0, 1, 3)   # only seed 52 again
    assert ReplayBuffer.open(out).n_episodes == 1


def test_include_demos_puts_the_human_demos_first(pusht_zarr, tmp_path):
    small = tmp_path / "demos.zarr"
    episodes = write_store(small, lengths=(7, 12, 5), with_img=True)
    out = tmp_path / "both.zarr"
    policy = DemoReplayPolicy(pusht_zarr, [51])                  # the small store's episodes are random
    report = record_policy_successes(policy, builtin_task("pusht_keypoints"), out, range(51, 52),
                                     checkpoint="human-replay", checkpoint_sha="0" * 64, include_demos=True,
                                     demo_store=small, n_envs=1, max_steps=150, progress=False)
    assert (report.n_demo_episodes, report.kept, report.demo_mean_length) == (3, 1, 8.0)
    rb = ReplayBuffer.open(out, mode="r")
    assert list(rb.episode_lengths) == [7, 12, 5, 73] and "img" not in rb.keys
    for i, src in enumerate(episodes):
        got = rb.get_episode(i)
        for key in ("state", "keypoint", "n_contacts", "action"):
            np.testing.assert_array_equal(got[key], src[key])
        assert (got["episode_seed"] == i).all()
    assert (rb.get_episode(3)["episode_seed"] == 51).all()
    assert load_pusht(out, "keypoints").n_episodes == 4
    assert ReplayBuffer.open(small).n_episodes == 3                   # the source is only read


def test_include_demos_copies_the_published_store(pusht_zarr, ckpt, tmp_path):
    out = tmp_path / "both.zarr"
    report = record_successes(ckpt, out, range(400000, 400002), include_demos=True, demo_store=pusht_zarr,
                              **FAST)
    src, rb = ReplayBuffer.open(pusht_zarr), ReplayBuffer.open(out)
    assert report.n_demo_episodes == src.n_episodes == rb.n_episodes and report.kept == 0
    np.testing.assert_array_equal(rb.episode_ends, src.episode_ends)
    for key in ("state", "keypoint", "action"):
        np.testing.assert_array_equal(rb.read(key), src.read(key))
    assert report.demo_mean_length == pytest.approx(float(src.episode_lengths.mean()))


# ------------------------------------------------------------------ settings, resuming, refusals
def test_settings_are_recorded_and_a_rerun_resumes(ckpt, tmp_path):
    out = tmp_path / "sp.zarr"
    first = record_successes(ckpt, out, range(400000, 400003), **FAST)
    assert (first.tried, first.tried_now, first.kept) == (3, 3, 0)    # an untrained policy never succeeds
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    settings = attrs[SETTINGS_ATTR]
    assert settings["checkpoint"] == str(ckpt.resolve()) and len(settings["checkpoint_sha256"]) == 64
    assert (settings["seed_start"], settings["max_steps"], settings["action_stride"],
            settings["include_demos"]) == (400000, 8, 1, False)
    assert attrs[PROGRESS_ATTR]["next_seed"] == 400003
    again = record_successes(ckpt, out, range(400000, 400003), **FAST)
    assert (again.tried, again.tried_now) == (3, 0)
    moved = tmp_path / "moved.pt"                          # the same bytes elsewhere: the same policy
    shutil.copy(ckpt, moved)
    longer = record_successes(moved, out, range(400000, 400005), **FAST)
    assert (longer.tried, longer.tried_now, longer.success_rate) == (5, 2, 0.0)


def test_other_settings_are_refused(ckpt, tmp_path):
    out = tmp_path / "sp.zarr"
    record_successes(ckpt, out, range(400000, 400002), **FAST)
    before = dict(zarr.open_group(str(out), mode="r").attrs)
    with pytest.raises(SelfPlayError, match=r"other settings \(max_steps differs\)"):
        record_successes(ckpt, out, range(400000, 400002), **{**FAST, "max_steps": 9})
    with pytest.raises(SelfPlayError, match="n_action_steps, action_stride differ"):
        record_successes(ckpt, out, range(400000, 400002), action_stride=2, **FAST)
    with pytest.raises(SelfPlayError, match="seed_start differs"):
        record_successes(ckpt, out, range(400001, 400003), **FAST)
    other = make_checkpoint(tmp_path / "other" / "latest.pt", task="pusht_keypoints_b")
    with pytest.raises(SelfPlayError, match="checkpoint_sha256"):
        record_successes(other, out, range(400000, 400002), **FAST)
    assert dict(zarr.open_group(str(out), mode="r").attrs) == before


def test_bad_input_is_refused_clearly(ckpt, tmp_path, pusht_zarr):
    with pytest.raises(SelfPlayError, match="checkpoint not found"):
        record_successes(tmp_path / "missing.pt", tmp_path / "o.zarr", range(400000, 400001))
    with pytest.raises(SelfPlayError, match=r"overlap the test seeds 100000\.\.100499"):
        check_seeds(range(99990, 100001))
    with pytest.raises(SelfPlayError, match=r"overlap the selection seeds 200000\.\.200999"):
        check_seeds(range(200999, 201500))
    with pytest.raises(SelfPlayError, match="non-empty range"):
        check_seeds(range(5, 5))
    check_seeds(range(100500, 199999))                    # between the reserved ranges
    with pytest.raises(SelfPlayError, match="not Push-T"):
        check_pusht_task(TaskConfig(name="cartpole", env_id="CartPole-v1", obs_dim=4, action_dim=2))
    with pytest.raises(SelfPlayError, match="observes cameras"):
        check_pusht_task(builtin_task("pusht_image"))
    image = make_checkpoint(tmp_path / "image" / "latest.pt", task="pusht_image", obs_type="image")
    with pytest.raises(SelfPlayError, match="observes cameras"):
        record_successes(image, tmp_path / "o.zarr", range(400000, 400001), **FAST)
    with pytest.raises(SelfPlayError, match="is the human demo store"):
        record_successes(ckpt, pusht_zarr, range(400000, 400001), **FAST)
    foreign = tmp_path / "foreign.zarr"
    write_store(foreign, with_img=False)
    with pytest.raises(SelfPlayError, match="not a self-play store"):
        record_successes(ckpt, foreign, range(400000, 400001), **FAST)
    assert ReplayBuffer.open(foreign).n_episodes == 3
    assert not (tmp_path / "o.zarr").exists()


# ------------------------------------------------------------------ diffpolicy-data self-play
def test_cli_prints_the_summary(ckpt, tmp_path, capsys):
    out = tmp_path / "sp.zarr"
    assert main(["self-play", str(ckpt), "--out", str(out), "--seeds", "400000:400003", "--max-steps", "8",
                 "--batch", "2", "--n-envs", "2", "--action-stride", "2", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "0 successful episodes of 3 tried (seeds 400000..400002; success rate 0.0 %)" in text
    assert "action stride 2" in text and "mean episode length: kept n/a steps, human demos" in text


@pytest.mark.parametrize("seeds, expect", [("100400:100600", "overlap the test seeds"),
                                           ("400000-400010", "--seeds must be START:END"),
                                           ("400010:400000", "END must be greater than START")])
def test_cli_errors_are_one_line_with_status_2(ckpt, tmp_path, capsys, seeds, expect):
    with pytest.raises(SystemExit) as exc:
        main(["self-play", str(ckpt), "--out", str(tmp_path / "sp.zarr"), "--seeds", seeds])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and expect in err
    assert not (tmp_path / "sp.zarr").exists()


def test_cli_refuses_a_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["self-play", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "sp.zarr"), "--seeds", "400000:400002"])
    assert exc.value.code == 2 and "checkpoint not found" in capsys.readouterr().err
