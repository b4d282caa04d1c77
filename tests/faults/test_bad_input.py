"""Bad input: corrupted copies of the demo store, hostile env actions, hostile config values.
What each gets: docs/faults.md."""
from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import zarr

from diffpolicy.datasets import DatasetError, load_pusht
from diffpolicy.envs.pusht import PushTEnv
from diffpolicy.eval.options import EVAL_KEYS, check_eval_config
from diffpolicy.policy.run_config import ConfigError, check_train_config

from fault_helpers import assert_one_line_error, python, rng
from policy_helpers import compose_config

pytestmark = pytest.mark.slow


def _truncate(f):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _set_zarr(key, index, value):
    def corrupt(store):
        arr = zarr.open_array(str(store / key), mode="r+")
        arr[index] = value
    return corrupt


def _edit_json(key, **changes):
    def corrupt(store):
        f = store / key / ".zarray"
        f.write_text(json.dumps({**json.loads(f.read_text()), **changes}))
    return corrupt


CORRUPTIONS = {   # name: (change to a copy of the store, text of the one-line error)
    "truncated chunk": (lambda s: _truncate(s / "data/keypoint/3.0.0"), "cannot decode data/keypoint chunk '3.0.0'"),
    "zero-length chunk": (lambda s: (s / "data/action/0.0").write_bytes(b""), "cannot decode data/action chunk '0.0'"),
    "garbage chunk": (lambda s: (s / "data/state/5.0").write_bytes(os.urandom(3000)),
                      "cannot decode data/state chunk '5.0'"),
    "missing chunk": (lambda s: (s / "data/state/7.0").unlink(), "data/state has 159 of its 160 chunk files"),
    "missing array": (lambda s: shutil.rmtree(s / "data/action"), "data/action is missing"),
    "broken .zarray": (lambda s: (s / "data/keypoint/.zarray").write_text("{ not json"),
                       "cannot read zarr metadata of data/keypoint/.zarray"),
    "episode_ends not increasing": (_set_zarr("meta/episode_ends", 3, 5), "must be strictly increasing"),
    "episode_ends past the data": (_set_zarr("meta/episode_ends", -1, 10 ** 6),
                                   "meta/episode_ends ends at 1000000 but data/action has 25650 steps"),
    "NaN value": (_set_zarr("data/state", (1000, 2), np.nan), "data/state has NaN or inf values at step 1000"),
    "inf value": (_set_zarr("data/keypoint", (7, 0, 1), -np.inf), "data/keypoint has NaN or inf values at step 7"),
    "wrong per-step shape": (_edit_json("data/keypoint", shape=[25650, 9, 3], chunks=[161, 9, 3]),
                             "data/keypoint has per-step shape (9, 3), expected (9, 2)"),
    "shorter array": (_edit_json("data/state", shape=[25645, 5]),
                      "data arrays have different lengths"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupted_copy_is_refused_in_one_line(pusht_zarr, tmp_path, name):
    """Training's loader refuses the copy with a DatasetError naming the key; diffpolicy-data verify
    (and, for one corruption, diffpolicy-train) with one line and status 2.  The shared store is
    only read."""
    corrupt, expect = CORRUPTIONS[name]
    copy = tmp_path / "copy.zarr"
    shutil.copytree(pusht_zarr, copy, copy_function=shutil.copyfile)
    for p in [copy, *copy.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    corrupt(copy)
    with pytest.raises(DatasetError, match="copy.zarr: ") as err:
        load_pusht(copy, task="keypoints")
    assert expect in str(err.value)
    if name not in ("wrong per-step shape", "missing array"):   # the task's schema: verify does not know it
        assert_one_line_error(python("-m", "diffpolicy.datasets", "verify", "--path", str(copy)), expect)
    if name == "missing chunk":
        run_dir = tmp_path / "run"
        assert_one_line_error(python("-m", "diffpolicy.cli.train", f"task.dataset_path={copy}",
                                     f"run_dir={run_dir}", "training.max_steps=2"), expect)
        assert not run_dir.exists()


def test_shared_store_is_never_written(pusht_zarr):
    """Runs last in this module: every probe above only read the published store."""
    sums = (pusht_zarr.parent / "pusht_cchi_v7_replay.SHA256SUMS")
    if sums.exists():
        from diffpolicy.datasets.pusht import PUSHT_TREE_SHA256, tree_sha256
        assert tree_sha256(pusht_zarr) == PUSHT_TREE_SHA256


HOSTILE_VALUES = [1e308, -1e308, 1e20, 1025.0, -513.0, np.nan, np.inf, -np.inf, "left", "", None, True, 1 + 2j,
                  {"x": 1}, object(), [], [1.0], [1.0, 2.0, 3.0], [[1.0, 2.0]], np.zeros((2, 2)), b"ab",
                  np.array(["1", "2"]), np.array([1, 2], dtype=object)]


def _hostile_action(draw):
    """A whole hostile value, or a pair with one hostile element (not a bool: [True, 1.0] is the
    number pair (1, 1), as numpy reads it)."""
    bad = draw.choice(HOSTILE_VALUES)
    if draw.random() < 0.5 and not isinstance(bad, (list, np.ndarray, bool)):
        pair = [draw.uniform(0, 512), draw.uniform(0, 512)]
        pair[draw.randrange(2)] = bad
        return pair
    return bad


@pytest.mark.parametrize("obs_type", ["state", "keypoints", "image"])
def test_hostile_actions_are_refused_with_the_state_unchanged(obs_type):
    """200 random hostile actions (values past one board beyond the edge, NaN/inf, strings, dicts,
    objects, booleans, complex, wrong shapes) between valid steps: each is refused with a
    ValueError and the state unchanged; valid steps keep finite observations."""
    draw = rng(f"actions-{obs_type}")
    env = PushTEnv(obs_type=obs_type)
    env.reset(seed=draw.randrange(1000))
    for _ in range(200):
        before = (env.state().copy(), env.sim.agent_vel.copy())
        with pytest.raises(ValueError, match="PushTEnv.step: action must"):
            env.step(_hostile_action(draw))
        np.testing.assert_array_equal(before[0], env.state())
        np.testing.assert_array_equal(before[1], env.sim.agent_vel)
        obs = env.step(np.array([draw.uniform(-512, 1024), draw.uniform(-512, 1024)]))[0]
        values = obs.values() if isinstance(obs, dict) else [obs]
        assert all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in values)
    for options in ("state", 5, [1, 2], {"state": [np.nan] * 5}, {"state": [1, 2]}, {"state": "abc"}):
        with pytest.raises(ValueError, match="PushTEnv.reset"):
            env.reset(options=options)


HOSTILE_CONFIG = ["abc", "", 1.5, -1, 0, True, None, [], {}, 1e308, math.nan, math.inf, "-inf", [1, "a"]]
TRAIN_KEYS = ["seed", "device", "run_dir", "resume"] + [f"training.{k}" for k in (
    "batch_size", "lr", "weight_decay", "adam_betas", "warmup_steps", "max_steps", "max_epochs", "max_minutes",
    "grad_clip", "ema_power", "ema_max", "log_every", "val_every", "eval_every", "eval_episodes",
    "checkpoint_every", "keep_best", "num_threads", "obs_noise_std", "obs_noise_decay_frac")] + [
    f"task.{k}" for k in ("dataset_path", "action_key", "action_dim", "obs_keys", "obs_dim", "cameras", "env",
                          "env_id", "env_module", "env_kwargs", "env_obs_keys", "env_camera_keys", "success_key",
                          "max_episode_steps", "val_ratio", "split_seed", "max_train_episodes",
                          "frame_stride")] + [
    f"policy.{k}" for k in ("horizon", "n_obs_steps", "n_action_steps", "down_dims", "num_train_timesteps",
                            "num_inference_steps")]


def _with(cfg: dict, key: str, value) -> dict:
    cfg = json.loads(json.dumps(cfg))
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    return cfg


def test_hostile_config_values_are_refused_with_a_config_error():
    """Every training and evaluation key set to each hostile value: the check accepts it (never
    NaN or inf) or raises ConfigError naming the key (a policy value may be named through the
    policy key it contradicts); nothing else (a traceback) comes out."""
    base, wrong = compose_config("train", []), []
    for key in TRAIN_KEYS:
        names = (key.split(".")[-1], "set exactly one") + (("policy.",) if key.startswith("policy.") else ())
        for value in HOSTILE_CONFIG:
            try:
                check_train_config(_with(base, key, value))
            except ConfigError as e:
                if not any(n in str(e) for n in names):
                    wrong.append((key, value, str(e)))
            else:
                if isinstance(value, float) and not math.isfinite(value):
                    wrong.append((key, value, "accepted"))
    for key in sorted(EVAL_KEYS - {"checkpoint", "output_dir"}):
        for value in HOSTILE_CONFIG:
            try:
                check_eval_config({"checkpoint": "x.pt", key: value})
            except ConfigError as e:
                if key not in str(e):
                    wrong.append((key, value, str(e)))
    assert wrong == [], "\n".join(map(str, wrong))


@pytest.mark.parametrize("argv, expect", [
    (["diffpolicy.cli.train", "training.max_steps=abc"], "training.max_steps must be an integer"),
    (["diffpolicy.cli.train", "device=banana"], "device must be auto, cpu"),
    (["diffpolicy.cli.eval", "checkpoint=x.pt", "n_episodes=abc"], "n_episodes must be an integer"),
])
def test_hostile_command_lines_end_in_one_line(tmp_path, argv, expect):
    assert_one_line_error(python("-m", *argv, cwd=tmp_path), expect)
    assert [p for p in tmp_path.rglob("*") if not p.is_dir() or any(p.iterdir())] in ([], [tmp_path / "runs"])
