"""Time `diffpolicy-noprop --quick` with an empty speed-choice cache and record it with the machine.

    python benchmarks/time_noprop_quick.py --json docs/results/noprop_quick_<machine>.json [-- key=value ...]

Runs ``diffpolicy-noprop --quick out_dir=<new temporary folder>`` with
``DIFFPOLICY_CACHE`` pointing at another new folder, so every start-up probe
(precision, block layout) runs and is timed with the rows; arguments after
``--`` go to the command (e.g. ``threads=1``).  Writes the wall time of the
whole command, the table's own wall time and each row's training and inference
seconds and chosen precision / layout (from the run's ``results.json``), and
the machine (read before the run, so its load average says what else ran).
The environment is passed on, so ``ATEN_CPU_CAPABILITY`` / ``ONEDNN_MAX_CPU_ISA``
limits apply to the run and are recorded (``machine.isa_limits``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diffpolicy import speed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="report to write")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for diffpolicy-noprop (after --)")
    args = ap.parse_args(argv)
    exe = Path(sys.executable).with_name("diffpolicy-noprop")
    work = Path(tempfile.mkdtemp(prefix="noprop_quick_"))
    out_dir, cache = work / "run", work / "cache"
    command = [str(exe), "--quick", f"out_dir={out_dir}", *args.overrides]
    speed.keep_freed_memory()       # what the command's row processes do, so the record says so
    machine_before = speed.machine_info()
    start = time.perf_counter()
    status = subprocess.call(command, env={**os.environ, "DIFFPOLICY_CACHE": str(cache)})
    total = time.perf_counter() - start
    if status:
        print(f"error: diffpolicy-noprop --quick exited with {status} (run folder kept: {out_dir})",
              file=sys.stderr)
        return status
    results = json.loads((out_dir / "results.json").read_text())
    runs = results.get("runs", [])
    rows = [{"name": "diffpolicy-noprop --quick (whole command, cold speed cache)", "seconds": round(total, 2)},
            {"name": "table wall time (results.json)", "seconds": results.get("table_wall_seconds")}]
    for run in runs:
        rows.append({"name": f"row {run['row']}", "seconds_per_epoch": run.get("seconds_per_epoch"),
                     "infer_seconds": run.get("infer_seconds"), "precision": run.get("precision"),
                     "layout": run.get("layout"), "epochs": run.get("epochs")})
    report = {"benchmark": "diffpolicy-noprop --quick",
              "command": " ".join(["python", *sys.argv]) + f"  (runs: {' '.join(command[1:2] + command[3:])}, "
                         "DIFFPOLICY_CACHE empty)",
              "when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_before,
              "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"[bench] {total:.1f} s for diffpolicy-noprop --quick; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
