"""Mean and spread of evaluation reports over training seeds.

One training run is one sample: its ``eval.json`` (written by
``diffpolicy-eval``) gives a score and a success rate on a seed set. This
module reads several reports of the same protocol (same task, episode seeds,
sampler) and prints one row per report plus the mean +- sample s.d. across
them::

    python -m diffpolicy.eval.across_seeds runs/long_seed*/eval
    python -m diffpolicy.eval.across_seeds runs/long_seed*/eval500

Reports of different protocols are refused rather than averaged: a mean over
a 50-episode and a 500-episode evaluation would not mean anything.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

from diffpolicy.eval.metrics import mean_ci, sampling_settings

METRICS = ("score", "success_rate", "max_coverage", "final_coverage")


class ReportError(ValueError):
    """A path that is not a readable ``diffpolicy-eval`` report, or reports that cannot be compared."""


@dataclass(frozen=True)
class EvalRow:
    """The headline numbers of one ``eval.json``."""
    path: Path
    training_seed: int | None
    step: int
    protocol: tuple        # (task, first seed, n_episodes, max_steps, sampler, steps, actions per call,
                           #  temporal-ensemble m or None, fixed noise per episode, action stride)
    metrics: dict[str, float]


def _report_file(path: Path) -> Path:
    return path / "eval.json" if path.is_dir() else path


def _seed_from_run_config(checkpoint: str | None) -> int | None:
    """The training seed in ``<run>/config.yaml`` beside ``<run>/checkpoints/<name>.pt``, if there
    (reports written before ``training_seed`` was stored in them)."""
    if not checkpoint:
        return None
    run_config = Path(checkpoint).parent.parent / "config.yaml"
    if not run_config.is_file():
        return None
    from omegaconf import OmegaConf  # noqa: PLC0415

    return OmegaConf.load(run_config).get("seed")


def read_report(path: str | Path) -> EvalRow:
    """Read one ``eval.json`` (or the folder holding it)."""
    file = _report_file(Path(path))
    if not file.is_file():
        raise ReportError(f"{file}: no such evaluation report (run diffpolicy-eval first)")
    try:
        report = json.loads(file.read_text())
        cfg, pc = report["config"], report["policy_config"]
        metrics = {m: float(report["metrics"][m]["mean"]) if m in report["metrics"] else float("nan")
                   for m in METRICS}            # coverage: only envs that report it (Push-T)
        # reports written before eval.json stored "sampling" get it rebuilt the same way
        sampling = report.get("sampling") or sampling_settings(cfg, pc)
        protocol = (report["task"], int(cfg["seed_start"]), int(cfg["n_episodes"]), int(cfg["max_steps"]),
                    sampling["sampler"], int(sampling["num_inference_steps"]), int(sampling["n_action_steps"]),
                    sampling.get("temporal_ensemble"), bool(sampling.get("fixed_noise", False)),
                    int(sampling.get("action_stride", 1)))
        seed = (report["training_seed"] if "training_seed" in report
                else _seed_from_run_config(report.get("checkpoint")))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{file}: not a diffpolicy-eval report ({type(exc).__name__}: {exc})") from None
    return EvalRow(file, None if seed is None else int(seed), int(report["step"]), protocol, metrics)


def read_comparable(paths: list[str | Path]) -> list[EvalRow]:
    """Read reports that share one protocol; raises :class:`ReportError` otherwise."""
    if not paths:
        raise ReportError("no evaluation reports given")
    rows = [read_report(p) for p in paths]
    first = rows[0]
    for row in rows[1:]:
        if row.protocol != first.protocol:
            raise ReportError(f"{row.path} was evaluated with another protocol than {first.path}: "
                              f"{describe(row.protocol)} vs {describe(first.protocol)}")
    return rows


def first_twins(rows: list[EvalRow], key: Callable[[EvalRow], Hashable]) -> tuple[EvalRow, EvalRow] | None:
    """The first two rows with the same ``key``, or None when every key is distinct."""
    seen: dict[Hashable, EvalRow] = {}
    for row in rows:
        twin = seen.setdefault(key(row), row)
        if twin is not row:
            return twin, row
    return None


def across_seeds(paths: list[str | Path]) -> tuple[list[EvalRow], dict[str, tuple[float, float]]]:
    """Rows of the reports and ``{metric: (mean, sample s.d.)}`` across them.

    Raises :class:`ReportError` if a report is unreadable, the protocols differ, or two reports
    come from the same training seed.
    """
    rows = read_comparable(paths)
    twins = first_twins([r for r in rows if r.training_seed is not None], lambda r: r.training_seed)
    if twins:
        a, b = twins
        raise ReportError(f"{a.path} (step {a.step}) and {b.path} (step {b.step}) both come from "
                          f"training seed {b.training_seed}: a mean over training seeds takes one report "
                          "per seed (python -m diffpolicy.eval.by_step compares the checkpoints of a run)")
    stats = {}
    for m in METRICS:
        ci = mean_ci([r.metrics[m] for r in rows])
        stats[m] = (ci["mean"], ci["std"] if len(rows) > 1 else float("nan"))   # no spread from one run
    return rows, stats


def describe(protocol: tuple) -> str:
    task, start, n, steps, sampler, k, ta, ensemble, fixed_noise, stride = protocol
    calls = f"{ta} actions per call" if ensemble is None else \
        f"temporal ensemble m={ensemble:g}, a call every {ta} steps"
    calls += f", action stride {stride}" if stride > 1 else ""
    calls += ", fixed noise per episode" if fixed_noise else ""
    return f"{task}, seeds {start}..{start + n - 1}, {steps} steps, {sampler} {k}, {calls}"


def format_rows(rows: list[EvalRow], stats: dict[str, tuple[float, float]]) -> str:
    """A Markdown table: one line per report, then mean +- s.d."""
    lines = [f"### {describe(rows[0].protocol)}", "",
             "| report | training seed | step | score | success | max coverage | final coverage |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        seed = "?" if r.training_seed is None else str(r.training_seed)
        lines.append(f"| {r.path} | {seed} | {r.step} | " +
                     " | ".join(f"{r.metrics[m]:.3f}" for m in METRICS) + " |")
    lines.append(f"| **mean +- s.d. ({len(rows)} runs)** | | | " +
                 " | ".join(f"{mu:.3f} +- {sd:.3f}" for mu, sd in stats.values()) + " |")
    return "\n".join(lines)


def report_cli(argv: list[str] | None, description: str, render: Callable[[list[str]], str]) -> int:
    """``prog REPORT...``: print ``render(reports)``; a :class:`ReportError` is one line, exit 2."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("reports", nargs="+", help="eval.json files or the folders holding them")
    args = parser.parse_args(argv)
    try:
        text = render(args.reports)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    return report_cli(argv, __doc__.split("\n\n")[0], lambda paths: format_rows(*across_seeds(paths)))


if __name__ == "__main__":
    sys.exit(main())
