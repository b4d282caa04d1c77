"""A task defined only by a config: a store with other key names, a 7-d action and two cameras of
different sizes, trained and evaluated through the commands a user runs (``--config-dir``), with
a gymnasium env that lives outside the package."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from diffpolicy.datasets import ReplayBuffer

ENV_MODULE = '''
"""A fake 7-joint arm: dict observations, two cameras (HWC and CHW), success after 9 steps."""
import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import register, registry


class FakeArm(gymnasium.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode=None, gain=0.1):
        self.render_mode, self.gain = render_mode, gain
        self.action_space = spaces.Box(-1, 1, (7,), np.float32)
        self.observation_space = spaces.Dict({
            "q": spaces.Box(-10, 10, (7,), np.float32), "grip": spaces.Box(0, 1, (1,), np.float32),
            "front_rgb": spaces.Box(0, 255, (32, 40, 3), np.uint8),
            "wrist_rgb": spaces.Box(0, 255, (3, 24, 24), np.uint8)})

    def _obs(self):
        shade = int(self.t * 20) % 256
        return {"q": self.q.copy(), "grip": np.array([self.t % 2], np.float32),
                "front_rgb": np.full((32, 40, 3), shade, np.uint8),
                "wrist_rgb": np.full((3, 24, 24), 255 - shade, np.uint8)}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.q, self.t = self.np_random.uniform(-1, 1, 7).astype(np.float32), 0
        return self._obs(), {}

    def step(self, action):
        action = np.asarray(action, np.float32)
        assert action.shape == (7,), action.shape
        self.q = self.q + self.gain * action
        self.t += 1
        return self._obs(), float(-np.abs(self.q).sum()), False, False, {"solved": self.t >= 9}

    def render(self):
        return np.zeros((16, 16, 3), np.uint8)


if "FakeArm-v0" not in registry:
    register(id="FakeArm-v0", entry_point=FakeArm)
'''

TASK_YAML = '''
name: fake_arm
dataset_path: {store}
action_key: ee_command
action_dim: 7
obs_keys: [joint_pos, "gripper_state[0:1]"]
obs_dim: 8
cameras:
  front: {{key: front_rgb, shape: [32, 40, 3], crop: [28, 36]}}
  wrist: {{key: wrist_rgb, shape: [24, 24, 3], crop: null}}
env: null
env_id: FakeArm-v0
env_module: fake_arm_env
env_kwargs: {{gain: 0.05}}
env_obs_keys: [q, grip]
env_camera_keys: {{front: front_rgb, wrist: wrist_rgb}}
success_key: solved
max_episode_steps: 12
val_ratio: 0.2
split_seed: 0
max_train_episodes: null
frame_stride: 1
'''


def _store(path: Path) -> Path:
    rb = ReplayBuffer.create(path)
    rng = np.random.default_rng(0)
    for length in (20, 17, 23, 19, 21):
        rb.add_episode({"joint_pos": rng.normal(size=(length, 7)).astype(np.float32),
                        "gripper_state": rng.uniform(size=(length, 2)).astype(np.float32),
                        "front_rgb": rng.integers(0, 256, (length, 32, 40, 3), dtype=np.uint8),
                        "wrist_rgb": rng.integers(0, 256, (length, 24, 24, 3), dtype=np.uint8),
                        "ee_command": rng.uniform(-1, 1, (length, 7)).astype(np.float32)})
    return path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", "import sys; from diffpolicy.cli.{0} import main; "
                           "sys.argv[0] = 'diffpolicy-{0}'; main()".format(args[0]), *args[1:]],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_config_only_task_trains_and_evaluates(tmp_path):
    store = _store(tmp_path / "arm.zarr")
    (tmp_path / "fake_arm_env.py").write_text(textwrap.dedent(ENV_MODULE))
    (tmp_path / "conf" / "task").mkdir(parents=True)
    (tmp_path / "conf" / "task" / "fake_arm.yaml").write_text(TASK_YAML.format(store=store))
    run_dir = tmp_path / "run"
    train = _run(["train", "--config-dir", str(tmp_path / "conf"), "task=fake_arm", "policy=cpu",
                  "training=demo", f"run_dir={run_dir}", "training.max_steps=6", "training.batch_size=8",
                  "training.warmup_steps=1", "training.log_every=2", "training.val_every=3",
                  "training.checkpoint_every=6", "training.eval_every=6", "training.eval_episodes=2",
                  "training.num_threads=1", "policy.down_dims=[16,32,64]", "policy.step_embed_dim=16",
                  "policy.num_inference_steps=2", "policy.fast_unet=false"], tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "fake_arm: 5 episodes" in train.stdout + train.stderr
    out = tmp_path / "eval"
    ev = _run(["eval", f"checkpoint={run_dir}/checkpoints/latest.pt", "n_episodes=3", "n_envs=2",
               f"output_dir={out}", "n_videos=1", "latency_calls=2"], tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text())
    cfg = report["policy_config"]
    assert cfg["action_dim"] == 7 and cfg["obs_dim"] == 8
    assert cfg["cameras"] == {"front": {"shape": [3, 32, 40], "crop": [28, 36]},
                              "wrist": {"shape": [3, 24, 24], "crop": None}}
    # the episodes ran in the fake env to its success key (solved at step 9 <= 12 steps)
    assert [e["steps"] for e in report["episodes"]] == [9, 9, 9]
    assert report["metrics"]["success_rate"]["mean"] == 1.0 and "max_coverage" not in report["metrics"]
    assert report["config"]["max_steps"] == 12                  # the task's episode length
    assert (out / "videos" / "seed100000.mp4").exists()
