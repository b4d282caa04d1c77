"""An evaluation metric against the training step, per training seed."""
import pytest

from diffpolicy.eval.across_seeds import ReportError, read_comparable
from diffpolicy.eval.by_step import best_step, by_step, format_table, main, step_means
from eval_helpers import write_report

# training seed -> {step: success rate}
SUCCESS = {3: {2000: 0.1, 4000: 0.5, 6000: 0.4}, 4: {2000: 0.2, 4000: 0.3, 6000: 0.3}}


def _reports(tmp_path, success=SUCCESS, seed_start=200000):
    return [write_report(tmp_path / f"s{seed}" / f"step{step}", 0.9, value, seed, n_episodes=200, step=step,
                         seed_start=seed_start)
            for seed, values in success.items() for step, value in values.items()]


def test_table_means_and_best_steps(tmp_path):
    table = by_step(read_comparable(_reports(tmp_path)))
    assert table == SUCCESS
    assert step_means(table) == pytest.approx({2000: 0.15, 4000: 0.4, 6000: 0.35})
    assert best_step(table) == {3: 4000, 4: 6000}                 # a tie goes to the later step
    assert by_step(read_comparable(_reports(tmp_path / "again")), "score")[4] == {2000: 0.9, 4000: 0.9, 6000: 0.9}
    text = format_table(table, "success_rate", "protocol")
    assert "| step | seed 3 | seed 4 | mean |" in text
    assert "| 4000 | **0.500** | 0.300 | 0.400 |" in text
    assert "| 6000 | 0.400 | **0.300** | 0.350 |" in text


def test_steps_missing_from_a_seed(tmp_path):
    table = by_step(read_comparable(_reports(tmp_path, {3: {2000: 0.1, 4000: 0.5}, 4: {2000: 0.3}})))
    assert step_means(table) == pytest.approx({2000: 0.2})      # only steps every seed has
    assert "| 4000 | **0.500** | - | - |" in format_table(table, "success_rate", "p")


def test_bad_input(tmp_path):
    paths = _reports(tmp_path)
    with pytest.raises(ReportError, match="unknown metric 'succes'"):
        by_step(read_comparable(paths), "succes")
    twin = write_report(tmp_path / "twin", 0.9, 0.3, 3, n_episodes=200, step=4000, seed_start=200000)
    with pytest.raises(ReportError, match=r"s3/step4000/eval.json and .*twin/eval.json both evaluate training "
                                          r"seed 3 at step 4000"):
        by_step(read_comparable(paths + [twin]))
    anonymous = write_report(tmp_path / "anon", 0.9, 0.3, None, n_episodes=200, seed_start=200000)
    with pytest.raises(ReportError, match="anon/eval.json: the report does not say which training seed"):
        by_step(read_comparable([anonymous]))
    test_seeds = write_report(tmp_path / "test", 0.9, 0.3, 5, n_episodes=200)    # another seed set
    with pytest.raises(ReportError, match="another protocol"):
        read_comparable(paths + [test_seeds])


def test_cli_writes_table_and_plot(tmp_path, capsys):
    paths = [str(p) for p in _reports(tmp_path)]
    assert main(paths + ["--plot", str(tmp_path / "curve.png")]) == 0
    out = capsys.readouterr().out
    assert "### success rate by training step: pusht_keypoints, seeds 200000..200199" in out
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(paths + ["--metric", "nope"]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err
