"""Time `make demo` on a fresh run folder and record it with the machine.

    python benchmarks/time_make_demo.py --demo-dir /tmp/demo_run --json docs/results/pusht/demo_seed0/demo_timing.json

Runs ``make demo DEMO_DIR=<demo-dir>`` (the folder must not hold a run yet, so the
whole training is timed, not a resume), then writes: the wall time of the whole
command; the training time ``diffpolicy-train`` reports (``train.log``: the ``done``
line); the evaluation's wall time (the seconds between the end of training and the
end of the command, set-up of the evaluation included) and its rollouts alone
(``eval.json``'s ``rollout_seconds``); the success rate and score; and the machine
(its load average read before the run, so it says what else was running).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from diffpolicy import speed

_DONE_RE = re.compile(r"\[train\] done: step (\d+)/(\d+), loss [0-9.]+, ([0-9.]+) min")


def training_minutes(train_log: Path) -> tuple[int, float]:
    """``(steps, minutes)`` of the last ``[train] done`` line of a run's ``train.log``."""
    found = _DONE_RE.findall(train_log.read_text()) if train_log.is_file() else []
    if not found:
        raise SystemExit(f"error: {train_log} has no '[train] done' line: the training did not finish")
    steps, _, minutes = found[-1]
    return int(steps), float(minutes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-dir", required=True, help="a new run folder for make demo")
    ap.add_argument("--json", required=True, help="report to write")
    args = ap.parse_args(argv)
    demo = Path(args.demo_dir).resolve()
    if (demo / "checkpoints").exists():
        ap.error(f"{demo} already holds a run: give a new folder, so that the whole training is timed")
    repo = Path(__file__).resolve().parents[1]
    machine_before = speed.machine_info()
    start = time.perf_counter()
    status = subprocess.call(["make", "demo", f"DEMO_DIR={demo}"], cwd=repo)
    total = time.perf_counter() - start
    if status:
        print(f"error: make demo exited with {status}", file=sys.stderr)
        return status
    steps, train_min = training_minutes(demo / "train.log")
    report = json.loads((demo / "eval" / "eval.json").read_text())
    train_end = (demo / "checkpoints" / "latest.pt").stat().st_mtime
    eval_wall = (demo / "eval" / "eval.json").stat().st_mtime - train_end
    metrics = report["metrics"]
    rows = [{"name": "make demo, whole command (set-up, training, evaluation, videos)", "seconds": round(total, 1)},
            {"name": f"training ({steps} steps, train.log)", "seconds": round(train_min * 60, 1)},
            {"name": f"evaluation of {metrics['success_rate']['n']} episodes, wall time (videos included)",
             "seconds": round(eval_wall, 1)},
            {"name": "evaluation rollouts alone (eval.json rollout_seconds)",
             "seconds": round(float(report["rollout_seconds"]), 1)}]
    speed.write_benchmark_json(args.json, "make demo", rows, command=" ".join(["python"] + sys.argv),
                               success_rate=metrics["success_rate"]["mean"], score=metrics["score"]["mean"],
                               sampling=report["sampling"], machine_at_start=machine_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
