"""Processes killed (SIGKILL) at random moments: training, checkpoint writes, store appends;
and a disk that fills up during training.  What each fault gets: docs/faults.md."""
from __future__ import annotations

import resource
import sys
import warnings

import numpy as np
import pytest
import torch
import zarr

from diffpolicy.datasets import load_pusht
from diffpolicy.datasets.replay_buffer import PENDING_ATTR, ReplayBuffer, partial_files
from diffpolicy.policy.checkpoint import CheckpointDir, load_checkpoint
from diffpolicy.policy.train import train

from fault_helpers import assert_one_line_error, kill_after, python, rng, start
from policy_helpers import compose_config, tiny_overrides

pytestmark = pytest.mark.slow

TRAIN = [sys.executable, "-m", "diffpolicy.cli.train"]


def _starts(log) -> int:
    """Training starts recorded in ``train.log`` (one line each, written just before the first step)."""
    return log.read_text().count("[train] pusht_keypoints:") if log.exists() else 0


def test_training_killed_at_random_moments_resumes_to_the_same_weights(keypoints_store, tmp_path):
    """Up to 6 kills during a 30-step run that checkpoints every step (so many kills land in a
    checkpoint write); every kill leaves a loadable latest.pt, and the resumed run ends with the
    weights of an uninterrupted one, bit for bit, with clean metrics and no leftover files."""
    extra = {"training.checkpoint_every": 1, "training.val_every": 0, "training.log_every": 3}
    ref = train(compose_config("train", tiny_overrides(keypoints_store, tmp_path / "ref", steps=30, **extra)),
                progress=False)
    seconds = ref.minutes * 60                     # kill moments: anywhere in a run's training time
    run_dir, draw = tmp_path / "run", rng("training")
    cmd = TRAIN + tiny_overrides(keypoints_store, run_dir, steps=30, resume="true", **extra)
    log, latest = run_dir / "train.log", run_dir / "checkpoints" / "latest.pt"
    kills, saved_steps = 0, []
    for _ in range(6):
        before = _starts(log)
        if not kill_after(start(cmd), lambda: _starts(log) > before, draw.uniform(0, seconds)):
            break
        kills += 1
        if latest.exists():
            saved_steps.append(load_checkpoint(latest)["step"])     # never torn
    done = python(*cmd[1:])
    assert done.returncode == 0, done.stderr[-3000:]
    assert kills >= 1 and saved_steps == sorted(saved_steps), (kills, saved_steps)
    ckpt = load_checkpoint(latest, task="pusht_keypoints")
    assert ckpt["step"] == 30
    for key, value in ref.policy.state_dict().items():
        assert torch.equal(value, ckpt["model"][key]), key
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    steps = [int(r.split(",")[0]) for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 30
    left = sorted(p.name for p in run_dir.rglob("*") if ".tmp-" in p.name or p.name == ".lock")
    assert left == []


CHECKPOINT_WRITER = """
import sys, torch
from pathlib import Path
from diffpolicy.policy.checkpoint import FORMAT, CheckpointDir
folder = CheckpointDir(sys.argv[1])
w = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0))    # 8 MB
Path(sys.argv[2]).touch()
for step in range(1_000_000):
    folder.save_latest({"format": FORMAT, "task": "t", "step": step, "w": w})
"""


def test_checkpoint_writes_killed_at_random_moments(tmp_path):
    """8 MB checkpoints written in a loop and killed: latest.pt is always a whole checkpoint,
    and the temporary files the kills leave are what remove_temp_files (run at training start)
    deletes."""
    folder, ready, draw = CheckpointDir(tmp_path / "checkpoints"), tmp_path / "ready", rng("checkpoint")
    w = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0))
    temps = 0
    for _ in range(6):
        ready.unlink(missing_ok=True)
        assert kill_after(start([sys.executable, "-c", CHECKPOINT_WRITER, str(folder.folder), str(ready)]),
                          ready.exists, draw.uniform(0.05, 1.0))
        if folder.latest.exists():
            assert torch.equal(load_checkpoint(folder.latest)["w"], w)
        temps += folder.remove_temp_files()[0]
        assert sorted(p.name for p in folder.folder.iterdir()) in ([], ["latest.pt"])
    assert temps >= 1, "no kill landed in a write"


