"""End-to-end training on a small copy of the demos: files, resume after a kill, bad input."""
from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffpolicy.datasets import DatasetError, ReplayBuffer
from diffpolicy.policy.checkpoint import CheckpointError, load_checkpoint
from diffpolicy.policy.run_config import ConfigError
from diffpolicy.policy.train import train

from policy_helpers import compose_config, tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_run_writes_everything(small_store, tmp_path):
    run_dir = tmp_path / "run"
    result = train(compose_config("train", tiny_overrides(small_store, run_dir, steps=12)), progress=False)
    assert result.step == 12 and math.isfinite(result.last_loss)
    for name in ("config.yaml", "metrics.csv", "training.png", "checkpoints/latest.pt"):
        assert (run_dir / name).is_file(), name
    assert "[train] done: step 12/12" in (run_dir / "train.log").read_text()
    ckpt = load_checkpoint(run_dir / "checkpoints" / "latest.pt", task="pusht_keypoints")
    assert {"model", "ema", "optimizer", "scheduler", "normalizer", "config", "step", "rng"} <= set(ckpt)
    assert ckpt["step"] == 12 and ckpt["config"]["training"]["max_steps"] == 12
    rows = _rows(run_dir)
    assert [int(r["step"]) for r in rows if r["loss"]] == [2, 4, 6, 8, 10, 12]
    assert [int(r["step"]) for r in rows if r["val_loss"]] == [6, 12]
    assert all(math.isfinite(float(r["loss"])) for r in rows if r["loss"])
    # warm-up then cosine to zero
    assert float(rows[0]["lr"]) == pytest.approx(1e-3) and float(rows[-1]["lr"]) == pytest.approx(0.0)
    # the EMA copy was saved and differs from the raw weights after training
    w = "unet.final_conv.weight"
    assert not torch.equal(ckpt["ema"]["averaged"][w], ckpt["model"][w])


def test_existing_run_needs_resume(small_store, tmp_path):
    run_dir = tmp_path / "run"
    train(compose_config("train", tiny_overrides(small_store, run_dir, steps=4)), progress=False)
    with pytest.raises(ConfigError, match="already holds a run .* resume=true"):
        train(compose_config("train", tiny_overrides(small_store, run_dir, steps=8)), progress=False)
    # a checkpoint of another task in the run folder is refused before training
    with pytest.raises(CheckpointError, match="trained on task 'pusht_keypoints', but task 'pusht_state'"):
        train(compose_config("train", tiny_overrides(small_store, run_dir, task="pusht_state", steps=8,
                                                     resume="true")), progress=False)
    # so is a different policy
    with pytest.raises(CheckpointError, match="different policy config .*down_dims"):
        train(compose_config("train", tiny_overrides(small_store, run_dir, steps=8, resume="true",
                                                     **{"policy.down_dims": "[8,16,32]"})), progress=False)
    # how the plan is executed may change between sessions (new defaults), what it learns may not
    result = train(compose_config("train", tiny_overrides(small_store, run_dir, steps=6, resume="true",
                                                          **{"policy.n_action_steps": 4,
                                                             "policy.num_inference_steps": 3})), progress=False)
    assert result.step == 6 and result.policy.config.n_action_steps == 4
    with pytest.raises(CheckpointError, match="different policy config .*n_action_steps"):
        train(compose_config("train", tiny_overrides(small_store, run_dir, steps=8, resume="true",
                                                     **{"policy.n_action_steps": 6, "training.pad_after": "null"})),
              progress=False)
    with pytest.raises(CheckpointError, match="different policy config .*loss"):
        train(compose_config("train", tiny_overrides(small_store, run_dir, steps=8, resume="true",
                                                     **{"policy.loss": "l1"})), progress=False)


