"""python -m diffpolicy.eval.compare: one row per report with CIs; other episode sets refused."""
import pytest

from diffpolicy.eval.across_seeds import ReportError
from diffpolicy.eval.compare import compare, main

from eval_helpers import write_report


def test_rows_keep_the_order_and_show_the_sampling(tmp_path):
    a = write_report(tmp_path / "base", 0.94, 0.64, 0, n_episodes=200, seed_start=200000)
    b = write_report(tmp_path / "ens", 0.90, 0.44, 0, n_episodes=200, seed_start=200000, temporal_ensemble=0.01)
    c = write_report(tmp_path / "ddim16", 0.95, 0.66, 0, n_episodes=200, seed_start=200000, num_inference_steps=16)
    lines = compare([a, b, c]).splitlines()
    assert lines[0] == "### pusht_keypoints, seeds 200000..200199, 300 steps"
    assert lines[4].startswith("| base | 0 | 16000 | ddim 10 | 8 per call | 0.940 [0.940, 0.940] | 0.640")
    assert lines[4].endswith("| - |")
    assert "| ens | 0 | 16000 | ddim 10 | ensemble m=0.01, call every 1 |" in lines[5]
    assert "| ddim16 | 0 | 16000 | ddim 16 | 8 per call |" in lines[6]


def test_other_episodes_are_refused(tmp_path, capsys):
    a = write_report(tmp_path / "a", 0.94, 0.64, 0, n_episodes=200, seed_start=200000)
    b = write_report(tmp_path / "b", 0.94, 0.64, 0, n_episodes=500)
    with pytest.raises(ReportError, match="ran other episodes than"):
        compare([a, b])
    assert main([str(a), str(b)]) == 2
    assert "error:" in capsys.readouterr().err


def test_success_difference_is_paired_by_episode_seed(tmp_path):
    a = write_report(tmp_path / "a", 0.9, 0.5, 0, n_episodes=4, successes=[1, 1, 0, 0])
    b = write_report(tmp_path / "b", 0.9, 0.25, 0, n_episodes=4, successes=[1, 0, 0, 0])
    c = write_report(tmp_path / "c", 0.9, 0.5, 0, n_episodes=4, successes=[0, 0, 1, 1])
    lines = compare([a, b, c]).splitlines()
    assert lines[5].split("|")[-2].strip().startswith("-0.250 [")
    assert lines[6].split("|")[-2].strip().startswith("+0.000 [-1.000, +1.000]")   # same rate, other episodes
