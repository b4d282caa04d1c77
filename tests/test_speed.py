"""Fast paths chosen by measurement (diffpolicy.speed): choice, cache, override, RNG."""
from __future__ import annotations

import json
import os
import platform
import sys
import time

import pytest
import torch

from diffpolicy import speed


def _sleepy(seconds: float):
    def fn():
        time.sleep(seconds)
    return fn


def test_choose_keeps_the_fastest_and_caches_it(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFPOLICY_CACHE", str(tmp_path))
    logs = []
    first = speed.choose("probe A", {"plain": _sleepy(0.03), "fast": _sleepy(0.0)}, log=logs.append)
    assert first == "fast"
    assert "measured" in logs[0] and "fast" in logs[0]
    cached = json.loads((tmp_path / speed.CACHE_FILE).read_text())
    entry = cached[speed.machine_key()]["probe A"]
    assert entry["choice"] == "fast" and entry["seconds"]["plain"] > entry["seconds"]["fast"]
    assert entry["machine"]["torch"] == torch.__version__ and entry["machine"]["cpu_model"]
    # the cache answers the next time, even if the timings would now say otherwise
    calls = []
    again = speed.choose("probe A", {"plain": lambda: calls.append(1), "fast": _sleepy(0.03)}, log=None)
    assert again == "fast" and not calls


def test_choose_override_and_bad_override(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFPOLICY_CACHE", str(tmp_path))
    fns = {"plain": _sleepy(0.02), "fast": _sleepy(0.0)}
    assert speed.choose("probe B", fns, override="plain", log=None) == "plain"
    assert not (tmp_path / speed.CACHE_FILE).exists()          # nothing measured
    with pytest.raises(ValueError, match=r"probe B: unknown choice 'turbo'; expected 'auto' or one of"):
        speed.choose("probe B", fns, override="turbo", log=None)


def test_damaged_cache_is_measured_again(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFPOLICY_CACHE", str(tmp_path))
    (tmp_path / speed.CACHE_FILE).write_text("{not json")
    assert speed.choose("probe C", {"slow": _sleepy(0.02), "quick": _sleepy(0.0)}, log=None) == "quick"
    assert "probe C" in json.loads((tmp_path / speed.CACHE_FILE).read_text())[speed.machine_key()]


def test_probing_does_not_move_the_random_stream(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFPOLICY_CACHE", str(tmp_path))
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    speed.choose("probe D", {"a": lambda: torch.rand(100), "b": lambda: torch.randn(100)}, log=None)
    assert torch.equal(torch.rand(4), expected)


def test_bf16_native_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(speed, "cpu_flags", lambda: {"avx2", "fma"})
    assert not speed.bf16_native("cpu")
    monkeypatch.setattr(speed, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert speed.bf16_native("cpu")
    monkeypatch.setattr(speed, "cpu_flags", lambda: {"amx_tile", "amx_bf16"})
    assert speed.bf16_native("cpu")


def test_bf16_is_not_native_when_torch_or_onednn_is_held_below_avx512(monkeypatch):
    """ATEN_CPU_CAPABILITY=avx2 / ONEDNN_MAX_CPU_ISA=AVX2 (how an AVX2-only CPU is emulated)."""
    monkeypatch.setattr(speed, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(speed, "cpu_capability", lambda: "AVX2")
    assert not speed.bf16_native("cpu")
    monkeypatch.setattr(speed, "cpu_capability", lambda: "AVX512")
    assert speed.bf16_native("cpu")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not speed.bf16_native("cpu")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert speed.bf16_native("cpu")


def test_machine_info_names_what_a_result_needs():
    info = speed.machine_info()
    for key in ("cpu_model", "cpu_capability", "isa_flags", "cores", "torch", "threads", "load_average"):
        assert key in info
    assert info["threads"] == torch.get_num_threads()


def test_an_isa_limit_is_recorded_and_keys_its_own_cache_entry(monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    free = speed.machine_key()
    assert speed.machine_info()["isa_limits"] == {}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert speed.machine_info()["isa_limits"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert speed.machine_key() == free + " | ONEDNN_MAX_CPU_ISA=AVX2"


def test_a_tie_keeps_the_reference(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFPOLICY_CACHE", str(tmp_path))
    monkeypatch.setattr(speed, "time_interleaved", lambda fns, *a, **k: {"plain": 1.00, "fast": 0.99})
    assert speed.choose("probe E", {"plain": lambda: None, "fast": lambda: None}, log=None) == "plain"
    monkeypatch.setattr(speed, "time_interleaved", lambda fns, *a, **k: {"plain": 1.00, "fast": 0.90})
    assert speed.choose("probe F", {"plain": lambda: None, "fast": lambda: None}, log=None) == "fast"


def test_benchmark_json_holds_rows_ratio_and_machine(tmp_path):
    import numpy as np
    out = tmp_path / "b.json"
    row = speed.speed_row("train fast", 0.5, 1.0, part="train", default=True, extra=np.float32(2.5))
    speed.write_benchmark_json(out, "bench_x", [row], command="bench_x --json b.json")
    report = json.loads(out.read_text())
    assert report["benchmark"] == "bench_x" and report["command"] == "bench_x --json b.json"
    assert report["rows"][0]["speedup_vs_plain"] == 2.0 and report["rows"][0]["extra"] == 2.5
    for key in ("cpu_model", "cpu_capability", "isa_flags", "torch", "threads", "load_average"):
        assert key in report["machine"]


def test_gpu_check_refuses_a_missing_gpu_with_a_clear_message():
    import subprocess
    import sys
    from pathlib import Path
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    r = subprocess.run([sys.executable, str(script), "--device", "cuda"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
    assert "--device cuda but torch sees no CUDA device" in r.stderr


def test_time_test_suite_records_counts_status_and_machine(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "time_test_suite.py"
    tests = tmp_path / "test_sample.py"
    tests.write_text("import pytest\n\ndef test_a():\n    pass\n\ndef test_b():\n    pytest.skip('no')\n\n"
                     "def test_c():\n    assert False\n")
    out = tmp_path / "suite.json"
    r = subprocess.run([sys.executable, str(script), "--json", str(out), "--", str(tests)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr          # pytest's status: one test failed
    report = json.loads(out.read_text())
    row = report["rows"][0]
    assert (row["passed"], row["skipped"], row["failed"], row["exit_status"]) == (1, 1, 1, 1)
    assert row["seconds"] > 0 and "cpu_model" in report["machine"] and "load_average" in report["machine_at_start"]


def test_time_make_demo_reads_the_training_time_and_refuses_an_existing_run(tmp_path):
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "time_make_demo.py"
    spec = importlib.util.spec_from_file_location("time_make_demo", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    log = tmp_path / "train.log"
    log.write_text("2026-11-28 [train] done: step 4000/9000, loss 0.05, 3.1 min; checkpoint x\n"
                   "2026-11-28 [train] done: step 9000/9000, loss 0.0312, 8.0 min; checkpoint x\n")
    assert module.training_minutes(log) == (9000, 8.0)
    log.write_text("[train] pusht_keypoints: 206 episodes\n")
    with pytest.raises(SystemExit, match="no '\\[train\\] done' line"):
        module.training_minutes(log)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    r = subprocess.run([sys.executable, str(script), "--demo-dir", str(tmp_path / "run"), "--json",
                        str(tmp_path / "t.json")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "already holds a run" in r.stderr


def test_time_noprop_quick_passes_overrides_and_reports_a_failed_run(tmp_path):
    """A bad override reaches diffpolicy-noprop, which refuses it: the script exits non-zero, no report."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "time_noprop_quick.py"
    out = tmp_path / "quick.json"
    r = subprocess.run([sys.executable, str(script), "--json", str(out), "--", "no_such_key=1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "no_such_key" in r.stdout + r.stderr
    assert "diffpolicy-noprop --quick exited with" in r.stderr and not out.exists()


_FAULTS_SCRIPT = """
import resource, torch
from diffpolicy import speed
applied = speed.keep_freed_memory()
x = torch.randn(64, 32, 84, 84)                                   # 58 MB: above glibc's mmap threshold
for _ in range(2):
    (torch.relu(x) * 2.0).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    (torch.relu(x) * 2.0).sum()
print(applied, speed.machine_info()["malloc_keeps_freed_memory"],
      (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="keep_freed_memory acts on glibc's malloc only")
def test_keep_freed_memory_stops_the_page_faults_of_large_tensors():
    """Off, every 58 MB temporary is mmap-ed and faulted in anew; on, freed blocks are reused.

    Other processes' load only adds faults (under memory pressure the kernel may reclaim
    the kept pages: a few thousand faults a step, seen beside a CI run and two training
    processes), so each setting keeps its fewest over 5 runs.
    """
    import subprocess
    faults = {}
    for value in ("0", "1"):
        counts = []
        for _ in range(5):
            r = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True,
                               timeout=120, env={**os.environ, speed.KEEP_FREED_ENV: value})
            applied, recorded, n = r.stdout.split()
            assert applied == recorded == ("True" if value == "1" else "False"), r.stderr
            counts.append(int(n))
        faults[value] = min(counts)
    assert faults["0"] > 10000                     # ~14k pages of 4 KB per 58 MB temporary
    assert faults["1"] < faults["0"] / 10
