import math

import numpy as np
import pytest

from diffpolicy.eval.metrics import (format_table, latency_stats, mean_ci, summarize, t_quantile_975,
                                     wilson_ci)
from diffpolicy.eval.rollout import EpisodeResult


def test_mean_ci_uses_student_t():
    x = [0.2, 0.4, 0.6, 0.8]
    m = mean_ci(x)
    half = 3.182 * np.std(x, ddof=1) / 2          # t(0.975, 3) * sd / sqrt(4)
    assert m["mean"] == pytest.approx(0.5)
    assert m["ci_low"] == pytest.approx(0.5 - half) and m["ci_high"] == pytest.approx(0.5 + half)
    assert t_quantile_975(49) == 2.021 and t_quantile_975(499) == 1.96
    wide = mean_ci([0.0, 1.0])                   # clipped to the possible range
    assert wide["ci_low"] == 0.0 and wide["ci_high"] == 1.0


def test_wilson_interval_known_values():
    w = wilson_ci(5, 10)
    assert w["mean"] == 0.5
    assert w["ci_low"] == pytest.approx(0.2366, abs=1e-4) and w["ci_high"] == pytest.approx(0.7634, abs=1e-4)
    zero = wilson_ci(0, 50)
    assert zero["ci_low"] == 0.0 and zero["ci_high"] == pytest.approx(0.0713, abs=1e-4)


def test_latency_and_summary_table():
    lat = latency_stats([0.010] * 19 + [0.030])
    assert lat["median_ms"] == pytest.approx(10.0) and lat["p95_ms"] == pytest.approx(11.0)
    eps = [EpisodeResult(seed=i, max_reward=r, max_coverage=r * 0.95, final_coverage=r * 0.9,
                         success=r >= 1.0, steps=300) for i, r in enumerate([1.0, 0.5, 1.0, 0.7])]
    s = summarize(eps)
    assert s["score"]["mean"] == pytest.approx(0.8) and s["success_rate"]["mean"] == 0.5
    assert s["final_coverage"]["mean"] == pytest.approx(0.72)
    table = format_table(s, {"batch 1": lat}, title="t")
    assert "| score (mean max reward) | 0.800 |" in table and "10.0 ms" in table
    assert math.isnan(latency_stats([])["median_ms"])
