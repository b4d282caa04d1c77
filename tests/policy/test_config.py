"""Every shipped config composes and validates; values reach the typed config."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diffpolicy.policy.run_config import ConfigError, check_train_config, policy_config

from policy_helpers import compose_config


@pytest.mark.parametrize("task", ["pusht_keypoints", "pusht_state", "pusht_image"])
@pytest.mark.parametrize("policy", ["cpu", "cpu_wide", "cpu_image", "published_lowdim", "published_image"])
@pytest.mark.parametrize("training", ["demo", "long", "published"])
def test_all_shipped_configs_validate(task, policy, training):
    run = check_train_config(compose_config("train", [f"task={task}", f"policy={policy}",
                                                      f"training={training}"]))
    pc = policy_config(run)
    assert pc.cameras == ({"image": {"shape": [3, 96, 96], "crop": [84, 84]}} if task == "pusht_image" else {})
    assert pc.obs_dim == {"pusht_keypoints": 20, "pusht_state": 5, "pusht_image": 2}[task]
    assert run.run_dir == f"runs/{task}-{policy}-{training}-seed0"


def test_defaults_and_overrides():
    run = check_train_config(compose_config("config", ["training.lr=3e-4", "seed=3"]))
    assert run.task.name == "pusht_keypoints" and run.policy["name"] == "cpu"
    assert run.training.lr == 3e-4 and run.seed == 3 and run.run_dir.endswith("seed3")
    assert policy_config(run).down_dims == (32, 64, 128)


def test_value_errors_name_the_key():
    with pytest.raises(ConfigError, match="exactly one of training.max_steps and training.max_epochs"):
        check_train_config(compose_config("train", ["training.max_epochs=3"]))
    with pytest.raises(ConfigError, match="training.batch_size must be >= 1, got 0"):
        check_train_config(compose_config("train", ["training.batch_size=0"]))
    with pytest.raises(ConfigError, match=r"task.obs_keys \(\['keypoint', 'state\[0:2\]'\]\) and task.obs_dim \(0\)"):
        check_train_config(compose_config("train", ["task.obs_dim=0"]))
    with pytest.raises(ConfigError, match="task.cameras.image.crop must be null or \\[h, w\\] within the 96x96"):
        check_train_config(compose_config("train", ["task=pusht_image", "task.cameras.image.crop=[84,100]"]))
    with pytest.raises(ConfigError, match="unknown config key task.cameras.image.size"):
        check_train_config(compose_config("train", ["task=pusht_image", "+task.cameras.image.size=3"]))
    with pytest.raises(ConfigError, match="task.env_camera_keys must map every camera.*not a camera: wrist"):
        check_train_config(compose_config("train", ["task=pusht_image", "+task.env_camera_keys.wrist=w"]))
    with pytest.raises(ConfigError, match="task.obs_keys: bad observation key 'state\\[0:2'"):
        check_train_config(compose_config("train", ["task.obs_keys=[keypoint,'state[0:2']"]))
    with pytest.raises(ConfigError, match="task.env_obs_keys: bad observation key 'agent_pos\\[0:'"):
        check_train_config(compose_config("train", ["task=pusht_image", "task.env_obs_keys=['agent_pos[0:']"]))
    with pytest.raises(ConfigError, match="policy.sampler must be one of"):
        check_train_config(compose_config("train", ["policy.sampler=euler"]))
    with pytest.raises(ConfigError, match="task.frame_stride must be >= 1, got 0"):
        check_train_config(compose_config("train", ["task.frame_stride=0"]))
    with pytest.raises(ConfigError, match=r"action_stride \* n_action_steps \(17\) must not exceed horizon"):
        check_train_config(compose_config("train", ["policy.n_action_steps=8"]))     # with the default stride 2


def test_config_groups_share_a_base_and_long_brings_its_policy():
    """cpu_wide / published_* / long / published state only what differs; nothing is lost."""
    from policy_helpers import compose_config
    base = compose_config("train", ["policy=cpu", "training=demo"])
    for policy in ("cpu_wide", "published_lowdim", "published_image"):
        cfg = compose_config("train", [f"policy={policy}", "training=demo"])
        assert set(cfg["policy"]) == set(base["policy"]) and cfg["policy"]["name"] == policy
    assert compose_config("train", ["policy=published_image"])["policy"]["down_dims"] == [512, 1024, 2048]
    assert compose_config("train", ["policy=published_image"])["policy"]["sampler"] == "ddpm"
    for training in ("long", "published"):
        cfg = compose_config("train", [f"training={training}"])
        assert set(cfg["training"]) == set(base["training"]) and cfg["training"]["name"] == training
    long = compose_config("train", ["training=long"])
    assert long["policy"]["name"] == "cpu_wide" and long["training"]["max_steps"] == 16000 and long["training"]["lr"] == 1e-3
    assert compose_config("train", ["training=long", "policy=cpu"])["policy"]["name"] == "cpu"   # the CLI wins


@pytest.mark.parametrize("override, message", [
    ("training.max_steps=abc", "training.max_steps must be an integer or null, got 'abc' (str)"),
    ("training.max_steps=1.5", "training.max_steps must be an integer or null, got 1.5 (float)"),
    ("training.max_steps=true", "training.max_steps must be an integer or null, got true (bool)"),
    ("training.batch_size=2.5", "training.batch_size must be an integer, got 2.5 (float)"),
    ("training.lr=abc", "training.lr must be a number, got 'abc' (str)"),
    ("training.lr=true", "training.lr must be a number, got true (bool)"),
    ("training.lr=nan", "training.lr must be a number, got nan (float)"),    # NaN / inf passed (lr=nan trained)
    ("training.ema_max=inf", "training.ema_max must be a number, got inf (float)"),
    ("task.val_ratio=-inf", "task.val_ratio must be a number, got -inf (float)"),
    ("training.max_minutes=nan", "training.max_minutes must be a number or null, got nan (float)"),
    ("training.grad_clip=abc", "training.grad_clip must be a number or null, got 'abc' (str)"),
    ("training.adam_betas=[0.9]", "training.adam_betas must be a list of 2 numbers, got [0.9] (list)"),
    ("training.adam_betas=[0.9,abc]", "training.adam_betas must be a list of 2 numbers, got [0.9, 'abc'] (list)"),
    ("training.adam_betas=0.9", "training.adam_betas must be a list of 2 numbers, got 0.9 (float)"),
    ("task.val_ratio=abc", "task.val_ratio must be a number, got 'abc' (str)"),
    ("task.dataset_path=5", "task.dataset_path must be a string or null, got 5 (int)"),
    ("task.max_train_episodes=1.5", "task.max_train_episodes must be an integer or null, got 1.5 (float)"),
    ("policy.horizon=16.0", "policy.horizon must be an integer, got 16.0 (float)"),
    ("policy.down_dims=[a,b]", "policy.down_dims must be a list of integers, got ['a', 'b'] (list)"),
    ("task.obs_keys=state", "task.obs_keys must be a list of strings, got 'state' (str)"),
    ("policy.clip_sample=1", "policy.clip_sample must be true or false, got 1 (int)"),
    ("seed=abc", "seed must be an integer, got 'abc' (str)"),
    ("seed=1.5", "seed must be an integer, got 1.5 (float)"),
    ("resume=yes", "resume must be true or false, got 'yes' (str)"),
    ("run_dir=5", "run_dir must be a string, got 5 (int)"),
    ("device=banana", "device must be auto, cpu, cuda, cuda:N or mps, got 'banana'"),
    ("device=cuda:x", "device must be auto, cpu, cuda, cuda:N or mps, got 'cuda:x'"),
    ("device=5", "device must be a string, got 5 (int)"),
])
def test_type_errors_name_the_key_the_type_and_the_value(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_train_config(compose_config("train", [override]))


def test_valid_types_are_kept():
    """Integers where numbers are expected, null where allowed, every device form."""
    over = ["training.lr=1", "training.grad_clip=1", "training.max_minutes=2", "training.adam_betas=[1,0.999]",
            "task.max_train_episodes=90", "policy.fast_unet=false", "training.num_threads=null"]
    run = check_train_config(compose_config("train", over))
    assert run.training.lr == 1 and run.training.adam_betas == [1, 0.999] and run.training.num_threads is None
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"):
        assert check_train_config(compose_config("train", [f"device={device}"])).device == device


def test_cli_refuses_a_type_error_in_one_line_and_leaves_no_folder(tmp_path):
    """seed=abc: the default run folder (runs/...-seedabc, made by Hydra) does not stay."""
    out = subprocess.run([sys.executable, "-m", "diffpolicy.cli.train", "seed=abc", "training.max_steps=1.5"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == ["error: training.max_steps must be an integer or null, "
                                               "got 1.5 (float)"]
    assert not (tmp_path / "runs" / "pusht_keypoints-cpu-demo-seedabc").exists()


def test_cli_error_with_a_run_dir_that_is_not_a_string(tmp_path, monkeypatch, capsys):
    from diffpolicy.cli._errors import run_cli

    def refuse():
        raise ConfigError("run_dir must be a string, got 5 (int)")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "5").mkdir()                       # where Hydra puts run_dir=5
    with pytest.raises(SystemExit) as exc:
        run_cli(refuse, run_dir=5)
    assert exc.value.code == 2 and not (tmp_path / "5").exists()
    assert capsys.readouterr().err == "error: run_dir must be a string, got 5 (int)\n"


def test_metaworld_task_config_names_its_task_everywhere():
    run = check_train_config(compose_config("train", ["task=metaworld", "task.env=drawer-open-v3"]))
    t = run.task
    assert t.name == "metaworld_drawer-open-v3" and t.dataset_path == "data/metaworld/drawer-open-v3.zarr"
    assert t.env_kwargs == {"task_name": "drawer-open-v3"} and t.env_module == "diffpolicy.envs.metaworld"
    assert (t.obs_dim, t.action_dim, t.cameras) == (39, 4, {})
    assert policy_config(run).obs_dim == 39


def test_cpu_image_is_cpu_with_the_small_camera_trunk():
    run = check_train_config(compose_config("train", ["task=pusht_image", "policy=cpu_image"]))
    cpu = policy_config(check_train_config(compose_config("train", ["task=pusht_image", "policy=cpu"])))
    pc = policy_config(run)
    assert pc.image_encoder == "small" and cpu.image_encoder == "resnet18"
    assert {k: v for k, v in pc.to_dict().items() if k != "image_encoder"} == \
        {k: v for k, v in cpu.to_dict().items() if k != "image_encoder"}
    with pytest.raises(ConfigError, match="policy.image_encoder must be one of"):
        check_train_config(compose_config("train", ["task=pusht_image", "policy.image_encoder=vit"]))


@pytest.mark.parametrize("cameras, message", [
    ({"obs": {"shape": [3, 8, 8]}}, "policy.cameras: 'obs' cannot name a camera \\(obs and action are reserved\\)"),
    ({"cam": {"shape": [3, 8]}}, "policy.cameras.cam.shape must be 3 positive integers"),
    ({"cam": {"shape": [3, 8, True]}}, "policy.cameras.cam.shape must be 3 positive integers"),
    ({"cam": {"shape": [3, 8, 8], "crop": [9, 4]}}, "policy.cameras.cam.crop must be null or \\[h, w\\] within the image 8x8"),
    ({"cam": {"shape": [3, 8, 8], "crop": [0, 4]}}, "policy.cameras.cam.crop must be null"),
    ({"cam": {"shape": [3, 8, 8], "size": 2}}, "policy.cameras.cam must be \\{shape"),
])
def test_stored_policy_cameras_are_checked(cameras, message):
    from diffpolicy.policy.diffusion_policy import PolicyConfig
    with pytest.raises(ValueError, match=message):
        PolicyConfig(obs_dim=2, cameras=cameras)


@pytest.mark.parametrize("obs_type", ["state", "keypoints", "image"])
def test_load_pusht_reads_what_the_task_config_names(obs_type):
    from diffpolicy.datasets.pusht import PUSHT_DEMOS
    from diffpolicy.policy.run_config import builtin_task, demo_spec
    assert PUSHT_DEMOS[obs_type] == demo_spec(builtin_task(f"pusht_{obs_type}"))
