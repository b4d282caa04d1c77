"""A spawned NoProp process ends when the process that started it is killed alone."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from diffpolicy.noprop.lifeline import end_with_parent

# The parent spawns a child that watches it and then waits; the child writes its pid, and
# "interrupted" if it unwound with KeyboardInterrupt.  Started from a background shell job,
# the processes inherit SIGINT ignored (as `nohup ... &` runs the table).
SCRIPT = textwrap.dedent("""
    import multiprocessing as mp, os, signal, sys, time
    from pathlib import Path
    from diffpolicy.noprop import lifeline

    def child(out, mode):
        if mode == "no-signal":     # as on a platform without SIGUSR1 (Windows)
            lifeline.STOP_SIGNAL = None
        assert lifeline.end_with_parent(grace_s=5.0)
        if mode == "stuck":         # as a main thread inside a long C call: the signal never lands
            signal.signal(lifeline.STOP_SIGNAL, signal.SIG_IGN)
        Path(out, "child.pid").write_text(str(os.getpid()))
        try:
            time.sleep(300)
        except KeyboardInterrupt:
            Path(out, "interrupted").write_text("yes")
            raise

    if __name__ == "__main__":
        p = mp.get_context("spawn").Process(target=child, args=(sys.argv[1], sys.argv[2]))
        p.start()
        p.join()
""")


def _alive(pid: int) -> bool:
    """Running (not ended, not a zombie waiting for a reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _kill_parent_and_wait(tmp_path: Path, mode: str) -> float:
    """Seconds the child lived after its parent got SIGKILL."""
    script = tmp_path / "parent.py"
    script.write_text(SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path), mode],
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    pid_file = tmp_path / "child.pid"
    try:
        deadline = time.time() + 120
        while not pid_file.exists():
            assert parent.poll() is None and time.time() < deadline, "the child never started"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        t0 = time.time()
        while _alive(child) and time.time() - t0 < 30:
            time.sleep(0.05)
        lived = time.time() - t0
        if _alive(child):
            os.kill(child, signal.SIGKILL)
            pytest.fail("the child outlived its killed parent by 30 s")
        return lived
    finally:
        if parent.poll() is None:
            parent.kill()


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_child_is_interrupted_when_its_parent_is_killed(tmp_path):
    _kill_parent_and_wait(tmp_path, "unwind")
    assert (tmp_path / "interrupted").exists()          # unwound as on Ctrl-C


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_child_that_cannot_unwind_still_exits_after_the_grace_period(tmp_path):
    lived = _kill_parent_and_wait(tmp_path, "stuck")
    assert not (tmp_path / "interrupted").exists()
    assert lived > 4.0                                  # it waited out grace_s=5 (less the poll)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_without_a_stop_signal_the_child_exits_at_once(tmp_path):
    lived = _kill_parent_and_wait(tmp_path, "no-signal")
    assert not (tmp_path / "interrupted").exists() and lived < 3.0   # no grace period


def test_nothing_to_watch_outside_multiprocessing():
    assert end_with_parent() is False
