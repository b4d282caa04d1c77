"""The evaluation report end to end (tiny untrained policies, short episodes)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffpolicy.eval.evaluate import evaluate
from diffpolicy.policy.checkpoint import CheckpointError
from diffpolicy.policy.run_config import ConfigError

from eval_helpers import make_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _cfg(ckpt, out, **kw):
    cfg = dict(checkpoint=str(ckpt), task=None, n_episodes=3, seed_start=100000, max_steps=16, n_envs=50,
               use_ema=True, sampler=None, num_inference_steps=None, sampling_seed=0, device="cpu",
               output_dir=str(out), n_videos=2, video_format="gif", latency_calls=3, num_threads=None)
    cfg.update(kw)
    return cfg


def test_report_files_and_fields(keypoints_ckpt, tmp_path, capsys):
    report = evaluate(_cfg(keypoints_ckpt, tmp_path / "ev"))
    out = tmp_path / "ev"
    saved = json.loads((out / "eval.json").read_text())
    assert saved["metrics"]["score"]["n"] == 3
    assert saved["training_seed"] == 3                                         # from the checkpoint's config
    assert [e["seed"] for e in saved["episodes"]] == [100000, 100001, 100002]
    assert all(e["steps"] == 16 for e in saved["episodes"])
    assert set(saved["latency"]["batch 1"]) >= {"median_ms", "p95_ms"}
    assert saved["latency"]["batch 1"]["n"] == 3
    assert saved["machine"]["cpu_model"] and saved["machine"]["torch"] == torch.__version__
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["seed100000.gif", "seed100001.gif"]
    assert (out / "final_frames.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "score (mean max reward)" in printed and (out / "eval.md").read_text().strip() in printed
    assert report["metrics"]["score"]["mean"] == pytest.approx(
        sum(e["max_reward"] for e in saved["episodes"]) / 3)


def test_same_seeds_same_result(keypoints_ckpt, tmp_path):
    a = evaluate(_cfg(keypoints_ckpt, tmp_path / "a", n_videos=0, latency_calls=0))
    c = evaluate(_cfg(keypoints_ckpt, tmp_path / "c", n_videos=0, latency_calls=0))
    assert a["episodes"] == c["episodes"]                                      # fully reproducible


def test_bad_input(keypoints_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="trained on task 'pusht_keypoints', but task 'pusht_image'"):
        evaluate(_cfg(keypoints_ckpt, tmp_path / "x", task="pusht_image"))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        evaluate(_cfg(tmp_path / "nope.pt", tmp_path / "x"))
    with pytest.raises(ConfigError, match="unknown config key n_episode "):
        evaluate({**_cfg(keypoints_ckpt, tmp_path / "x"), "n_episode": 3})
    assert not (tmp_path / "x").exists()


def test_cli_with_hydra_overrides(keypoints_ckpt, tmp_path):
    cmd = [sys.executable, "-m", "diffpolicy.cli.eval", f"checkpoint={keypoints_ckpt}", "n_episodes=2",
           "max_steps=8", "n_videos=1", "latency_calls=2", "device=cpu"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    default_dir = keypoints_ckpt.parent.parent / "eval_latest_2"
    assert (default_dir / "eval.json").is_file() and (default_dir / "videos" / "seed100000.mp4").is_file()
    bad = subprocess.run(cmd[:3] + [f"checkpoint={tmp_path / 'missing.pt'}"], cwd=REPO,
                         capture_output=True, text=True, timeout=180)
    assert bad.returncode == 2 and "error: checkpoint not found" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_actions_per_call_can_be_overridden(keypoints_ckpt, tmp_path):
    """Default Ta = 8: 16 steps take 2 policy calls; executing 4 actions per call takes 4."""
    def calls(**kw):
        rep = evaluate(_cfg(keypoints_ckpt, tmp_path / str(kw), n_episodes=1, n_videos=0, latency_calls=0, **kw))
        (rollouts,) = [v for k, v in rep["latency"].items() if "rollouts" in k]
        return rollouts["n"]
    assert calls() == 2 and calls(n_action_steps=4) == 4
    saved = json.loads((tmp_path / str({"n_action_steps": 4}) / "eval.json").read_text())
    assert saved["sampling"] == {"sampler": "ddim", "num_inference_steps": 3, "n_action_steps": 4}
    assert "| ddim 3 steps | 4 actions per call |" in (tmp_path / str({"n_action_steps": 4}) / "eval.md").read_text()
    with pytest.raises(ConfigError, match="n_action_steps=16: .*must not exceed"):
        evaluate(_cfg(keypoints_ckpt, tmp_path / "bad", n_action_steps=16))
    with pytest.raises(ConfigError, match="n_action_steps=0: .*must be >= 1"):
        evaluate(_cfg(keypoints_ckpt, tmp_path / "bad", n_action_steps=0))
    assert not (tmp_path / "bad").exists()


def test_action_stride_runs_the_plan_faster(keypoints_ckpt, tmp_path):
    """action_stride=2 alone executes the 7 strided actions that fit in H = 16 (16 steps: 3 calls),
    recorded in the report; a stride whose actions leave the plan is refused before any output."""
    rep = evaluate(_cfg(keypoints_ckpt, tmp_path / "k2", n_episodes=1, n_videos=0, latency_calls=0,
                        action_stride=2))
    (rollouts,) = [v for k, v in rep["latency"].items() if "rollouts" in k]
    assert rollouts["n"] == 3
    assert rep["sampling"] == {"sampler": "ddim", "num_inference_steps": 3, "n_action_steps": 7, "action_stride": 2}
    assert "| 7 actions per call, action stride 2 |" in (tmp_path / "k2" / "eval.md").read_text()
    with pytest.raises(ConfigError, match=r"n_action_steps=8, action_stride=2: .*must not exceed horizon"):
        evaluate(_cfg(keypoints_ckpt, tmp_path / "bad", n_action_steps=8, action_stride=2))
    with pytest.raises(ConfigError, match="action_stride must be >= 1 or null, got 0"):
        evaluate(_cfg(keypoints_ckpt, tmp_path / "bad", action_stride=0))
    with pytest.raises(ConfigError, match="action_stride=2 does not apply with temporal_ensemble"):
        evaluate(_cfg(keypoints_ckpt, tmp_path / "bad", action_stride=2, temporal_ensemble=0.1))
    assert not (tmp_path / "bad").exists()
