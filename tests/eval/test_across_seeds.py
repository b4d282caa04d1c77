"""Mean and spread of evaluation reports over training seeds."""
import json
import subprocess
import sys

import pytest

from diffpolicy.eval.across_seeds import ReportError, across_seeds, main, read_report
from diffpolicy.eval.evaluate import evaluate
from eval_helpers import write_report


def test_mean_and_sample_sd_over_runs(tmp_path):
    paths = [write_report(tmp_path / f"s{i}", score, success, i)
             for i, (score, success) in enumerate([(0.90, 0.60), (1.00, 0.80), (0.95, 0.70)])]
    rows, stats = across_seeds(paths)
    assert [r.training_seed for r in rows] == [0, 1, 2]
    assert stats["score"] == pytest.approx((0.95, 0.05))                       # sample s.d. (ddof=1)
    assert stats["success_rate"] == pytest.approx((0.70, 0.10))
    assert stats["final_coverage"][0] == pytest.approx(0.85)


def test_reads_a_real_report(keypoints_ckpt, tmp_path):
    evaluate(dict(checkpoint=str(keypoints_ckpt), task=None, n_episodes=2, seed_start=100000, max_steps=8,
                  n_envs=50, use_ema=True, sampler=None, num_inference_steps=None, sampling_seed=0,
                  device="cpu", output_dir=str(tmp_path / "ev"), n_videos=0, video_format="gif",
                  latency_calls=0, num_threads=None))
    row = read_report(tmp_path / "ev")
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert row.training_seed == 3 and row.step == 7
    assert row.protocol == ("pusht_keypoints", 100000, 2, 8, "ddim", 3, 8, None, False, 1)
    assert row.metrics["score"] == saved["metrics"]["score"]["mean"]
    saved["sampling"]["num_inference_steps"] = 5         # the stored settings win over the rebuilt ones
    (tmp_path / "ev" / "eval.json").write_text(json.dumps(saved))
    assert read_report(tmp_path / "ev").protocol == ("pusht_keypoints", 100000, 2, 8, "ddim", 5, 8, None, False, 1)


def test_different_protocols_are_refused(tmp_path):
    a = write_report(tmp_path / "a", 0.9, 0.6, 0)
    b = write_report(tmp_path / "b", 0.9, 0.6, 1, n_episodes=500)
    with pytest.raises(ReportError, match=r"b/eval.json was evaluated with another protocol .*seeds 100000..100499"):
        across_seeds([a, b])
    c = write_report(tmp_path / "c", 0.9, 0.6, 1, num_inference_steps=20)   # same seeds, other sampler steps
    with pytest.raises(ReportError, match="ddim 20, 8 actions per call vs .*ddim 10"):
        across_seeds([a, c])
    d = write_report(tmp_path / "d", 0.9, 0.6, 1, temporal_ensemble=0.01)   # ensembled, replan every step
    with pytest.raises(ReportError, match="8 actions per call vs .*temporal ensemble m=0.01, a call every 1 steps"):
        across_seeds([d, a])


def test_bad_paths(tmp_path):
    with pytest.raises(ReportError, match="no such evaluation report"):
        read_report(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "eval.json").write_text("{not json")
    with pytest.raises(ReportError, match="not a diffpolicy-eval report"):
        read_report(tmp_path / "bad")
    (tmp_path / "other.json").write_text(json.dumps({"metrics": {}}))
    with pytest.raises(ReportError, match="other.json: not a diffpolicy-eval report .*KeyError"):
        read_report(tmp_path / "other.json")
    with pytest.raises(ReportError, match="no evaluation reports given"):
        across_seeds([])


def test_cli(tmp_path, capsys):
    paths = [str(write_report(tmp_path / f"s{i}", 0.9 + 0.05 * i, 0.6, i)) for i in range(2)]
    assert main(paths) == 0
    out = capsys.readouterr().out
    assert "| **mean +- s.d. (2 runs)** | | | 0.925 +- 0.035 | 0.600 +- 0.000 |" in out
    assert main([str(tmp_path / "none")]) == 2
    assert "error: " in (err := capsys.readouterr().err) and "no such evaluation report" in err


def test_older_report_takes_the_seed_from_the_run_config(tmp_path):
    """Reports written before ``training_seed`` was stored: the run's config.yaml gives it."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 5\ntask:\n  name: pusht_keypoints\n")
    folder = write_report(run / "eval", 0.9, 0.6, seed=None)
    report = json.loads((folder / "eval.json").read_text())
    assert "training_seed" not in report
    report["checkpoint"] = str(run / "checkpoints" / "latest.pt")
    (folder / "eval.json").write_text(json.dumps(report))
    assert read_report(folder).training_seed == 5
    report["checkpoint"] = str(tmp_path / "elsewhere" / "checkpoints" / "latest.pt")   # no config.yaml there
    (folder / "eval.json").write_text(json.dumps(report))
    assert read_report(folder).training_seed is None


def test_reading_reports_does_not_load_torch():
    """The summary tools only read JSON: they must not pay for importing torch and the rollout stack."""
    code = "import sys, diffpolicy.eval.across_seeds, diffpolicy.eval.by_step; print(sorted(m for m in ('torch', 'pymunk') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_two_reports_of_one_training_seed_are_refused(tmp_path):
    a = write_report(tmp_path / "a", 0.9, 0.6, 3, step=14000)
    b = write_report(tmp_path / "b", 0.9, 0.7, 3)
    with pytest.raises(ReportError, match=r"a/eval.json \(step 14000\) and .*b/eval.json \(step 16000\) both "
                                          r"come from training seed 3.*by_step"):
        across_seeds([a, b])
    c = write_report(tmp_path / "c", 0.9, 0.7, None)          # seed unknown: cannot tell, so allowed
    d = write_report(tmp_path / "d", 0.9, 0.7, None)
    assert len(across_seeds([a, c, d])[0]) == 3
