"""Scripted Meta-World demos (diffpolicy.datasets.metaworld_demos, ``diffpolicy-data generate``):
a valid store, deterministic resume, refusals.

Needs the ``metaworld`` extra: without it these tests skip, or fail under ``CI=true``."""
from __future__ import annotations


import numpy as np
import pytest
import zarr

from diffpolicy.cli.data import main
from diffpolicy.datasets.metaworld_demos import (POST_SUCCESS_STEPS, SCHEMA, SETTINGS_ATTR,
                                                 DemoGenerationError, generate_demos, parse_task,
                                                 run_episode, scripted_policy)
from diffpolicy.datasets.replay_buffer import PENDING_ATTR, ReplayBuffer
from diffpolicy.envs.metaworld import MAX_EPISODE_STEPS, MT10_TASKS, MetaWorldEnv


pytestmark = pytest.mark.usefixtures("metaworld_installed")


def _episode_seeds(rb: ReplayBuffer) -> list[int]:
    return rb.read("episode_seed")[rb.episode_ends - 1].tolist()


def test_two_reach_episodes_make_a_valid_store(tmp_path):
    out = tmp_path / "reach.zarr"
    report = generate_demos("reach-v3", 2, out, progress=False)
    assert report.n_episodes == report.added == 2 and report.failed_seeds == []
    rb = ReplayBuffer.open(out, schema=SCHEMA, verify=True)
    assert rb.n_episodes == 2 and rb.keys == ["action", "episode_seed", "state"]
    assert rb.shapes["state"] == (rb.n_steps, 39) and rb.dtypes["state"] == np.float32
    assert rb.shapes["action"] == (rb.n_steps, 4) and rb.dtypes["action"] == np.float32
    assert _episode_seeds(rb) == [0, 1]
    np.testing.assert_array_equal(rb.episode_lengths, np.array(report.success_steps) + POST_SUCCESS_STEPS)
    settings = zarr.open_group(str(out), mode="r").attrs[SETTINGS_ATTR]
    assert settings["task"] == "reach-v3" and settings["seed_start"] == 0
    assert settings["max_steps"] == MAX_EPISODE_STEPS and settings["post_success_steps"] == POST_SUCCESS_STEPS
    assert settings["metaworld"].startswith("3.") and settings["mujoco"]
    # The stored actions, replayed from the stored seed, give back the stored states and a success.
    env = MetaWorldEnv("reach-v3", terminate_on_success=False)
    ep = rb.get_episode(1)
    assert np.abs(ep["action"]).max() <= 1
    obs, _ = env.reset(seed=int(ep["episode_seed"][0]))
    for state, action in zip(ep["state"], ep["action"]):
        np.testing.assert_array_equal(obs, state)
        obs, _, _, _, info = env.step(action)
    assert info["is_success"]
    env.close()


def test_resume_continues_the_seeds_and_matches_one_run(tmp_path):
    whole, parts = tmp_path / "whole.zarr", tmp_path / "parts.zarr"
    generate_demos("reach-v3", 3, whole, seed_start=7, progress=False)
    generate_demos("reach-v3", 1, parts, seed_start=7, progress=False)
    report = generate_demos("reach-v3", 3, parts, seed_start=7, progress=False)
    assert report.added == 2 and report.n_episodes == 3 and (report.first_seed, report.last_seed) == (7, 9)
    a, b = ReplayBuffer.open(whole).load_all(), ReplayBuffer.open(parts).load_all()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert generate_demos("reach-v3", 2, parts, seed_start=7, progress=False).added == 0  # already enough


def test_a_run_killed_mid_append_resumes_where_it_stopped(tmp_path, monkeypatch):
    out = tmp_path / "reach.zarr"
    calls = {"n": 0}
    real_write_end = ReplayBuffer._write_end

    def killed_on_second_episode(self, i, end):
        calls["n"] += 1
        if calls["n"] == 2:                       # the data arrays are written, the end is not
            raise KeyboardInterrupt
        return real_write_end(self, i, end)

    monkeypatch.setattr(ReplayBuffer, "_write_end", killed_on_second_episode)
    monkeypatch.setattr(ReplayBuffer, "_rollback", lambda self, n, k: None)  # kill -9: no clean-up
    with pytest.raises(KeyboardInterrupt):
        generate_demos("reach-v3", 3, out, progress=False)
    monkeypatch.undo()
    assert PENDING_ATTR in zarr.open_group(str(out), mode="r").attrs
    with pytest.warns(UserWarning, match="an append was interrupted"):
        assert ReplayBuffer.open(out).n_episodes == 1
    generate_demos("reach-v3", 3, out, progress=False)
    rb = ReplayBuffer.open(out, schema=SCHEMA, verify=True)
    assert _episode_seeds(rb) == [0, 1, 2]
    whole = tmp_path / "whole.zarr"
    generate_demos("reach-v3", 3, whole, progress=False)
    for key, values in ReplayBuffer.open(whole).load_all().items():
        np.testing.assert_array_equal(rb.read(key), values)


