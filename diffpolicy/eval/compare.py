"""Side-by-side table of evaluation reports that differ in what was evaluated, not where.

Each ``eval.json`` is one row: the checkpoint (its training seed and step),
how it was sampled (sampler and steps, actions per call or temporal
ensembling, fixed noise) and its metrics with 95 % confidence intervals, plus
the success difference to the first row, paired episode by episode (same
seeds: a tighter interval than comparing the two marginal ones). The
rows must share the episode protocol (task, episode seeds, episode length), so
an ablation compares like with like; reports of other seed sets are refused::

    python -m diffpolicy.eval.compare runs/long_seed0/sel_*      # inference options
    python -m diffpolicy.eval.compare runs/*/sel_base            # training options
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from diffpolicy.eval.across_seeds import ReportError, _report_file, read_report, report_cli
from diffpolicy.eval.metrics import mean_ci


def _episodes_protocol(protocol: tuple) -> tuple:
    task, start, n, steps = protocol[:4]
    return task, start, n, steps


def _execution(protocol: tuple) -> str:
    sampler, steps, ta, ensemble, fixed_noise, stride = protocol[4:]
    text = f"{ta} per call" if ensemble is None else f"ensemble m={ensemble:g}, call every {ta}"
    text += f", stride {stride}" if stride > 1 else ""
    return f"{sampler} {steps} | " + text + (", fixed noise" if fixed_noise else "")


def _success_by_seed(report: dict) -> dict[int, float]:
    """Episode seed -> 1.0 / 0.0 (the per-episode records of ``eval.json``)."""
    return {int(e["seed"]): float(bool(e["success"])) for e in report.get("episodes", [])}


def compare(paths: list[str | Path]) -> str:
    """The Markdown table of the reports (in the given order); raises :class:`ReportError`."""
    rows = [read_report(p) for p in paths]
    first = rows[0]
    for row in rows[1:]:
        if _episodes_protocol(row.protocol) != _episodes_protocol(first.protocol):
            raise ReportError(f"{row.path} ran other episodes than {first.path}: "
                              f"{_episodes_protocol(row.protocol)} vs {_episodes_protocol(first.protocol)} "
                              "(task, first seed, episodes, steps)")
    task, start, n, steps = _episodes_protocol(first.protocol)
    lines = [f"### {task}, seeds {start}..{start + n - 1}, {steps} steps", "",
             "| report | training seed | step | sampler | execution | score [95 % CI] | success [95 % CI] "
             "| success - first row, paired [95 % CI] |",
             "|---|---|---|---|---|---|---|---|"]
    folders = [row.path.parent for row in rows]
    common = Path(os.path.commonpath(folders)) if len(set(folders)) > 1 else folders[0].parent
    base = None
    for row, folder in zip(rows, folders):
        report = json.loads(_report_file(Path(row.path)).read_text())
        m = report["metrics"]
        cells = [f"{m[k]['mean']:.3f} [{m[k]['ci_low']:.3f}, {m[k]['ci_high']:.3f}]"
                 for k in ("score", "success_rate")]
        success = _success_by_seed(report)
        if base is None:
            base, diff = success, "-"
        else:
            d = mean_ci([success[k] - base[k] for k in base], lo=-1.0, hi=1.0) \
                if success.keys() == base.keys() else None
            diff = "n/a" if d is None else f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
        cells.append(diff)
        lines.append(f"| {folder.relative_to(common)} | "
                     f"{'?' if row.training_seed is None else row.training_seed} | {row.step} | "
                     f"{_execution(row.protocol)} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return report_cli(argv, __doc__.split("\n\n")[0], compare)


if __name__ == "__main__":
    raise SystemExit(main())