APPENDER = """
import sys
import numpy as np
from pathlib import Path
from diffpolicy.datasets.replay_buffer import ReplayBuffer
path, ready, fmt = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rb = ReplayBuffer.open(path, mode="a") if path.exists() else ReplayBuffer.create(path, zarr_format=fmt)
ready.touch()
while True:
    i = rb.n_episodes          # episode i: 3000..4999 steps, every value i
    T = 3000 + (i * 397) % 2000
    rb.add_episode({k: np.full((T,) + s, i, np.float32)
                    for k, s in [("state", (5,)), ("action", (2,)), ("keypoint", (9, 2)), ("n_contacts", (1,))]})
"""


def _check_committed(path) -> int:
    """Open read-only as training does (a warning if an append was interrupted): every committed
    episode whole and right; returns the number of episodes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rb = ReplayBuffer.open(path, mode="r", verify=True)
        data = load_pusht(path, task="keypoints")
    assert data.n_episodes == rb.n_episodes
    for i in range(rb.n_episodes):
        ep = rb.get_episode(i)
        assert all(len(v) == 3000 + (i * 397) % 2000 and (v == i).all() for v in ep.values()), i
    return rb.n_episodes


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_appends_killed_at_random_moments(tmp_path, zarr_format):
    """Appends of 3000-5000-step episodes killed 6 times: the store always opens read-only with its
    committed episodes intact (what training reads), diffpolicy-data repair cleans it up, and
    appending goes on."""
    path, ready, draw = tmp_path / "demos.zarr", tmp_path / "ready", rng(f"append{zarr_format}")
    interrupted, episodes = 0, 0
    for kill in range(6):
        ready.unlink(missing_ok=True)
        proc = start([sys.executable, "-c", APPENDER, str(path), str(ready), str(zarr_format)])
        assert kill_after(proc, ready.exists, draw.uniform(0.1, 1.5))
        interrupted += PENDING_ATTR in zarr.open_group(str(path), mode="r").attrs
        n = _check_committed(path)
        assert n >= episodes
        episodes = n
        if kill % 2:              # else the next appender's mode="a" rolls back
            repaired = python("-m", "diffpolicy.datasets", "repair", str(path))
            assert repaired.returncode == 0, repaired.stderr[-3000:]
            assert not partial_files(path) and PENDING_ATTR not in zarr.open_group(str(path), mode="r").attrs
    assert interrupted >= 1 and episodes >= 2, (interrupted, episodes)


def test_disk_full_during_training(keypoints_store, tmp_path):
    """A resumed run whose next checkpoint does not fit (ulimit -f below its size) ends with one
    line naming the file; the previous checkpoint stays loadable and no temporary file is left."""
    run_dir = tmp_path / "run"
    over = tiny_overrides(keypoints_store, run_dir, steps=4, **{"training.val_every": 0})
    first = python("-m", "diffpolicy.cli.train", *over)
    assert first.returncode == 0, first.stderr[-3000:]
    latest = run_dir / "checkpoints" / "latest.pt"
    limit = latest.stat().st_size // 2

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    over = tiny_overrides(keypoints_store, run_dir, steps=8, resume="true", **{"training.val_every": 0})
    full = python("-m", "diffpolicy.cli.train", *over, preexec_fn=small_files)
    assert_one_line_error(full, f"cannot write {latest}: File too large (the previous file is kept)")
    assert load_checkpoint(latest)["step"] == 4
    assert sorted(p.name for p in latest.parent.iterdir()) == ["latest.pt"]
    assert not (run_dir / ".lock").exists()
