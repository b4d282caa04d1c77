"""Helpers of the fault-injection suite: processes killed at random moments, one-line errors."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("DIFFPOLICY_FAULT_SEED", "0"))   # other seeds: other kill moments and values


def rng(name: str) -> random.Random:
    """The random draws of one probe (``DIFFPOLICY_FAULT_SEED`` and the probe's name)."""
    return random.Random(f"{SEED}-{name}")


def start(cmd: list[str], **kw) -> subprocess.Popen:
    """``cmd`` in the repository root, its output piped."""
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def kill_after(proc: subprocess.Popen, ready: Callable[[], bool], delay: float, timeout: float = 180) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` first holds; returns True if it was
    killed, False if it ended on its own first."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            proc.communicate()
            return False
        if time.time() > deadline:
            proc.kill()
            raise TimeoutError(f"{proc.args}: not ready within {timeout} s")
        time.sleep(0.02)
    end = time.time() + delay
    while time.time() < end and proc.poll() is None:
        time.sleep(0.005)
    if proc.poll() is not None:
        proc.communicate()
        return False
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return True


def python(*args: str, **kw) -> subprocess.CompletedProcess:
    """``python *args`` in the repository root, to completion."""
    return subprocess.run([sys.executable, *args], cwd=kw.pop("cwd", REPO), capture_output=True, text=True,
                          timeout=kw.pop("timeout", 300), **kw)


def assert_one_line_error(proc: subprocess.CompletedProcess, *expect: str) -> None:
    """Exit status 2, and the last stderr line is ``error: ...`` holding every ``expect``;
    no traceback anywhere."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    for noise in ("Traceback", "never retrieved", "Task was destroyed"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-3000:]
    for text in expect:
        assert text in last, (text, last)