def test_resume_continues_to_the_same_weights(small_store, tmp_path):
    """A run stopped after a checkpoint and resumed ends with the same weights as an uninterrupted one."""
    full = tmp_path / "full"
    ref = train(compose_config("train", tiny_overrides(small_store, full, steps=12)), progress=False)
    part = tmp_path / "part"
    train(compose_config("train", tiny_overrides(small_store, part, steps=12,
                                                 **{"training.max_minutes": 1e-9})), progress=False)
    ck = load_checkpoint(part / "checkpoints" / "latest.pt")
    assert ck["step"] == 2                     # max_minutes stopped it at the first log step
    res = train(compose_config("train", tiny_overrides(small_store, part, steps=12, resume="true")),
                progress=False)
    assert res.step == 12
    for (k, a), b in zip(ref.policy.state_dict().items(), res.policy.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    steps = [int(r["step"]) for r in _rows(part) if r["loss"]]
    assert steps == [2, 4, 6, 8, 10, 12]       # no duplicated rows after the resume


def test_rows_say_how_many_steps_their_loss_averages(small_store, tmp_path):
    """Resumed at step 6 with log_every=4, the row of step 8 averages steps 7 and 8 only (it
    was shown as if it were a whole window); so does the last row of a run."""
    run_dir = tmp_path / "run"
    train(compose_config("train", tiny_overrides(small_store, run_dir, steps=6, **{"training.log_every": 4})),
          progress=False)
    train(compose_config("train", tiny_overrides(small_store, run_dir, steps=12, resume="true",
                                                 **{"training.log_every": 4})), progress=False)
    assert [(int(r["step"]), int(r["loss_steps"])) for r in _rows(run_dir) if r["loss"]] == \
        [(4, 4), (6, 2), (8, 2), (12, 4)]


def test_kill_and_resume(small_store, tmp_path):
    """Kill a training process mid-way (SIGKILL); resume reaches the same step with a finite loss."""
    run_dir = tmp_path / "run"
    over = tiny_overrides(small_store, run_dir, steps=60, **{"training.checkpoint_every": 5,
                                                             "training.val_every": 0})
    cmd = [sys.executable, "-m", "diffpolicy.cli.train", *over]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run_dir / "checkpoints" / "latest.pt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if latest.exists() and load_checkpoint(latest)["step"] >= 10:
                break
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint at step >= 10 within 120 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = load_checkpoint(latest)["step"]
    assert 10 <= killed_at < 60
    out = subprocess.run(cmd + ["resume=true"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resuming at step {killed_at}" in out.stdout
    ck = load_checkpoint(latest)
    assert ck["step"] == 60 and math.isfinite(ck["metrics"]["loss"])
    # train.log keeps both runs' messages: the killed run's start, the resumed start, the end
    messages = [line.split(" ", 2)[2] for line in (run_dir / "train.log").read_text().splitlines()
                if "[train]" in line]
    assert len(messages) == 3 and messages[0].startswith("[train] pusht_keypoints:")
    assert "resuming" not in messages[0] and messages[1].endswith(f"resuming at step {killed_at}")
    assert messages[2].startswith("[train] done: step 60/60")


def test_leftover_temp_checkpoints_are_removed_at_start(small_store, tmp_path):
    """A kill during a checkpoint write leaves ``latest.pt.tmp-<pid>``; the next run removes them
    and says so in one line."""
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "latest.pt.tmp-4242").write_bytes(b"x" * 1000)
    (ckpts / "latest.pt.tmp-4343").write_bytes(b"y" * 24)
    train(compose_config("train", tiny_overrides(small_store, tmp_path / "run", steps=2)), progress=False)
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest.pt"]
    lines = [line for line in (tmp_path / "run" / "train.log").read_text().splitlines() if ".tmp-" in line]
    assert len(lines) == 1 and lines[0].endswith(f"[checkpoints] removed 2 leftover temporary checkpoint files "
                                                 f"(*.tmp-<pid>, 1,024 bytes) from {ckpts}")


def test_failed_checkpoint_write_ends_in_one_line(small_store, tmp_path, monkeypatch, capsys):
    """A checkpoint the disk refuses ends the run with one line of its own (it was glued to the
    progress bar), status 2; the previous checkpoint stays."""
    from diffpolicy.cli._errors import run_cli
    from diffpolicy.policy import train as train_mod
    from diffpolicy.serialization import WriteError

    run_dir = tmp_path / "run"
    train(compose_config("train", tiny_overrides(small_store, run_dir, steps=4)), progress=False)
    latest = run_dir / "checkpoints" / "latest.pt"

    def full_disk(self, ckpt):
        raise WriteError(f"cannot write {latest}: No space left on device (the previous file is kept)")

    monkeypatch.setattr(train_mod.CheckpointDir, "save_latest", full_disk)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: train(compose_config("train", tiny_overrides(small_store, run_dir, steps=8, resume="true")),
                              progress=True))
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (f"error: cannot write {latest}: No space left on device "
                                                        f"(the previous file is kept)")
    assert load_checkpoint(latest)["step"] == 4 and not (run_dir / ".lock").exists()


def _store_with(tmp_path: Path, src: Path, keypoint_shape=(9, 2)) -> Path:
    rb = ReplayBuffer.open(src, mode="r")
    path = tmp_path / "bad.zarr"
    dst = ReplayBuffer.create(path)
    for i in range(2):
        ep = {k: np.asarray(v) for k, v in rb.get_episode(i).items() if k != "img"}
        n = len(ep["action"])
        ep["keypoint"] = np.zeros((n, *keypoint_shape), dtype=np.float32)
        dst.add_episode(ep)
    return path


def test_bad_input_stops_before_training(small_store, tmp_path):
    with pytest.raises(ConfigError, match="unknown config key training.lrr"):
        train(compose_config("train", tiny_overrides(small_store, tmp_path / "a", **{"+training.lrr": 1})))
    with pytest.raises(ConfigError, match="unknown config key policy.downdims"):
        train(compose_config("train", tiny_overrides(small_store, tmp_path / "a", **{"+policy.downdims": 1})))
    with pytest.raises(ConfigError, match="bad policy config: .*horizon"):
        train(compose_config("train", tiny_overrides(small_store, tmp_path / "a", **{"policy.horizon": 4})))
    bad = _store_with(tmp_path, small_store, keypoint_shape=(8, 2))
    with pytest.raises(DatasetError, match=r"the observation keys give 18 values per step \(keypoint: 16, state\[0:2\]: 2\), "
                                         r"task 'pusht_keypoints' expects obs_dim=20"):
        train(compose_config("train", tiny_overrides(bad, tmp_path / "b")))
    with pytest.raises(DatasetError, match=r"data/img \(camera .image. of task .pusht_image.\) is missing"):
        train(compose_config("train", tiny_overrides(bad, tmp_path / "c", task="pusht_image")))
    with pytest.raises(DatasetError, match="give 20 values per step .*task 'pusht_keypoints' expects obs_dim=21"):
        train(compose_config("train", tiny_overrides(small_store, tmp_path / "d", **{"task.obs_dim": 21})))
    with pytest.raises(FileNotFoundError, match="nowhere.zarr"):
        train(compose_config("train", tiny_overrides(tmp_path / "nowhere.zarr", tmp_path / "e")))
    assert not any((tmp_path / d).exists() for d in "abcde")    # nothing written


def test_cli_prints_one_clear_error(small_store, tmp_path):
    cmd = [sys.executable, "-m", "diffpolicy.cli.train",
           *tiny_overrides(small_store, tmp_path / "r", task="pusht_image", **{"task.dataset_path": tmp_path / "x.zarr"})]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "x.zarr" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()             # the refused run leaves no empty run folder
    # Hydra itself refuses an unknown key given without "+"
    out = subprocess.run([sys.executable, "-m", "diffpolicy.cli.train", "training.lrr=1",
                          f"run_dir={tmp_path / 'r2'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Could not override 'training.lrr'" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "r2").exists()


def test_refused_run_keeps_a_folder_that_holds_anything(tmp_path):
    from diffpolicy.cli._errors import remove_if_unused
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.log").touch()
    remove_if_unused(empty)
    assert not empty.exists()
    for name, text in [("train.log", "step 10"), ("notes.txt", "")]:
        kept = tmp_path / name
        kept.mkdir()
        (kept / "train.log").touch()
        (kept / name).write_text(text)
        remove_if_unused(kept)
        assert (kept / name).exists() and (kept / "train.log").exists()
    remove_if_unused(tmp_path / "never-made")          # a missing folder is not an error
