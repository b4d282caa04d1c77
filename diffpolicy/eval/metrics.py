"""Summary statistics of an evaluation, with 95 % confidence intervals.

* score (mean over episodes of the max reward, the paper's number), mean max
  coverage and mean final coverage: mean +- t(0.975, n-1) * sd / sqrt(n);
* success rate: the Wilson score interval (well behaved near 0 and 1);
* latency of policy calls: median and 95th percentile;
* the sampling settings a report's numbers were measured with.

Numpy only, so that reading reports (``across_seeds``) does not load torch.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

# Two-sided 95 % Student-t quantiles t(0.975, df) (SciPy-free); df > 120 uses 1.96.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042,
         40: 2.021, 50: 2.009, 60: 2.000, 80: 1.990, 100: 1.984, 120: 1.980}


def t_quantile_975(df: int) -> float:
    """t(0.975, df), from the table above (the next smaller tabulated df: conservative)."""
    if df < 1:
        return float("nan")
    if df > 120:
        return 1.960
    return _T975[max(k for k in _T975 if k <= df)]


def mean_ci(values: list[float] | np.ndarray, lo: float = 0.0, hi: float = 1.0) -> dict[str, float]:
    """``{mean, ci_low, ci_high, std, n}`` with a t-based 95 % interval for the mean,
    clipped to the values' possible range ``[lo, hi]``."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    half = t_quantile_975(n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "ci_low": max(lo, mean - half), "ci_high": min(hi, mean + half),
            "std": sd, "n": n}


def wilson_ci(successes: int, n: int, z: float = 1.96) -> dict[str, float]:
    """``{mean, ci_low, ci_high, n}`` for a proportion (Wilson score interval)."""
    if n == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {"mean": p, "ci_low": max(0.0, centre - half), "ci_high": min(1.0, centre + half), "n": n}


def latency_stats(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """``{median_ms, p95_ms, mean_ms, n}`` of per-call wall times."""
    x = np.asarray(seconds, dtype=float) * 1e3
    if not len(x):
        return {"median_ms": float("nan"), "p95_ms": float("nan"), "mean_ms": float("nan"), "n": 0}
    return {"median_ms": float(np.median(x)), "p95_ms": float(np.percentile(x, 95)),
            "mean_ms": float(x.mean()), "n": int(len(x))}


def sampling_settings(eval_config: dict, policy_config: dict) -> dict[str, Any]:
    """The sampler, its step count and actions per call an evaluation used.

    Each comes from the evaluation's config where it was set there, else from
    the checkpoint's ``policy_config`` (a dict, as stored in the checkpoint).
    With temporal ensembling (``temporal_ensemble`` set) the settings also hold
    ``temporal_ensemble`` (m) and ``replan_every`` (default 1), and
    ``n_action_steps`` is ``replan_every``: the env steps per policy call.
    ``fixed_noise`` appears (True) only when the evaluation set it; ``action_stride``
    only when it is not 1 (set by the evaluation or stored in the checkpoint) and no
    ensembling replaces the receding horizon it applies to.
    """
    settings = {key: eval_config.get(key) or policy_config[key]
                for key in ("sampler", "num_inference_steps", "n_action_steps")}
    stride = eval_config.get("action_stride") or policy_config.get("action_stride", 1)
    if eval_config.get("temporal_ensemble") is not None:
        replan = eval_config.get("replan_every") or 1
        settings.update(n_action_steps=replan, temporal_ensemble=float(eval_config["temporal_ensemble"]),
                        replan_every=replan)
        stride = 1
    if eval_config.get("fixed_noise"):
        settings["fixed_noise"] = True
    if stride != 1:
        settings["action_stride"] = int(stride)
    return settings


def summarize(episodes) -> dict[str, dict[str, float]]:
    """Metrics of a list of :class:`~diffpolicy.eval.rollout.EpisodeResult`.

    The score's interval is clipped to [0, 1] widened to the rewards seen (Push-T's lie in
    [0, 1]; other envs' may not); the coverage metrics appear only when every episode
    has one (envs reporting ``info["coverage"]``, such as Push-T).
    """
    rewards = [e.max_reward for e in episodes]
    summary = {
        "score": mean_ci(rewards, lo=min([0.0, *rewards]), hi=max([1.0, *rewards])),
        "success_rate": wilson_ci(sum(bool(e.success) for e in episodes), len(episodes)),
    }
    if episodes and all(e.max_coverage is not None for e in episodes):
        summary["max_coverage"] = mean_ci([e.max_coverage for e in episodes])
        summary["final_coverage"] = mean_ci([e.final_coverage for e in episodes])
    return summary


def format_table(summary: dict[str, dict[str, float]], latency: dict[str, dict[str, float]] | None = None,
                 title: str = "") -> str:
    """A Markdown table of :func:`summarize`'s metrics (and latencies, if given)."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| metric | mean | 95% CI | n |", "|---|---|---|---|"]
    names = {"score": "score (mean max reward)", "success_rate": "success rate",
             "max_coverage": "mean max coverage", "final_coverage": "mean final coverage"}
    for key, label in names.items():
        if key not in summary:
            continue
        m = summary[key]
        lines.append(f"| {label} | {m['mean']:.3f} | [{m['ci_low']:.3f}, {m['ci_high']:.3f}] | {m['n']} |")
    for key, lat in (latency or {}).items():
        lines.append(f"| latency {key}: median / p95 | {lat['median_ms']:.1f} ms | "
                     f"p95 {lat['p95_ms']:.1f} ms | {lat['n']} |")
    return "\n".join(lines)