def test_failed_seeds_are_skipped_and_reported(tmp_path):
    env = MetaWorldEnv("peg-insert-side-v3", terminate_on_success=False)
    assert not run_episode(env, scripted_policy("peg-insert-side-v3"), 4, MAX_EPISODE_STEPS).success
    env.close()
    out = tmp_path / "peg.zarr"
    report = generate_demos("peg-insert-side-v3", 1, out, seed_start=4, progress=False)
    assert report.failed_seeds == [4] and _episode_seeds(ReplayBuffer.open(out)) == [5]
    assert "skipped 1 failed seeds [4]" in report.summary()


def test_a_task_that_never_succeeds_stops_with_an_error(tmp_path):
    out = tmp_path / "reach.zarr"
    with pytest.raises(DemoGenerationError, match=r"3 seeds in a row \(0\.\.2\) failed.*max_steps=5"):
        generate_demos("reach-v3", 1, out, max_steps=5, progress=False, max_consecutive_failures=3)
    assert ReplayBuffer.open(out).n_episodes == 0


def test_a_store_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "reach.zarr"
    generate_demos("reach-v3", 1, out, progress=False)
    with pytest.raises(DemoGenerationError, match=r"task differs.*task='reach-v3'.*task='push-v3'"):
        generate_demos("push-v3", 2, out, progress=False)
    with pytest.raises(DemoGenerationError, match=r"max_steps differs.*max_steps=300.*max_steps=200"):
        generate_demos("reach-v3", 2, out, max_steps=200, progress=False)
    other = tmp_path / "other.zarr"
    ReplayBuffer.create(other)
    with pytest.raises(DemoGenerationError, match="not a Meta-World demo store"):
        generate_demos("reach-v3", 1, other, progress=False)
    assert ReplayBuffer.open(out).n_episodes == 1


def test_unknown_task_and_bad_numbers(tmp_path):
    with pytest.raises(DemoGenerationError, match=r"unknown Meta-World task 'reach-v2'.*MT10: reach-v3, push-v3"):
        generate_demos("reach-v2", 1, tmp_path / "x.zarr", progress=False)
    with pytest.raises(DemoGenerationError, match="must look like 'metaworld/<task>'"):
        parse_task("reach-v3")
    assert parse_task("metaworld/window-close-v3") == "window-close-v3"
    assert all(parse_task(f"metaworld/{t}") == t for t in MT10_TASKS)
    for kwargs, what in (({"n_episodes": 0}, "--episodes"), ({"max_steps": 501}, "--max-steps"),
                         ({"seed_start": -1}, "--seed-start"), ({"post_success_steps": 1.5}, "--post-success")):
        with pytest.raises(DemoGenerationError, match=what):
            generate_demos(**{"task": "reach-v3", "n_episodes": 1, "out": tmp_path / "x.zarr", **kwargs})
    assert not (tmp_path / "x.zarr").exists()


def test_cli_generate_then_refuse(tmp_path, capsys):
    out = tmp_path / "demo.zarr"
    assert main(["generate", "metaworld/reach-v3", "--episodes", "1", "--out", str(out),
                 "--seed-start", "3", "--max-steps", "100"]) == 0
    printed = capsys.readouterr().out
    assert "metaworld/reach-v3: 1 episodes" in printed and "seeds 3..3" in printed
    assert "data/state: (" in printed and ", 39) float32" in printed
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "metaworld/nope-v3", "--episodes", "1", "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown Meta-World task 'nope-v3'") and "reach-v3" in err
    with pytest.raises(SystemExit):
        main(["generate", "metaworld/reach-v3", "--episodes", "2", "--out", str(out)])
    assert "seed_start=3" in capsys.readouterr().err
