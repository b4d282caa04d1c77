"""diffpolicy-eval's options: types and ranges are refused with one line before any output folder
is made; the defaults are eval.yaml's."""
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from diffpolicy.eval.evaluate import evaluate
from diffpolicy.eval.options import EvalConfig
from diffpolicy.policy.run_config import ConfigError

from test_evaluate import _cfg

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("options, message", [
    (dict(sampler="foo"), "sampler must be ddpm, ddim or null, got 'foo'"),
    (dict(n_episodes="abc"), "n_episodes must be an integer, got 'abc' (str)"),
    (dict(n_episodes=2.5), "n_episodes must be an integer, got 2.5 (float)"),
    (dict(n_episodes=0), "n_episodes must be >= 1, got 0"),
    (dict(max_steps=0), "max_steps must be >= 1 or null, got 0"),
    (dict(max_steps=True), "max_steps must be an integer or null, got true (bool)"),
    (dict(n_envs=0), "n_envs must be >= 1, got 0"),
    (dict(seed_start=-1), "seed_start must be >= 0, got -1"),
    (dict(sampling_seed="x"), "sampling_seed must be an integer, got 'x' (str)"),
    (dict(use_ema="yes"), "use_ema must be true or false, got 'yes' (str)"),
    (dict(num_inference_steps=0), "num_inference_steps must be >= 1 or null, got 0"),
    (dict(num_inference_steps=101), "num_inference_steps must be in [1, 100] (the checkpoint's "
                                    "num_train_timesteps) or null, got 101"),
    (dict(n_action_steps=2.0), "n_action_steps must be an integer or null, got 2.0 (float)"),
    (dict(temporal_ensemble="abc"), "temporal_ensemble must be a number or null, got 'abc' (str)"),
    (dict(device="banana"), "device must be auto, cpu, cuda, cuda:N or mps, got 'banana'"),
    (dict(n_videos=-1), "n_videos must be >= 0, got -1"),
    (dict(video_format="avi"), "video_format must be mp4 or gif, got 'avi'"),
    (dict(video_size=0), "video_size must be >= 1, got 0"),
    (dict(latency_calls=-1), "latency_calls must be >= 0, got -1"),
    (dict(num_threads=-1), "num_threads must be >= 0 or null (0 or null: torch's default), got -1"),
    (dict(task=3), "task must be a string or null, got 3 (int)"),
    (dict(checkpoint=None), "checkpoint= is required (a file written by diffpolicy-train)"),
    (dict(checkpoint="???"), "checkpoint= is required (a file written by diffpolicy-train)"),
    (dict(checkpoint=5), "checkpoint must be a string, got 5 (int)"),
])
def test_bad_options_stop_before_any_output(keypoints_ckpt, tmp_path, options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        evaluate(_cfg(keypoints_ckpt, tmp_path / "bad", **{"latency_calls": 0, **options}))
    assert not (tmp_path / "bad").exists()
    assert not (keypoints_ckpt.parent.parent / "eval_latest_3").exists()


def test_an_output_dir_that_is_a_file(keypoints_ckpt, tmp_path):
    (tmp_path / "report").write_text("mine")
    for out in (tmp_path / "report", tmp_path / "report" / "sub"):
        with pytest.raises(ConfigError, match=re.escape(f"output_dir={out}: {tmp_path / 'report'} is a "
                                                        f"file, not a folder")):
            evaluate(_cfg(keypoints_ckpt, out, latency_calls=0))
    assert (tmp_path / "report").read_text() == "mine"
    # the default folder (beside the checkpoint's folder) is checked alike
    default = keypoints_ckpt.parent.parent / "eval_latest_3"
    default.write_text("mine")
    with pytest.raises(ConfigError, match=re.escape(f"{default} is a file, not a folder")):
        evaluate(_cfg(keypoints_ckpt, "unused", latency_calls=0, output_dir=None))


def test_defaults_are_eval_yaml():
    """A plain-Python call may leave options out: they take eval.yaml's values (num_threads: null,
    torch's default, where the command line's eval.yaml sets 1)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(REPO / "diffpolicy" / "configs" / "evaluation"), version_base=None):
        composed = OmegaConf.to_container(compose(config_name="eval", overrides=["checkpoint=x.pt"]))
    assert composed == {**asdict(EvalConfig(checkpoint="x.pt")), "num_threads": 1}


def test_cli_refuses_in_one_line_and_leaves_no_folder(keypoints_ckpt):
    out = subprocess.run([sys.executable, "-m", "diffpolicy.cli.eval", f"checkpoint={keypoints_ckpt}",
                          "sampler=foo", "device=cpu"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == ["error: sampler must be ddpm, ddim or null, got 'foo'"]
    assert sorted(p.name for p in keypoints_ckpt.parent.parent.iterdir()) == ["checkpoints"]


def test_cli_takes_task_as_a_plain_option(keypoints_ckpt):
    """task=<name> is the evaluation's check, not a config group (it clashed with configs/task/)."""
    out = subprocess.run([sys.executable, "-m", "diffpolicy.cli.eval", f"checkpoint={keypoints_ckpt}",
                          "task=pusht_image", "device=cpu"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "was trained on task 'pusht_keypoints'" in lines[0] and "'pusht_image'" in lines[0]
