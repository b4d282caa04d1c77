"""diffpolicy.docs_check: every figure in a marked results table is in a committed report."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from diffpolicy import docs_check
from diffpolicy.docs_check import check_file, figures_in, main

REPO = Path(__file__).resolve().parents[1]


def test_repo_readme_passes():
    problems = check_file(REPO / "README.md", REPO)
    assert problems == [], "\n".join(map(str, problems))
    # the README does have checked tables, and keeps no unmarked table of figures
    assert sum(1 for t in docs_check.parse_tables(REPO / "README.md") if t.sources) >= 3


def test_readme_stays_a_short_guide():
    # details live in docs/; the README is what a newcomer reads first
    assert (REPO / "README.md").stat().st_size < 8 * 1024


def test_marked_tables_in_docs_pass():
    for page in ("docs/policy.md", "docs/speed.md"):
        problems = check_file(REPO / page, REPO, marked_only=True)
        assert problems == [], "\n".join(map(str, problems))


def test_placeholders_are_kept_on_their_own_lines():
    lines = (REPO / "README.md").read_text().splitlines() + (REPO / "docs/speed.md").read_text().splitlines()
    for placeholder in ("@@UNET_TABLE@@", "@@NOPROP_TABLE@@"):
        # Once an engineer fills a placeholder with its table, it is gone; until then it stands alone.
        hits = [line for line in lines if placeholder in line]
        assert all(line == placeholder for line in hits)


def test_module_runs_as_a_command():
    res = subprocess.run([sys.executable, "-m", "diffpolicy.docs_check", str(REPO / "README.md")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "every figure" in res.stdout


def _tiny_repo(tmp_path: Path, table: str, report: dict | None = None) -> Path:
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "run.json").write_text(json.dumps(
        report if report is not None else
        {"score": 0.9375965, "success_rate": 0.64, "speedup_vs_plain": 1.4612, "median_ms": 23.2678,
         "seconds": 0.0333}))
    (tmp_path / "docs" / "results" / "table.md").write_text("| acc |\n|---|\n| 92.45 |\n")
    readme = tmp_path / "README.md"
    readme.write_text("# tiny\n\nSome prose with 0.123 that is not a table.\n\n" + table)
    return readme


def test_fails_on_a_number_in_no_report(tmp_path, capsys):
    readme = _tiny_repo(tmp_path, (
        "<!-- figures: docs/results/run.json -->\n"
        "| policy | score | success |\n|---|---|---|\n"
        "| ours | 0.938 | 64.0 % |\n"
        "| made up | 0.777 | 64.0 % |\n"))
    problems = check_file(readme, tmp_path)
    assert len(problems) == 1
    assert "0.777" in str(problems[0]) and "docs/results/run.json" in str(problems[0])
    assert main([str(readme), "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "0.777" in out and "README.md" in out and "table at line" in out


def test_passes_with_rounding_percent_ratio_and_ms(tmp_path, capsys):
    readme = _tiny_repo(tmp_path, (
        "<!-- figures: docs/results -->\n"
        "| what | value | ratio | time |\n|---|---:|---:|---:|\n"
        "| a | 0.938 [0.94] | 1.46x | 23.3 ms |\n"
        "| b | 64 % | 1.5x | 33.3 ms |\n"
        "| c | **92.45** | 92.5 % | seeds 200000..200199, `v2.14.1`, 12 steps |\n"))
    assert check_file(readme, tmp_path) == []
    assert main([str(readme), "--root", str(tmp_path)]) == 0
    assert "every figure" in capsys.readouterr().out


def test_outside_tables_and_placeholders_are_skipped(tmp_path):
    readme = _tiny_repo(tmp_path, (
        "<!-- figures: outside, see the source column -->\n"
        "| policy | success | source |\n|---|---|---|\n| DOT | 84.5 % | a paper |\n\n"
        "<!-- figures: docs/results/bench_missing.json -->\n"
        "@@UNET_TABLE@@\n\n"
        "| a table after the placeholder, unmarked, without figures |\n|---|\n| 12 |\n"))
    assert check_file(readme, tmp_path) == []


def test_unmarked_table_with_figures_is_reported(tmp_path):
    readme = _tiny_repo(tmp_path, "| what | score |\n|---|---|\n| ours | 0.938 |\n")
    problems = check_file(readme, tmp_path)
    assert len(problems) == 1 and "marker" in str(problems[0])
    assert check_file(readme, tmp_path, marked_only=True) == []


def test_sources_must_exist_under_docs_results(tmp_path):
    readme = _tiny_repo(tmp_path, (
        "<!-- figures: docs/results/nope.json notes/run.json -->\n"
        "| what | score |\n|---|---|\n| ours | 0.938 |\n"))
    messages = " ".join(map(str, check_file(readme, tmp_path)))
    assert "docs/results/nope.json does not exist" in messages
    assert "'notes/run.json' is not under docs/results/" in messages
    assert "0.938" in messages


def test_sign_of_a_difference_counts(tmp_path):
    readme = _tiny_repo(tmp_path, (
        "<!-- figures: docs/results/run.json -->\n"
        "| option | difference |\n|---|---|\n| x | -0.938 |\n"))
    problems = check_file(readme, tmp_path)
    assert len(problems) == 1 and "-0.938" in str(problems[0])


def test_figures_in_reads_what_a_reader_reads():
    figs = figures_in("| sel | 0.938 [0.907, 0.968] | 64.0 % [57.1, 70.3] | +0.025 [-0.060, +0.110] "
                      "| 1.46x | 0.90-0.95 | 12,035 | 2.14.1 | 1e-3 | 500 x 6 | 23.3 ms |")
    got = [(f.text, str(f.value), f.kind) for f in figs]
    assert got == [
        ("0.938", "0.938", "decimal"), ("0.907", "0.907", "decimal"), ("0.968", "0.968", "decimal"),
        ("64.0 %", "64.0", "percent"), ("57.1", "57.1", "percent"), ("70.3", "70.3", "percent"),
        ("+0.025", "0.025", "decimal"), ("-0.060", "-0.060", "decimal"), ("+0.110", "0.110", "decimal"),
        ("1.46x", "1.46", "ratio"), ("0.90", "0.90", "decimal"), ("0.95", "0.95", "decimal"),
        ("23.3 ms", "23.3", "decimal"),
    ]


def test_named_reports_must_be_tracked_by_git(tmp_path):
    readme = _tiny_repo(tmp_path, (
        "<!-- figures: docs/results/run.json docs/results/scratch.json -->\n"
        "| what | score |\n|---|---|\n| ours | 0.938 |\n"))
    (tmp_path / "docs" / "results" / "scratch.json").write_text('{"x": 0.5}')
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "docs/results/run.json"], check=True)
    messages = " ".join(map(str, check_file(readme, tmp_path)))
    assert "docs/results/scratch.json is not committed" in messages
    assert "0.938" not in messages                      # found in the tracked report
    assert check_file(readme, tmp_path, require_committed=False) == []
