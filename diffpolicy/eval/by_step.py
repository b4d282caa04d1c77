"""How the evaluation of a run's checkpoints moves with the training step.

Training with ``training.eval_every`` keeps checkpoints of several steps
(``checkpoints/best_step*.pt``).  Evaluate each on a seed set of its own,
disjoint from the test seeds, then tabulate (and plot) one metric against the
step, one column per training seed and their mean::

    for ck in runs/long_seed3/checkpoints/best_step*.pt; do
      diffpolicy-eval checkpoint=$ck seed_start=200000 n_episodes=200 output_dir=runs/long_seed3/heldout/$(basename $ck .pt)
    done
    python -m diffpolicy.eval.by_step runs/long_seed*/heldout/* --plot success_by_step.png

All reports must share one protocol (task, episode seeds, sampler), as in
``across_seeds``.  ``best_step`` picks each run's checkpoint by this table:
choosing on the test seeds themselves would overstate the result.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from diffpolicy.eval.across_seeds import METRICS, EvalRow, ReportError, describe, first_twins, read_comparable

LABELS = {"score": "score (mean max reward)", "success_rate": "success rate",
          "max_coverage": "max coverage", "final_coverage": "final coverage"}


def by_step(rows: list[EvalRow], metric: str = "success_rate") -> dict[int, dict[int, float]]:
    """``{training seed: {step: metric}}`` from reports of one protocol (``read_comparable``).

    Raises :class:`ReportError` for an unknown metric, a report without a training seed, or
    two reports of the same seed and step.
    """
    if metric not in METRICS:
        raise ReportError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    for row in rows:
        if row.training_seed is None:
            raise ReportError(f"{row.path}: the report does not say which training seed it comes from")
    twins = first_twins(rows, lambda r: (r.training_seed, r.step))
    if twins:
        a, b = twins
        raise ReportError(f"{a.path} and {b.path} both evaluate training seed {b.training_seed} at step {b.step}")
    table: dict[int, dict[int, float]] = {}
    for row in rows:
        table.setdefault(row.training_seed, {})[row.step] = row.metrics[metric]
    return dict(sorted(table.items()))


def best_step(table: dict[int, dict[int, float]]) -> dict[int, int]:
    """Each training seed's step with the highest metric (the later step on a tie)."""
    return {seed: max(values, key=lambda step: (values[step], step)) for seed, values in table.items()}


def step_means(table: dict[int, dict[int, float]]) -> dict[int, float]:
    """Mean over training seeds of each step that every seed has."""
    common = sorted(set.intersection(*(set(v) for v in table.values())))
    return {step: float(np.mean([values[step] for values in table.values()])) for step in common}


def format_table(table: dict[int, dict[int, float]], metric: str, protocol: str) -> str:
    """Markdown: one row per step, one column per training seed, then the mean; the best step
    of each seed in bold."""
    seeds, best, means = list(table), best_step(table), step_means(table)
    steps = sorted(set().union(*(set(v) for v in table.values())))
    lines = [f"### {LABELS[metric]} by training step: {protocol}", "",
             "| step | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
             "|---" * (len(seeds) + 2) + "|"]
    for step in steps:
        cells = []
        for seed in seeds:
            value = table[seed].get(step)
            text = "-" if value is None else f"{value:.3f}"
            cells.append(f"**{text}**" if best[seed] == step else text)
        mean = f"{means[step]:.3f}" if step in means else "-"
        lines.append(f"| {step} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


def plot(table: dict[int, dict[int, float]], metric: str, path: str | Path, title: str = "") -> Path:
    """One line per training seed and the mean over seeds, against the step."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for seed, values in table.items():
        steps = sorted(values)
        ax.plot(steps, [values[s] for s in steps], "o-", lw=1, alpha=0.6, label=f"training seed {seed}")
    means = step_means(table)
    if len(table) > 1 and means:
        ax.plot(list(means), list(means.values()), "k-", lw=2.5, label="mean")
    ax.set_xlabel("training step"); ax.set_ylabel(LABELS[metric]); ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3); ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="eval.json files or the folders holding them")
    parser.add_argument("--metric", default="success_rate", help=f"one of {', '.join(METRICS)}")
    parser.add_argument("--plot", help="also write the curves to this PNG")
    args = parser.parse_args(argv)
    try:
        rows = read_comparable(args.reports)
        table = by_step(rows, args.metric)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    protocol = describe(rows[0].protocol)
    print(format_table(table, args.metric, protocol))
    if args.plot:
        print(f"plot: {plot(table, args.metric, args.plot, protocol)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
