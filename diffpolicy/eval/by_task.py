"""One row per task: evaluation reports of different tasks (e.g. the Meta-World MT10 suite) side by side.

Each ``eval.json`` (written by ``diffpolicy-eval``) is one task's row: its success rate with the
95 % Wilson interval, the mean best reward, the mean episode length and the training time
recorded in the checkpoint; the last row is the unweighted mean over tasks (with the
mean of the success rates' sample s.d. across tasks)::

    python -m diffpolicy.eval.by_task docs/results/metaworld/*/

All reports must share the episode seeds and count (one protocol across tasks); a task
given twice is refused.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from diffpolicy.eval.across_seeds import ReportError, _report_file, report_cli
from diffpolicy.eval.metrics import mean_ci, wilson_ci


def read_task_rows(paths: list[str]) -> list[dict]:
    """``[{task, successes, n, score, steps, minutes, seeds}]``, one per report, checked alike."""
    rows, seen = [], {}
    for p in paths:
        file = _report_file(Path(p))
        try:
            report = json.loads(file.read_text())
            episodes = report["episodes"]
            row = {"task": report["task"], "path": str(file.parent),
                   "successes": sum(bool(e["success"]) for e in episodes), "n": len(episodes),
                   "score": float(report["metrics"]["score"]["mean"]),
                   "steps": sum(e["steps"] for e in episodes) / max(1, len(episodes)),
                   "minutes": report.get("training_minutes"),
                   "seeds": (int(report["config"]["seed_start"]), len(episodes))}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ReportError(f"{file}: not a readable diffpolicy-eval report ({exc})") from None
        if row["task"] in seen:
            raise ReportError(f"{seen[row['task']]} and {row['path']} both evaluate task {row['task']!r}")
        seen[row["task"]] = row["path"]
        if rows and row["seeds"] != rows[0]["seeds"]:
            raise ReportError(f"{row['path']} ran {row['seeds'][1]} episodes from seed {row['seeds'][0]}, "
                              f"{rows[0]['path']} {rows[0]['seeds'][1]} from {rows[0]['seeds'][0]}: "
                              f"one protocol across tasks")
        rows.append(row)
    return rows


def format_task_table(rows: list[dict]) -> str:
    """A Markdown table, one row per task and the mean over tasks."""
    start, n = rows[0]["seeds"]
    lines = [f"### {len(rows)} tasks, episode seeds {start}..{start + n - 1}", "",
             "| task | success | 95 % CI | score (mean best reward) | mean steps | training min |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ci = wilson_ci(r["successes"], r["n"])
        minutes = "-" if r["minutes"] is None else f"{r['minutes']:.1f}"
        lines.append(f"| {r['task']} | {100 * ci['mean']:.0f} % | [{100 * ci['ci_low']:.0f}, "
                     f"{100 * ci['ci_high']:.0f}] | {r['score']:.2f} | {r['steps']:.0f} | {minutes} |")
    rates = mean_ci([r["successes"] / r["n"] for r in rows])
    total = wilson_ci(sum(r["successes"] for r in rows), sum(r["n"] for r in rows))
    lines.append(f"| **mean of {len(rows)} tasks** | **{100 * rates['mean']:.1f} %** | [{100 * total['ci_low']:.1f}, "
                 f"{100 * total['ci_high']:.1f}] (all episodes pooled) | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return report_cli(argv, __doc__.split("\n\n")[0], lambda paths: format_task_table(read_task_rows(paths)))


if __name__ == "__main__":
    sys.exit(main())
