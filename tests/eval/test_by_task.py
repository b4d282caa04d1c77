"""The per-task table: one row per task's report, the mean over tasks, refusals."""
import json

import pytest

from diffpolicy.eval.across_seeds import ReportError
from diffpolicy.eval.by_task import format_task_table, main, read_task_rows


def _report(folder, task, successes, seed_start=100000, minutes=4.5):
    folder.mkdir(parents=True)
    episodes = [{"seed": seed_start + i, "success": ok, "steps": 40 if ok else 300} for i, ok in enumerate(successes)]
    report = {"task": task, "config": {"seed_start": seed_start}, "training_minutes": minutes,
              "metrics": {"score": {"mean": 9.5}}, "episodes": episodes}
    (folder / "eval.json").write_text(json.dumps(report))
    return str(folder)


def test_rows_cis_and_the_mean_over_tasks(tmp_path):
    a = _report(tmp_path / "a", "metaworld_reach-v3", [True] * 10)
    b = _report(tmp_path / "b", "metaworld_push-v3", [True] * 8 + [False] * 2, minutes=None)
    rows = read_task_rows([a, b])
    assert [(r["successes"], r["n"]) for r in rows] == [(10, 10), (8, 10)]
    table = format_task_table(rows)
    assert "| metaworld_reach-v3 | 100 % | [72, 100] | 9.50 | 40 | 4.5 |" in table
    assert "| metaworld_push-v3 | 80 % | [49, 94] | 9.50 | 92 | - |" in table
    assert "**mean of 2 tasks** | **90.0 %**" in table
    assert main([a, b]) == 0


def test_other_seeds_or_a_task_twice_are_refused(tmp_path, capsys):
    a = _report(tmp_path / "a", "t1", [True] * 4)
    with pytest.raises(ReportError, match="one protocol across tasks"):
        read_task_rows([a, _report(tmp_path / "b", "t2", [True] * 4, seed_start=200000)])
    with pytest.raises(ReportError, match="both evaluate task 't1'"):
        read_task_rows([a, _report(tmp_path / "c", "t1", [True] * 4)])
    assert main([str(tmp_path / "missing")]) == 2 and "not a readable diffpolicy-eval report" in capsys.readouterr().err
