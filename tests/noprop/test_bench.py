"""The benchmark command: config, quick run on real data, resume, table and plot."""
from __future__ import annotations

import json
import os

import pytest

from diffpolicy.noprop.bench import (build_model, markdown_table, restore_rows, row_train_config, run_table,
                                     summarise, write_report)
from diffpolicy.noprop.cli import load_config, main
from diffpolicy.noprop.train import TrainConfig


def test_configs_compose_and_name_every_table_row():
    full = load_config("bench")
    names = [r["name"] for r in full["rows"]]
    assert names == ["noprop-dt", "backprop-dt", "backprop-resnet18", "backprop-resnet50",
                     "noprop-ct-resnet18", "noprop-ct-resnet50"]
    assert full["data"]["val_size"] > 0 and full["train"]["batch_size"] == 128
    quick = load_config("quick", ["seeds=[3]"])
    assert quick["seeds"] == [3] and quick["data"]["train_subset"] == 512
    assert [r["name"] for r in quick["rows"]] == names
    with pytest.raises(SystemExit, match="no NoProp config 'nope'"):
        load_config("nope")


def test_every_shared_training_setting_is_in_the_config_and_overridable():
    """A TrainConfig field missing from bench.yaml cannot be set as ``train.<key>=...``."""
    per_row = {"epochs", "seed", "predict_modes", "val_overrides"}   # set from the row and seeds
    shared = set(load_config("bench")["train"])
    assert set(TrainConfig.__dataclass_fields__) - per_row <= shared
    long = load_config("gpu_long", ["train.grad_clip=1", "train.optimizer=adam"])
    ct = next(r for r in long["rows"] if r["name"] == "noprop-ct-resnet50-adamw")
    tc = row_train_config(ct, long["train"], 0)
    assert tc.grad_clip == 1 and tc.optimizer == "adamw"           # the row's own optimiser wins
    assert row_train_config(long["rows"][0], long["train"], 0).optimizer == "adam"


def test_row_settings_reach_the_models():
    cfg = load_config("bench")
    dt = next(r for r in cfg["rows"] if r["kind"] == "dt")
    tc = row_train_config(dt, cfg["train"], seed=4)
    assert tc.seed == 4 and tc.epochs == dt["epochs"]
    assert list(tc.predict_modes) == ["stochastic", "deterministic"]        # selects on the headline
    assert tc.predict_modes["stochastic"] == {"stochastic": True, "runs": 5}
    det_first = row_train_config(dict(dt, select_on="deterministic", stochastic_runs=2), cfg["train"], 0)
    assert list(det_first.predict_modes) == ["deterministic", "stochastic"]
    assert det_first.predict_modes["stochastic"]["runs"] == 2
    with pytest.raises(ValueError, match="select_on"):
        row_train_config(dict(dt, select_on="both"), cfg["train"], 0)
    model = build_model(dict(dt, block_loss="mean", head_init="default"),
                        type("D", (), {"n_classes": 10})())
    assert model.block_loss == "mean"
    ct = next(r for r in cfg["rows"] if r["kind"] == "ct")
    tc = row_train_config(ct, cfg["train"], seed=0)
    assert tc.predict_modes["deterministic"]["steps"] == 1000 and tc.val_overrides == {"steps": 100}
    fm = row_train_config({"name": "fm", "kind": "fm", "epochs": 1}, cfg["train"], seed=0)
    assert fm.predict_modes["stochastic"] == {"steps": 100, "stochastic": True, "runs": 5}
    with pytest.raises(ValueError, match="kind expected one of"):
        build_model({"name": "x", "kind": "magic"}, None)
    # a shared decaying tail reaches constant-rate rows; a cosine row keeps its own schedule
    long = load_config("gpu_long", ["train.lr_decay_epochs=10"])
    by_name = {r["name"]: r for r in long["rows"]}
    assert row_train_config(by_name["noprop-ct-resnet18"], long["train"], 0).lr_decay_epochs == 10
    assert row_train_config(by_name["backprop-resnet18"], long["train"], 0).lr_decay_epochs == 0


