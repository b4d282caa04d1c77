"""One run per run folder: the lock on ``<run_dir>/.lock``, the refusal of a second run, and a
killed run's lock file, which must not block the next run."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffpolicy.cli._errors import run_cli
from diffpolicy.policy.run_config import ConfigError
from diffpolicy.policy.run_lock import RunLock
from diffpolicy.policy.train import train

from policy_helpers import compose_config, tiny_overrides

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no fcntl: runs are not locked on Windows")


def test_a_held_folder_is_refused_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    first = RunLock(run_dir)
    first.acquire()
    text = (run_dir / ".lock").read_text()
    assert f"pid {os.getpid()}" in text and "started " in text
    with pytest.raises(ConfigError, match=rf"run_dir {run_dir} is in use by another run \(pid {os.getpid()}, "
                                          rf"started .*\); wait for it to end or choose another run_dir="):
        RunLock(run_dir).acquire()
    assert (run_dir / ".lock").read_text() == text          # the refused one changed nothing
    first.release()
    with RunLock(run_dir):                                    # free again
        assert (run_dir / ".lock").is_file()
    assert not run_dir.exists()          # the lock made the folder and nothing else was put there
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with RunLock(kept):
        pass
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]


def _wait_for(condition, proc: subprocess.Popen, what: str, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert proc.poll() is None, f"the first run ended before {what}"
        if time.time() > deadline:
            pytest.fail(f"no {what} within {seconds} s")
        time.sleep(0.2)


def test_a_second_run_is_refused_until_the_first_is_killed(small_store, tmp_path, capsys):
    """Two runs into one run_dir (different seeds): the second exits 2 naming the folder and the
    first run's pid; once the first is killed (SIGKILL), its leftover lock file does not block."""
    run_dir = tmp_path / "twin"
    first = tiny_overrides(small_store, run_dir, steps=100_000, seed=1,
                           **{"training.val_every": 0, "training.checkpoint_every": 100_000})
    proc = subprocess.Popen([sys.executable, "-m", "diffpolicy.cli.train", *first], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run_dir / "metrics.csv"
    second = compose_config("train", tiny_overrides(small_store, run_dir, steps=2, seed=2))
    try:
        _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) > 1, proc,
                  "logged training step")
        rows = metrics.read_text()
        with pytest.raises(SystemExit) as exc:
            run_cli(lambda: train(second, progress=False), run_dir=run_dir)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: run_dir {run_dir} is in use by another run "
                                                   f"(pid {proc.pid}, started ")
        assert proc.poll() is None and metrics.read_text().startswith(rows)     # the first run goes on
    finally:
        proc.kill()
        proc.wait()
    assert f"pid {proc.pid}" in (run_dir / ".lock").read_text()               # the killed run's file stays
    result = train(second, progress=False)                                     # ... but does not block
    assert result.step == 2
    assert [int(r.split(",")[0]) for r in metrics.read_text().splitlines()[1:]] == [2]
    assert not (run_dir / ".lock").exists()                                    # a finished run removes it
