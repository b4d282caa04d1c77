"""Time the default test suite (what `make test` runs) and record it with the machine.

    python benchmarks/time_test_suite.py --json docs/results/test_suite_<machine>.json [-- PYTEST ARGS]

Runs ``python -m pytest -q`` (plus any arguments after ``--``) with
``OMP_WAIT_POLICY=PASSIVE`` (as `make test` sets it), streams its output, and writes
the wall time, the counts of pytest's last line (passed, skipped, deselected, ...), its
exit status and the machine (``speed.machine_info``; the load average is read before
the run starts, so it says what else was running).  Exits with pytest's status.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from diffpolicy import speed

_COUNT_RE = re.compile(r"(\d+) (passed|failed|skipped|deselected|xfailed|xpassed|errors?|warnings?)")


def summary_counts(last_line: str) -> dict[str, int]:
    """``"705 passed, 29 deselected in 280.1s"`` -> ``{"passed": 705, "deselected": 29}``."""
    singular = {"errors": "error", "warnings": "warning"}
    return {singular.get(kind, kind): int(n) for n, kind in _COUNT_RE.findall(last_line)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="report to write")
    ap.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments")
    args = ap.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest_args]
    machine_before = speed.machine_info()
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        if line.strip():
            last = line.strip()
    status = proc.wait()
    seconds = time.perf_counter() - start
    row = {"seconds": round(seconds, 1), "exit_status": status, "last_line": last, **summary_counts(last),
           "ci": os.environ.get("CI", "")}
    speed.write_benchmark_json(args.json, "default test suite (make test)", [row],
                               command="OMP_WAIT_POLICY=PASSIVE python -m pytest -q "
                                       + " ".join(args.pytest_args),
                               machine_at_start=machine_before)
    return status


if __name__ == "__main__":
    sys.exit(main())