def test_quick_table_runs_resumes_and_writes_outputs(fmnist_root, tmp_path, capsys):
    """In-process (isolate=false) on one thread; the per-row process path is tested below."""
    out = tmp_path / "quick"
    only = "only=[noprop-dt,backprop-resnet18]"
    args = ["--quick", f"out_dir={out}", only, "isolate=false", "threads=1", "data.train_subset=256",
            "data.val_size=256", "data.test_subset=256", "train.max_steps_per_epoch=2", "train.batch_size=32",
            f"data.root={fmnist_root}"]
    assert main(args) == 0
    saved = json.loads((out / "results.json").read_text())
    rows = saved["rows"]
    assert [r["row"] for r in rows] == ["noprop-dt", "backprop-resnet18"]      # config order
    assert saved["table_wall_seconds"] == pytest.approx(sum(r["wall_seconds"] for r in saved["runs"]))
    assert saved["table_wall_seconds"] > 0 and saved["machine"]["cpu_model"]
    assert saved["table_scheduled_seconds"] == pytest.approx(saved["table_wall_seconds"])  # workers 1
    assert saved["seed_times"]["0"]["rows"] == ["noprop-dt", "backprop-resnet18"]
    assert saved["seed_times"]["0"]["scheduled_seconds"] == pytest.approx(saved["table_wall_seconds"])
    assert {r["precision"] for r in saved["runs"]} <= {"fp32", "bf16"}         # auto was resolved
    dt = rows[0]
    assert set(dt["test_acc"]) == {"deterministic", "stochastic"} and dt["seconds_per_epoch"][0] > 0
    run = saved["runs"][0]
    assert len(run["test_acc_runs"]["stochastic"]) == 5 and len(run["test_acc_runs"]["deterministic"]) == 1
    assert run["test_acc"]["stochastic"] == pytest.approx(sum(run["test_acc_runs"]["stochastic"]) / 5)
    mem = run["train_memory"]
    assert mem["peak_mb"] >= mem["params_mb"] + mem["activations_mb"] > 0
    md = (out / "results.md").read_text()
    assert "| noprop-dt | NoProp-DT | paper CNN | 1 |" in md and "One epoch = every block" in md
    assert (out / "noprop_curves.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(args) == 0                         # rerun: nothing left to do
    assert capsys.readouterr().out.count("done earlier, skipped") == 2
    with pytest.raises(ValueError, match="finished with 1 epoch"):
        main(args + ["epochs=2"])                  # never mixes runs of another length
    # each finished row keeps the command it ran under (config.json holds the latest command's)
    assert run["config"]["row"] == load_config("quick")["rows"][0]
    assert run["config"]["only"] == ["noprop-dt", "backprop-resnet18"] and run["config"]["threads"] == 1
    cfg = load_config("quick", args[1:])
    cfg["rows"][0]["eta"] = 0.5
    with pytest.raises(ValueError, match=r"other settings for row 'noprop-dt' \(eta: 0.1 there, 0.5 here\)"):
        run_table(cfg)                             # ... nor runs of other row settings
    (out / "results.md").unlink()
    moved = json.loads((out / "rows" / "backprop-resnet18_seed0.json").read_text())
    (out / "rows" / "backprop-resnet18_seed1.json").write_text(json.dumps(dict(moved, seed=1)))
    (out / "rows" / "backprop-resnet18_seed0.json").unlink()      # as if only seed 1 had run
    capsys.readouterr()
    assert main(args + ["--report"]) == 0          # the table from the finished rows, nothing trained
    report = capsys.readouterr().out
    assert "done earlier" not in report and "epoch(s)" not in report
    assert "Training seeds: noprop-dt 0; backprop-resnet18 1" in (out / "results.md").read_text()
    assert main(["--quick", "--report", f"out_dir={tmp_path / 'none'}"]) == 2
    with pytest.raises(ValueError, match=r"other settings for row 'noprop-dt' \(eta: 0.1 there, 0.5 here\)"):
        write_report(cfg)                          # never reports a row run another way
    # on another machine: the committed results.json gives back the finished rows, nothing retrains
    moved_args = [a if not a.startswith("out_dir=") else f"out_dir={tmp_path / 'elsewhere'}" for a in args]
    capsys.readouterr()
    assert main(moved_args + ["--report", "--restore", str(out / "results.json")]) == 0
    assert capsys.readouterr().out.count("restored from") == 2
    assert main([a for a in moved_args if not a.startswith("only=")] + ["only=[noprop-dt]"]) == 0
    assert "noprop-dt seed 0: done earlier, skipped" in capsys.readouterr().out   # resumes from it
    again = json.loads((tmp_path / "elsewhere" / "results.json").read_text())
    assert again["runs"] == json.loads((out / "results.json").read_text())["runs"]


def test_summary_reports_mean_and_standard_deviation():
    def run(seed, acc):
        return {"row": "r", "method": "NoProp-DT", "backbone": "paper CNN", "epochs": 1, "seed": seed,
                "test_acc": {"deterministic": acc}, "val_acc": acc, "seconds_per_epoch": 10.0,
                "peak_rss_mb": 100.0, "infer_seconds": {"deterministic": 1.0}, "n_test": 10,
                "n_train": 10, "params": 1, "history": [{"val_acc": acc}]}
    lines = summarise([run(0, 0.90), run(1, 0.92)])
    m, sd = lines[0]["test_acc"]["deterministic"]
    assert abs(m - 91.0) < 1e-9 and abs(sd - 2 ** 0.5) < 1e-9
    assert lines[0]["test_acc_by_seed"]["deterministic"] == pytest.approx([90.0, 92.0])
    assert "91.00 ± 1.41" in markdown_table(lines)
    stochastic = [dict(run(i, 0.9), test_acc={"deterministic": 0.9, "stochastic": acc},
                       test_acc_runs={"stochastic": runs}) for i, (acc, runs) in
                  enumerate([(0.85, [0.84, 0.86]), (0.87, [0.87, 0.87])])]
    line = summarise(stochastic)[0]
    assert line["sampling_sd"]["stochastic"] == pytest.approx((100 * 0.02 / 2 ** 0.5 + 0) / 2)
    assert line["sampling_sd_by_seed"]["stochastic"] == pytest.approx([100 * 0.02 / 2 ** 0.5, 0])
    assert "86.00 ± 1.41 (sampling s.d. 0.71)" in markdown_table([line])
    assert "| 10 ± 0 |" in markdown_table([line])
    assert "Training seeds: 0, 1 (mean" in markdown_table([line])
    other = dict(line, row="q", seeds=[0])
    assert "Training seeds: r 0, 1; q 0 (mean" in markdown_table([line, other])


def test_seeds_run_differently_list_their_time_per_epoch_apart():
    def run(seed, workers, seconds):
        return {"row": "r", "method": "NoProp-DT", "backbone": "paper CNN", "epochs": 1, "seed": seed,
                "test_acc": {"deterministic": 0.9}, "val_acc": 0.9, "seconds_per_epoch": seconds,
                "peak_rss_mb": 100.0, "infer_seconds": {"deterministic": 1.0}, "n_test": 10,
                "n_train": 10, "params": 1, "history": [{"val_acc": 0.9}], "block_workers": workers,
                "threads": 1, "machine": {"device": "cpu", "cpu_model": "AMD EPYC"}}
    line = summarise([run(0, 2, 274.4), run(1, 1, 460.2)])[0]
    assert line["execution_differs"] == ["block_workers 2 / 1"]
    assert "| 274 / 460 (per seed; block_workers 2 / 1) |" in markdown_table([line])
    assert "| 1.0 / 1.0 (per seed) |" in markdown_table([line])       # inference time: per seed too
    assert summarise([run(0, 2, 274.4), run(1, 2, 280.0)])[0]["execution_differs"] == []
    before = {k: v for k, v in run(2, 1, 455.0).items() if k != "block_workers"}   # recorded before the field
    assert summarise([run(1, 1, 460.2), before])[0]["execution_differs"] == []
    elsewhere = dict(run(3, 1, 530.0), machine={"device": "cpu", "cpu_model": "Intel Xeon"})
    assert summarise([run(1, 1, 460.2), elsewhere])[0]["execution_differs"] == ["machine AMD EPYC / Intel Xeon"]
    # a CUDA run is named by its GPU (its host CPU may be the same model as a CPU run's)
    gpu = dict(run(4, 1, 3.5), machine={"device": "cuda", "cpu_model": "AMD EPYC", "gpu": "NVIDIA H200"})
    assert summarise([run(1, 1, 460.2), gpu])[0]["execution_differs"] == [
        "device cpu / cuda", "machine AMD EPYC / NVIDIA H200"]


def test_print_config(capsys):
    assert main(["--quick", "--print-config", "seeds=[5]"]) == 0
    assert json.loads(capsys.readouterr().out)["seeds"] == [5]
    # overrides on both sides of an option (as in `... out_dir=x --restore r.json seeds=[1]`)
    assert main(["--quick", "out_dir=x", "--print-config", "seeds=[6]", "threads=1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["out_dir"], printed["seeds"], printed["threads"]) == ("x", [6], 1)
    with pytest.raises(SystemExit):                 # two configs named: refused, not one dropped
        main(["--quick", "--config", "paper_table", "--print-config"])
    assert "cannot go with --config paper_table" in capsys.readouterr().err


def test_rows_run_in_their_own_process_and_report_its_memory(fmnist_root, tmp_path):
    """Each row in its own process; with train.block_workers=2 the NoProp-DT row's blocks are
    split over 2 gloo processes, the row records it, and its step memory is one share's."""
    common = ["--quick", "only=[noprop-dt]", "threads=1", "data.train_subset=64", "data.val_size=64",
              "data.test_subset=64", "train.max_steps_per_epoch=1", f"data.root={fmnist_root}",
              "train.precision=fp32", "train.layout=fused"]
    assert main(common + [f"out_dir={tmp_path / 'iso'}"]) == 0
    run = json.loads((tmp_path / "iso" / "rows" / "noprop-dt_seed0.json").read_text())
    assert run["threads"] == 1 and run["peak_rss_mb"] > 100 and run["n_train"] == 64
    assert main(common + [f"out_dir={tmp_path / 'two'}", "train.block_workers=2"]) == 0
    two = json.loads((tmp_path / "two" / "rows" / "noprop-dt_seed0.json").read_text())
    assert run["block_workers"] == 1 and two["block_workers"] == 2
    assert [h["steps"] for h in two["history"]] == [h["steps"] for h in run["history"]] == [1]
    assert two["train_memory"]["peak_mb"] < 0.7 * run["train_memory"]["peak_mb"]


def test_unknown_config_keys_are_refused(capsys):
    from diffpolicy.noprop.bench import check_config
    from diffpolicy.noprop.cli import load_config
    cfg = load_config("quick")
    check_config(cfg)                                           # the shipped configs are clean
    check_config(load_config("bench"))
    paper = load_config("paper_table")
    check_config(paper)
    gpu, gpu_long = load_config("gpu"), load_config("gpu_long")
    check_config(gpu)
    check_config(gpu_long)
    assert gpu["rows"] == paper["rows"] and gpu["train"]["device"] == "cuda" and gpu["workers"] == 1
    gl_rows = {r["name"]: r for r in gpu_long["rows"]}
    assert list(gl_rows)[:len(paper["rows"])] == [r["name"] for r in paper["rows"]]
    for k in (18, 50):       # the -adamw rows change only the optimiser against the paper's CT rows
        twin = gl_rows[f"noprop-ct-resnet{k}"]
        assert dict(gl_rows[f"noprop-ct-resnet{k}-adamw"], name=twin["name"]) \
            == dict(twin, train={"optimizer": "adamw"}) and twin["train"] == {"optimizer": "adam"}
    assert len(gl_rows) == len(paper["rows"]) + 2
    assert gpu_long["train"]["device"] == "cuda" and gpu_long["seeds"] == [0, 1, 2]
    assert paper["workers"] == 2 and {r.get("stem") for r in paper["rows"][2:]} == {"small"}
    ct = build_model(paper["rows"][3], type("D", (), {"n_classes": 10})())
    assert ct.out[0].in_features == 3 * 256 and ct.schedule_diagnostics()["gamma_0"] == 10.0
    ablation = load_config("dt_ablation")
    check_config(ablation)
    assert [r.get("block_loss", "sum") for r in ablation["rows"]] == ["sum", "mean", "sum"] + ["mean"] * 4
    # the sharpening rows change one setting each against dt-mean
    by_name = {r["name"]: r for r in ablation["rows"]}
    for name, changed in (("dt-mean-no-dropout", {"dropout": 0.0}), ("dt-mean-lr2x", {"train": {"lr": 0.002}})):
        differs = {k: v for k, v in by_name[name].items() if k != "name" and by_name["dt-mean"].get(k) != v}
        assert differs == changed, name
    dt_long = load_config("dt_long")
    check_config(dt_long)
    long_rows = {r["name"]: r for r in dt_long["rows"]}
    assert dt_long["train"]["block_workers"] == 2 and long_rows["dt-mean-30ep"]["block_loss"] == "mean"
    assert dict(long_rows["dt-mean-no-dropout-30ep"], name="dt-mean-30ep", dropout=0.2) == long_rows["dt-mean-30ep"]
    assert dict(long_rows["backprop-dt-no-dropout-30ep"], name="backprop-dt-30ep", dropout=0.2) \
        == long_rows["backprop-dt-30ep"]
    # the shared block_workers splits the NoProp-DT rows only; a row of another kind asking for it is refused
    twin = long_rows["backprop-dt-30ep"]
    assert row_train_config(twin, dt_long["train"], 0).block_workers == 1
    assert row_train_config(long_rows["dt-mean-30ep"], dt_long["train"], 0).block_workers == 2
    with pytest.raises(ValueError, match=r"backprop-dt-30ep\): train.block_workers 2 .* 'backprop_dt' row"):
        check_config(dict(dt_long, rows=[dict(twin, train={"block_workers": 2})]))
    ct_ablation = load_config("ct_ablation")
    check_config(ct_ablation)
    assert [r["name"] for r in ct_ablation["rows"]][0] == "ct-paper"
    # the embedding-spreading rows change one ingredient each against ct-importance
    ct_rows = {r["name"]: r for r in ct_ablation["rows"]}
    base = ct_rows["ct-importance"]
    assert dict(ct_rows["ct-clean-end"], name=base["name"]) == dict(base, gamma_1=-8.0) and "gamma_1" not in base
    assert dict(ct_rows["ct-eta-0.1"], name=base["name"]) == dict(base, eta=0.1) and "eta" not in base
    assert dict(ct_rows["ct-importance-adamw"], name=base["name"]) \
        == dict(base, train=dict(base["train"], optimizer="adamw")) and base["train"]["optimizer"] == "adam"
    assert {r["t_sampling"] for r in paper["rows"] if r["kind"] == "ct"} == {"importance"}
    bad = dict(cfg, train=dict(cfg["train"], precison="bf16"))
    with pytest.raises(ValueError, match="unknown NoProp config key train.precison"):
        check_config(bad)
    rows = [dict(cfg["rows"][0], epoch=3)] + cfg["rows"][1:]
    with pytest.raises(ValueError, match=r"unknown NoProp config key rows\[0\] \(noprop-dt\)\.epoch"):
        check_config(dict(cfg, rows=rows))
    with pytest.raises(ValueError, match="unknown NoProp config key dta"):
        check_config(dict(cfg, dta={}))
    assert main(["--quick", "+train.precison=bf16"]) == 2
    assert "error: unknown NoProp config key train.precison" in capsys.readouterr().err


def test_rows_run_side_by_side_with_workers(fmnist_root, tmp_path):
    out = tmp_path / "two"
    assert main(["--quick", f"out_dir={out}", "only=[noprop-dt,backprop-dt]", "workers=2",
                 "data.train_subset=64", "data.val_size=64", "data.test_subset=64",
                 "train.max_steps_per_epoch=1", f"data.root={fmnist_root}"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["workers"] == 2 and len(report["runs"]) == 2
    assert all(r["threads"] == max(1, os.cpu_count() // 2) for r in report["runs"])
    # the two rows overlapped in time: the clock span is shorter than the summed row times
    assert report["table_span_seconds"] < 0.9 * report["table_wall_seconds"]
    assert "finished" in (out / "progress.txt").read_text()


def test_scheduled_seconds_starts_each_job_on_the_first_free_slot():
    from diffpolicy.noprop.bench import scheduled_seconds
    assert scheduled_seconds([3.0, 2.0, 2.0, 1.0], 2) == 4.0       # A: 3+1, B: 2+2
    assert scheduled_seconds([1.0, 1.0, 5.0], 2) == 6.0            # the long job starts last
    assert scheduled_seconds([5.0, 1.0, 1.0], 2) == 5.0            # ... or first
    assert scheduled_seconds([2.0, 3.0], 1) == 5.0 and scheduled_seconds([], 2) == 0.0


def test_seed_times_cost_each_training_seed_apart():
    from diffpolicy.noprop.bench import seed_times
    def run(row, seed, wall, cpu, gpu=None):
        return {"row": row, "seed": seed, "wall_seconds": wall,
                "machine": {"cpu_model": cpu, "device": "cuda" if gpu else "cpu", "gpu": gpu}}
    results = [run("a", 0, 3.0, "X"), run("a", 1, 4.0, "Y"), run("b", 0, 2.0, "X"), run("c", 0, 2.0, "X"),
               run("c", 1, 1.0, "Y", gpu="H200")]
    times = seed_times(results, workers=2)
    assert times["0"] == {"rows": ["a", "b", "c"], "wall_seconds": 7.0, "scheduled_seconds": 4.0, "machines": ["X"]}
    assert times["1"] == {"rows": ["a", "c"], "wall_seconds": 5.0, "scheduled_seconds": 4.0, "machines": ["H200", "Y"]}


def test_a_failing_row_is_reported_and_the_others_finish(fmnist_root, tmp_path, capsys):
    cfg = load_config("quick", [f"out_dir={tmp_path / 'fail'}", "workers=2", "data.train_subset=64",
                                "data.val_size=64", "data.test_subset=64", "train.max_steps_per_epoch=1",
                                f"data.root={fmnist_root}"])
    cfg["rows"] = [dict(cfg["rows"][0], name="broken", kind="nonsense"), cfg["rows"][1]]
    with pytest.raises(RuntimeError, match=r"rows failed: broken seed 0 \(finished rows are saved"):
        run_table(cfg)
    assert "[1/2] broken seed 0: FAILED" in capsys.readouterr().out
    assert (tmp_path / "fail" / "rows" / "backprop-dt_seed0.json").exists()
    assert "failed: ['broken seed 0']" in (tmp_path / "fail" / "progress.txt").read_text()


def test_covered_seconds_and_bad_workers():
    from diffpolicy.noprop.bench import check_config, covered_seconds
    from diffpolicy.noprop.cli import load_config
    assert covered_seconds([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17
    assert covered_seconds([]) == 0
    cfg = load_config("quick")
    with pytest.raises(ValueError, match="workers: expected a whole number >= 1, got 0"):
        check_config(dict(cfg, workers=0))
    with pytest.raises(ValueError, match="needs isolate=true"):
        check_config(dict(cfg, workers=2, isolate=False))


def test_restoring_rows_checks_every_record_and_never_overwrites(tmp_path, capsys):
    cfg = load_config("quick", [f"out_dir={tmp_path / 'out'}"])
    epochs = cfg["rows"][0]["epochs"]
    record = {"row": "noprop-dt", "seed": 1, "epochs": epochs, "test_acc": {"deterministic": 0.5}}
    source = tmp_path / "results.json"

    def restore(runs):
        source.write_text(json.dumps({"runs": runs}))
        return restore_rows(cfg, source)

    with pytest.raises(ValueError, match="not a readable results.json"):
        restore_rows(cfg, tmp_path / "missing.json")
    source.write_text("{oops")
    with pytest.raises(ValueError, match="not a readable results.json"):
        restore_rows(cfg, source)
    source.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="no 'runs' list"):
        restore_rows(cfg, source)
    with pytest.raises(ValueError, match=r"runs\[0\] is not a finished row record"):
        restore([{"row": "noprop-dt", "seed": 0}])
    with pytest.raises(ValueError, match="finished with 99 epoch"):     # checked before anything is written
        restore([record, dict(record, seed=2, epochs=99)])
    assert not (tmp_path / "out" / "rows" / "noprop-dt_seed1.json").exists()
    assert restore([record, dict(record, row="gone-row")]) == ["noprop-dt seed 1"]
    assert "gone-row seed 1: not a row of this config, skipped" in capsys.readouterr().out
    assert restore([record]) == []                                       # identical: left as it is
    with pytest.raises(ValueError, match="already holds another record of noprop-dt seed 1"):
        restore([dict(record, test_acc={"deterministic": 0.9})])
    kept = json.loads((tmp_path / "out" / "rows" / "noprop-dt_seed1.json").read_text())
    assert kept == record
    with pytest.raises(ValueError, match="holds noprop-dt seed 2 twice"):
        restore([dict(record, seed=2), dict(record, seed=2, test_acc={"deterministic": 0.7})])
    (tmp_path / "out" / "rows" / "noprop-dt_seed3.json").write_text("{cut off")
    with pytest.raises(ValueError, match="noprop-dt_seed3.json is not readable JSON"):
        restore([dict(record, seed=3)])
    assert (tmp_path / "out" / "rows" / "noprop-dt_seed3.json").read_text() == "{cut off"
    assert not (tmp_path / "out" / "rows" / "noprop-dt_seed2.json").exists()
    assert main(["--quick", f"out_dir={tmp_path / 'out'}", "--report", "--restore", str(tmp_path / "no.json")]) == 2


def test_a_corrupt_finished_row_is_refused_by_name_and_rows_are_written_whole(tmp_path):
    from diffpolicy.noprop.bench import row_result_path, write_report, write_row_result
    cfg = load_config("quick", [f"out_dir={tmp_path / 'pt'}", "seeds=[0]"])
    row = cfg["rows"][0]["name"]
    path = row_result_path(cfg["out_dir"], row, 0)
    path.parent.mkdir(parents=True)
    path.write_text('{"row": "' + row + '", "se')          # a process killed mid-write, before
    with pytest.raises(ValueError, match=f"{path.name}: not a readable finished-row record"):
        run_table(cfg)                                      # refused before any training
    with pytest.raises(ValueError, match=f"{path.name}: not a readable finished-row record"):
        write_report(cfg)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a finished-row record"):
        write_report(cfg)
    write_row_result(path, {"row": row, "seed": 0})       # now: temporary file, then a rename
    assert json.loads(path.read_text()) == {"row": row, "seed": 0}
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
