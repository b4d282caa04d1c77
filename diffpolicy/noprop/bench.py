"""The benchmark table: the course paper's Table I rows plus NoProp-DT and its backprop twin,
trained on one machine with one data pipeline, side by side.

Each (row, seed) runs in its own process (so its peak memory is its own;
``workers`` of them side by side, each on ``cpu_count // workers`` threads unless
``threads`` says otherwise) and writes ``rows/<row>_seed<k>.json`` when done, with the
settings it ran under (``config``); a rerun skips finished rows (refusing one that ran other
row settings) and resumes unfinished ones from their per-epoch checkpoint.  The outputs are
``results.md``, ``results.json`` and ``noprop_curves.png`` in ``out_dir``.

Rows are plain dicts (from the Hydra config)::

    {name, kind: dt | backprop_dt | ct | fm | backprop, backbone, stem, epochs, ...}

NoProp rows are tested with deterministic inference and with the paper's
stochastic inference, the latter ``stochastic_runs`` times (mean and s.d. over
sampling runs); ``select_on`` names the mode that picks the epoch on the
validation split.  Every row also records the peak tensor memory of one training
step (:mod:`diffpolicy.noprop.memory`) beside the process's peak RSS.

(``fm``, NoProp-FM, is not in the default table; add a row to run it.)
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import resource
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from diffpolicy import speed
from diffpolicy.datasets.fashion_mnist import fashion_mnist_splits
from diffpolicy.noprop.backprop import BackboneClassifier, BackpropDT
from diffpolicy.noprop.ct import NoPropCT
from diffpolicy.noprop.diagnose import latent_diagnostics
from diffpolicy.noprop.dt import NoPropDT
from diffpolicy.noprop.embeddings import class_medoids
from diffpolicy.noprop.fm import NoPropFM
from diffpolicy.noprop.lifeline import ParentEnded, end_with_parent
from diffpolicy.noprop.memory import training_step_memory
from diffpolicy.noprop.parallel import share
from diffpolicy.noprop.train import TrainConfig, fit

KINDS = ("dt", "backprop_dt", "ct", "fm", "backprop")
CT_OPTIONS = ("norm", "time_path", "learn_endpoints", "t_sampling", "gamma_0", "gamma_1")
METHOD = {"dt": "NoProp-DT", "backprop_dt": "Backprop (same T blocks)", "ct": "NoProp-CT",
          "fm": "NoProp-FM", "backprop": "Backprop"}


def build_model(row: dict, data) -> torch.nn.Module:
    """The model of a row; ``row`` keys as in ``configs/noprop/bench.yaml``."""
    kind = row["kind"]
    if kind not in KINDS:
        raise ValueError(f"row {row.get('name')!r}: kind expected one of {KINDS}, got {kind!r}")
    common = dict(n_classes=data.n_classes, embedding=row.get("embedding", "learned"),
                  embed_dim=row.get("embed_dim", 20))
    if kind in ("dt", "ct"):
        common["head_init"] = row.get("head_init", "embedding")
    if common["embedding"] == "prototype":
        common["prototypes"] = class_medoids(data.train_x, data.train_y, data.n_classes)
    if kind == "dt":
        return NoPropDT(T=row.get("T", 10), eta=row.get("eta", 0.1),
                        dropout=row.get("dropout", 0.2), block_loss=row.get("block_loss", "sum"),
                        **common)
    if kind == "backprop_dt":
        return BackpropDT(T=row.get("T", 10), dropout=row.get("dropout", 0.2), **common)
    if kind == "fm":
        return NoPropFM(row.get("backbone", "resnet18"), stem=row.get("stem", "imagenet"),
                        dropout=row.get("dropout", 0.2), **common)
    if kind == "ct":
        return NoPropCT(row.get("backbone", "resnet18"), eta=row.get("eta", 1.0),
                        stem=row.get("stem", "imagenet"), dropout=row.get("dropout", 0.2),
                        **{k: row[k] for k in CT_OPTIONS if k in row}, **common)
    return BackboneClassifier(row.get("backbone", "resnet18"), data.n_classes,
                              stem=row.get("stem", "imagenet"))


def row_train_config(row: dict, train: dict, seed: int) -> TrainConfig:
    """TrainConfig for a row: the shared ``train`` settings, row overrides, inference modes."""
    kw = {k: v for k, v in train.items() if k in TrainConfig.__dataclass_fields__}
    if row["kind"] != "dt":                      # the shared block_workers splits NoProp-DT rows only
        kw.pop("block_workers", None)
    own = row.get("train", {})
    kw.update(own)
    if own.get("lr_schedule") == "cosine" and "lr_decay_epochs" not in own:
        kw.pop("lr_decay_epochs", None)          # a shared decaying tail: not for a row's own cosine
    kw["epochs"], kw["seed"] = row["epochs"], seed
    if row["kind"] in ("dt", "ct", "fm"):
        default_steps = {"ct": 1000, "fm": 100}.get(row["kind"])
        extra = {"steps": row.get("inference_steps", default_steps)} if default_steps else {}
        modes = {"stochastic": dict(extra, stochastic=True, runs=row.get("stochastic_runs", 5)),
                 "deterministic": dict(extra)}
        first = row.get("select_on", "stochastic")
        if first not in modes:
            raise ValueError(f"row {row.get('name')!r}: select_on expected 'stochastic' or "
                             f"'deterministic', got {first!r}")
        kw["predict_modes"] = {first: modes[first], **modes}
        if default_steps:
            kw["val_overrides"] = {"steps": row.get("val_inference_steps", min(100, default_steps))}
    else:
        kw["predict_modes"] = {"deterministic": {}}
    return TrainConfig(**kw)


def run_row(row: dict, seed: int, cfg: dict, out_dir: Path) -> dict:
    """Train and test one (row, seed) in this process; returns the result record."""
    t_row = time.time()
    speed.keep_freed_memory()
    workers = _workers(cfg)
    threads = cfg.get("threads") or (max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None)
    if threads:
        torch.set_num_threads(int(threads))
    d = cfg["data"]
    data = fashion_mnist_splits(d.get("root"), d.get("val_size", 5000), d.get("split_seed", 0),
                                d.get("train_subset"), d.get("test_subset"), d.get("download", False))
    torch.manual_seed(seed)
    model = build_model(row, data)
    tcfg = row_train_config(row, cfg["train"], seed)
    if workers > 1:                      # side-by-side rows: epoch lines only, no interleaved bars
        tcfg = replace(tcfg, progress=False)
    tag = f"{row['name']}_seed{seed}"
    log_path = out_dir / "log.txt"

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    res = fit(model, data, tcfg, checkpoint=out_dir / "checkpoints" / f"{tag}.pt", desc=tag, log=log)
    one_block = row["kind"] == "dt" and tcfg.block_schedule != "all"
    step_cfg = replace(tcfg, precision=res["precision"], layout=res["layout"])
    bs = tcfg.batch_size
    if isinstance(model, NoPropDT):
        res["latent_diagnostics"] = latent_diagnostics(model)
    # with block_workers each process holds a share of the blocks: the step memory is the first's
    stepped = share(model, tcfg.block_workers, 0) if tcfg.block_workers > 1 else model
    res["train_memory"] = training_step_memory(stepped, step_cfg, data.train_x[:bs], data.train_y[:bs],
                                               slice(0, 1) if one_block else slice(None))
    res.update(row=row["name"], seed=seed, kind=row["kind"], method=METHOD[row["kind"]],
               backbone=row.get("backbone", "paper CNN" if row["kind"] in ("dt", "backprop_dt")
                                else "resnet18"),
               epochs=row["epochs"], n_train=len(data.train_x), n_test=len(data.test_x),
               params=sum(p.numel() for p in model.parameters()),
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               peak_gpu_mb=(torch.cuda.max_memory_allocated() / 2**20
                            if tcfg.device.startswith("cuda") else None),
               threads=torch.get_num_threads(), machine=speed.machine_info(tcfg.device),
               block_schedule=tcfg.block_schedule if row["kind"] == "dt" else None,
               block_workers=tcfg.block_workers,
               # data, probe, training, evaluation of this row; a resumed row adds the time its
               # earlier processes spent on the epochs it kept (res["resumed_seconds"])
               wall_seconds=time.time() - t_row + res["resumed_seconds"],
               started_at=t_row, finished_at=time.time(), config=command_config(cfg, row))
    return res


def command_config(cfg: dict, row: dict) -> dict:
    """What one (row, seed) ran under: the command's settings (``rows`` left out) and its row.

    Every ``rows/<row>_seed<k>.json`` keeps its own, since ``config.json`` holds the latest
    command's only (two commands may fill one ``out_dir``, e.g. two rows side by side)."""
    return {**{k: v for k, v in cfg.items() if k != "rows"}, "row": row}


def row_ran(done: dict) -> dict | None:
    """The row settings a finished (row, seed) record ran under (``command_config``); None for
    records written before rows kept them."""
    return (done.get("config") or {}).get("row")


def _check_finished(done: dict, result_path: Path, row: dict) -> None:
    """Refuse to count a finished (row, seed) record ``done``, read from ``result_path``, that
    ran other row settings than ``row``."""
    if done.get("epochs") != row["epochs"]:
        raise ValueError(f"{result_path} finished with {done.get('epochs')} epoch(s), this config asks "
                         f"for {row['epochs']}: use another out_dir (results are never mixed)")
    ran = row_ran(done)
    if ran is not None and ran != row:
        keys = sorted(k for k in set(ran) | set(row) if ran.get(k) != row.get(k))
        raise ValueError(f"{result_path} finished with other settings for row {row['name']!r} "
                         f"({', '.join(f'{k}: {ran.get(k)!r} there, {row.get(k)!r} here' for k in keys)}): "
                         "use another out_dir (results are never mixed)")


def write_row_result(path: Path, record: dict) -> None:
    """Write a finished (row, seed) record via a temporary file and a rename: a process killed
    mid-write leaves no half-written ``rows/*.json`` (which would count as finished)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def read_row_result(path: Path) -> dict:
    """A finished (row, seed) record; a corrupt or unreadable one is refused by name."""
    try:
        done = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable finished-row record ({exc}); move it away to "
                         "train that row again") from exc
    if not isinstance(done, dict):
        raise ValueError(f"{path}: not a finished-row record (a JSON object); move it away to "
                         "train that row again")
    return done


def _child(row: dict, seed: int, cfg: dict, out_dir: str, result_path: str) -> None:
    end_with_parent()          # the table command killed alone: this row stops too, resumable
    try:
        res = run_row(row, seed, cfg, Path(out_dir))
        write_row_result(Path(result_path), res)
    except ParentEnded:        # said why on stderr already; the checkpoint stays for a rerun
        sys.exit(1)
    except Exception:
        traceback.print_exc()
        sys.exit(1)


TOP_KEYS = {"out_dir", "isolate", "workers", "threads", "seeds", "only", "epochs", "data", "train", "rows"}
DATA_KEYS = {"root", "val_size", "split_seed", "train_subset", "test_subset", "download"}
ROW_KEYS = {"name", "kind", "T", "embedding", "embed_dim", "eta", "dropout", "epochs", "backbone", "stem",
            "inference_steps", "val_inference_steps", "train", "head_init", "block_loss",
            "stochastic_runs", "select_on", *CT_OPTIONS}


def check_config(cfg: dict) -> None:
    """Refuse unknown keys anywhere in a NoProp table config (a typo must not be ignored)."""
    def unknown(section: dict, known: set[str], where: str) -> None:
        extra = sorted(set(section) - known)
        if extra:
            raise ValueError(f"unknown NoProp config key {where}{extra[0]} "
                             f"(known keys{' in ' + where.rstrip('.') if where else ''}: {', '.join(sorted(known))})")
    train_keys = set(TrainConfig.__dataclass_fields__)
    unknown(cfg, TOP_KEYS, "")
    _workers(cfg)
    unknown(cfg.get("data") or {}, DATA_KEYS, "data.")
    unknown(cfg.get("train") or {}, train_keys, "train.")
    for i, row in enumerate(cfg.get("rows") or []):
        where = f"rows[{i}]" + (f" ({row['name']})" if "name" in row else "")
        unknown(row, ROW_KEYS, f"{where}.")
        unknown(row.get("train") or {}, train_keys, f"{where}.train.")
        for key in ("name", "kind", "epochs"):
            if key not in row:
                raise ValueError(f"NoProp config {where} has no {key!r}")
        workers = (row.get("train") or {}).get("block_workers", 1)
        if row["kind"] != "dt" and workers != 1:
            raise ValueError(f"NoProp config {where}: train.block_workers {workers} splits NoProp-DT's "
                             f"blocks over processes; a {row['kind']!r} row trains in one")


def run_table(cfg: dict) -> list[dict]:
    """Run every (row, seed) not yet done, then write the table, JSON and plot."""
    check_config(cfg)
    out_dir = Path(cfg["out_dir"])
    (out_dir / "rows").mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=1))   # this command's; see command_config
    rows = [r for r in _table_rows(cfg) if not cfg.get("only") or r["name"] in cfg["only"]]
    jobs = [(r, s) for r in rows for s in cfg["seeds"]]
    workers = _workers(cfg)
    failed = []
    running: list[tuple[mp.Process, str, str, Path]] = []   # (process, status, row label, result path)
    t_start = time.time()

    def reap() -> None:
        """Wait for a running row to end; note each one that ended and failed."""
        ended = set(mp_connection.wait([p.sentinel for p, *_ in running]))
        for item in [it for it in running if it[0].sentinel in ended]:
            p, status, label, result_path = item
            p.join()
            running.remove(item)
            if p.exitcode != 0 or not result_path.exists():
                failed.append(label)
                print(f"{status}: FAILED (see the traceback above)", flush=True)

    for i, (row, seed) in enumerate(jobs):
        result_path = row_result_path(out_dir, row["name"], seed)
        label = f"{row['name']} seed {seed}"
        status = f"[{i + 1}/{len(jobs)}] {label}"
        if result_path.exists():
            _check_finished(read_row_result(result_path), result_path, row)
            print(f"{status}: done earlier, skipped", flush=True)
            continue
        while len(running) >= workers:
            reap()
        print(f"{status}: {row['epochs']} epoch(s), {time.time() - t_start:.0f} s elapsed",
              flush=True)
        if cfg.get("isolate", True):
            p = mp.get_context("spawn").Process(target=_child, args=(row, seed, cfg, str(out_dir),
                                                                      str(result_path)))
            p.start()
            running.append((p, status, label, result_path))
            _write_progress(out_dir, [item[1] for item in running])
        else:
            _write_progress(out_dir, [status])
            write_row_result(result_path, run_row(row, seed, cfg, out_dir))
    while running:
        reap()
    results = write_report(cfg)
    (out_dir / "progress.txt").write_text(f"finished {time.ctime()}; failed: {failed or 'none'}\n")
    if failed:
        raise RuntimeError(f"rows failed: {', '.join(failed)} (finished rows are saved; rerun to retry)")
    return results


def write_report(cfg: dict) -> list[dict]:
    """Write the table, JSON and plot from every finished (row, seed) in ``out_dir`` whose row
    the config names (all its seeds, not only ``seeds``), refusing one that ran other row
    settings; train nothing.  Also the command ``diffpolicy-noprop --report``, e.g. while
    other rows of the same out_dir still train."""
    out_dir = Path(cfg["out_dir"])
    rows = {r["name"]: r for r in _table_rows(cfg)}
    order = {name: i for i, name in enumerate(rows)}
    results = []
    for path in sorted((out_dir / "rows").glob("*.json")):
        done = read_row_result(path)
        if done["row"] in rows:
            _check_finished(done, path, rows[done["row"]])   # a row run with other settings: refused
            results.append(done)
    results.sort(key=lambda r: (order[r["row"]], r["seed"]))
    write_outputs(results, cfg, out_dir)
    return results


def row_result_path(out_dir: str | Path, name: str, seed: int) -> Path:
    """Where a finished (row, seed) record lives: ``out_dir/rows/<row>_seed<k>.json``."""
    return Path(out_dir) / "rows" / f"{name}_seed{seed}.json"


def restore_rows(cfg: dict, source: Path) -> list[str]:
    """Write each finished (row, seed) record kept in a saved ``results.json`` (its ``runs``, e.g.
    a committed ``docs/results/<table>/results.json``) into ``out_dir/rows``, so that a table
    resumes on another machine from the rows it finished; returns the labels written.

    Every record is checked before anything is written: one that ran other row settings than
    the config's is refused (``_check_finished``), as is one whose ``rows/<row>_seed<k>.json``
    already holds another record (never overwritten); an identical one is left as it is.
    Records of rows the config does not name are skipped (and said so)."""
    source = Path(source)
    try:
        runs = json.loads(source.read_text()).get("runs")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"cannot restore rows from {source}: not a readable results.json ({exc})") from exc
    if not isinstance(runs, list):
        raise ValueError(f"cannot restore rows from {source}: it has no 'runs' list (a table's results.json has)")
    rows = {r["name"]: r for r in _table_rows(cfg)}
    rows_dir = Path(cfg["out_dir"]) / "rows"
    writes = []
    for i, done in enumerate(runs):
        if not (isinstance(done, dict) and isinstance(done.get("row"), str)
                and isinstance(done.get("seed"), int) and isinstance(done.get("test_acc"), dict)):
            raise ValueError(f"cannot restore rows from {source}: runs[{i}] is not a finished row record "
                             "(it needs 'row', 'seed' and 'test_acc')")
        if done["row"] not in rows:
            print(f"{done['row']} seed {done['seed']}: not a row of this config, skipped", flush=True)
            continue
        path = row_result_path(cfg["out_dir"], done["row"], done["seed"])
        _check_finished(done, source, rows[done["row"]])
        if any(p == path for p, _ in writes):
            raise ValueError(f"cannot restore rows from {source}: it holds {done['row']} seed {done['seed']} twice")
        if path.exists():
            try:
                there = json.loads(path.read_text())
            except ValueError as exc:
                raise ValueError(f"{path} is not readable JSON ({exc}): not overwritten (move it away)") from exc
            if there != done:
                raise ValueError(f"{path} already holds another record of {done['row']} seed {done['seed']} "
                                 f"than {source}: not overwritten (move one of them away)")
            continue
        writes.append((path, done))
    rows_dir.mkdir(parents=True, exist_ok=True)
    for path, done in writes:
        write_row_result(path, done)
        print(f"{done['row']} seed {done['seed']}: restored from {source}", flush=True)
    return [f"{done['row']} seed {done['seed']}" for _, done in writes]


def _table_rows(cfg: dict) -> list[dict]:
    """The config's rows as they run: a top-level ``epochs`` overrides each row's."""
    return [dict(r, epochs=cfg["epochs"]) if cfg.get("epochs") else r for r in cfg["rows"]]


def _workers(cfg: dict) -> int:
    """How many (row, seed) processes run side by side (``workers``; 1 unless set)."""
    workers = cfg.get("workers")
    workers = 1 if workers is None else workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers: expected a whole number >= 1, got {workers!r}")
    if workers > 1 and not cfg.get("isolate", True):
        raise ValueError("workers > 1 runs rows in their own processes: it needs isolate=true")
    return workers


def covered_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals: the clock time rows kept busy."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def scheduled_seconds(durations: list[float], workers: int) -> float:
    """Clock time of one uninterrupted run of jobs taking ``durations`` seconds, started in
    that order on ``workers`` slots, each job as soon as a slot is free (as ``run_table``
    starts rows). For a table assembled over several sessions, this is what one run takes."""
    free = [0.0] * workers
    for d in durations:
        i = free.index(min(free))
        free[i] += d
    return max(free, default=0.0)


def seed_times(results: list[dict], workers: int) -> dict[str, dict]:
    """Per training seed (``results`` in the config's row order): its finished rows, their summed
    row time and one uninterrupted run of them ``workers`` at a time (``scheduled_seconds``),
    with the machines they ran on (:func:`run_machine`); what "the whole table, one seed" costs."""
    out = {}
    for seed in sorted({r["seed"] for r in results}):
        rs = [r for r in results if r["seed"] == seed]
        walls = [r.get("wall_seconds", 0.0) for r in rs]
        out[str(seed)] = {"rows": [r["row"] for r in rs], "wall_seconds": sum(walls),
                          "scheduled_seconds": scheduled_seconds(walls, workers),
                          "machines": sorted({run_machine(r) for r in rs})}
    return out


def _write_progress(out_dir: Path, running: list[str]) -> None:
    (out_dir / "progress.txt").write_text("".join(f"{s}\n" for s in running) + f"started {time.ctime()}\n")


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _sampling_sd(rs: list[dict], mode: str) -> float | None:
    """Mean over seeds of the s.d. of test accuracy (%) across a mode's sampling runs."""
    sds = [_mean_sd([100 * a for a in r.get("test_acc_runs", {}).get(mode, [])])[1]
           for r in rs if len(r.get("test_acc_runs", {}).get(mode, [])) > 1]
    return sum(sds) / len(sds) if sds else None


def run_machine(r: dict) -> str:
    """What a finished run's time depends on: its GPU's name on CUDA, else its CPU model."""
    machine = r.get("machine") or {}
    if machine.get("device") == "cuda" and machine.get("gpu"):
        return str(machine["gpu"])
    return str(machine.get("cpu_model"))


# What makes a run's time per epoch comparable with another's: (label, how to read it).
# a record without block_workers predates block-parallel training (04d96db added both): one process
EXECUTION = (("block_workers", lambda r: r.get("block_workers") or 1), ("threads", lambda r: r.get("threads")),
             ("precision", lambda r: r.get("precision")), ("layout", lambda r: r.get("layout")),
             ("device", lambda r: (r.get("machine") or {}).get("device")),
             ("machine", run_machine))


def execution_differences(rs: list[dict]) -> list[str]:
    """How the seeds of one row ran differently, e.g. ``["block_workers 2 / 1"]``: their times
    per epoch are then listed per seed, not averaged."""
    out = []
    for label, get in EXECUTION:
        values = [get(r) for r in rs]
        if len(set(map(str, values))) > 1:
            out.append(f"{label} {' / '.join(map(str, values))}")
    return out


def summarise(results: list[dict]) -> list[dict]:
    """One line per row: means (and standard deviations) over seeds."""
    lines = []
    for name in dict.fromkeys(r["row"] for r in results):
        rs = [r for r in results if r["row"] == name]
        first = rs[0]
        acc = {m: _mean_sd([100 * r["test_acc"][m] for r in rs]) for m in first["test_acc"]}
        memory = [r["train_memory"] for r in rs if r.get("train_memory")]
        lines.append({
            "row": name, "method": first["method"], "backbone": first["backbone"],
            "epochs": first["epochs"], "seeds": [r["seed"] for r in rs], "test_acc": acc,
            "test_acc_by_seed": {m: [100 * r["test_acc"][m] for r in rs] for m in first["test_acc"]},
            "sampling_sd_by_seed": {m: [_sampling_sd([r], m) for r in rs] for m in first["test_acc"]},
            "sampling_sd": {m: _sampling_sd(rs, m) for m in first["test_acc"]},
            "val_acc": _mean_sd([100 * r["val_acc"] for r in rs]),
            "seconds_per_epoch": _mean_sd([r["seconds_per_epoch"] for r in rs]),
            "seconds_per_epoch_by_seed": [r["seconds_per_epoch"] for r in rs],
            "execution_differs": execution_differences(rs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "train_memory": max(memory, key=lambda m: m["peak_mb"]) if memory else None,
            "block_schedule": first.get("block_schedule"),
            "infer_seconds": {m: _mean_sd([r["infer_seconds"][m] for r in rs]) for m in first["infer_seconds"]},
            "infer_seconds_by_seed": {m: [r["infer_seconds"][m] for r in rs] for m in first["infer_seconds"]},
            "n_test": first["n_test"], "n_train": first["n_train"], "params": first["params"],
            "curves": [[h["val_acc"] for h in r["history"]] for r in rs]})
    return lines


def _fmt(ms: tuple[float, float | None], digits: int = 2) -> str:
    m, sd = ms
    return f"{m:.{digits}f}" if sd is None else f"{m:.{digits}f} ± {sd:.{digits}f}"


def _seeds_note(lines: list[dict]) -> str:
    """The training seeds behind the table: one list, or per row where rows differ."""
    by_row = {ln["row"]: ", ".join(map(str, ln["seeds"])) for ln in lines}
    if len(set(by_row.values())) == 1:
        return f"Training seeds: {next(iter(by_row.values()))}"
    return "Training seeds: " + "; ".join(f"{row} {seeds}" for row, seeds in by_row.items())


def markdown_table(lines: list[dict]) -> str:
    head = ("| Row | Method | Backbone | Epochs | Test acc. % (stochastic) | Test acc. % "
            "(deterministic) | Train time / epoch (s) | Peak train-step memory (MB) | of which "
            "activations (MB) | Peak RSS (MB) | Inference, test set (s) |")
    out = [head, "|" + "---|" * 11]
    for ln in lines:
        det = _fmt(ln["test_acc"]["deterministic"])
        sto = "-"
        if "stochastic" in ln["test_acc"]:
            sto = _fmt(ln["test_acc"]["stochastic"])
            if ln.get("sampling_sd", {}).get("stochastic") is not None:
                sto += f" (sampling s.d. {ln['sampling_sd']['stochastic']:.2f})"
        mem = ln.get("train_memory")
        step_mem = (f"{mem['peak_mb']:.0f}", f"{mem['activations_mb']:.0f}") if mem else ("-", "-")
        inf = _fmt(ln["infer_seconds"]["deterministic"], 1)
        per_epoch = _fmt(ln["seconds_per_epoch"], 0)
        if ln.get("execution_differs"):          # not comparable: one figure per seed
            per_epoch = (" / ".join(f"{t:.0f}" for t in ln["seconds_per_epoch_by_seed"])
                         + f" (per seed; {', '.join(ln['execution_differs'])})")
            inf = " / ".join(f"{t:.1f}" for t in ln["infer_seconds_by_seed"]["deterministic"]) + " (per seed)"
        out.append(f"| {ln['row']} | {ln['method']} | {ln['backbone']} | {ln['epochs']} | {sto} | "
                   f"{det} | {per_epoch} | {step_mem[0]} | {step_mem[1]} | "
                   f"{ln['peak_rss_mb']:.0f} | {inf} |")
    n = lines[0] if lines else {"n_train": "?", "n_test": "?"}
    out += ["", f"Fashion-MNIST: {n['n_train']} training images (validation split carved from the "
            f"training file, used for model selection), {n['n_test']} test images, touched once by "
            "the selected model. One epoch = every block sees every training example once (one pass "
            "when NoProp-DT trains all T blocks on each batch, T passes when it trains one), so time "
            "per epoch compares like with like. "
            f"{_seeds_note(lines)} (mean ± s.d. over seeds where more than one). 'Stochastic' is "
            "the paper's inference (z_0 ~ N(0, I), sqrt(c_t) noise each step), averaged over "
            "sampling runs (their s.d. in brackets); 'deterministic' starts from z_0 = 0 with no "
            "noise. NoProp-CT infers with 1000 steps, NoProp-DT with T steps. Train-step memory: "
            "the peak of the tensors one training step holds (parameters, gradients, optimiser "
            "state, activations; diffpolicy.noprop.memory); peak RSS: the row's whole process "
            "(data and PyTorch included)."]
    return "\n".join(out) + "\n"


def write_outputs(results: list[dict], cfg: dict, out_dir: Path) -> None:
    lines = summarise(results)
    md = markdown_table(lines) if lines else "No rows finished.\n"
    (out_dir / "results.md").write_text(md)
    walls = [r.get("wall_seconds", 0.0) for r in results]
    wall = sum(walls)
    timed = [(r["started_at"], r["finished_at"]) for r in results if "started_at" in r]
    span = covered_seconds(timed) if len(timed) == len(results) else None   # None: rows from before
    workers = _workers(cfg)
    scheduled = scheduled_seconds(walls, workers)
    by_seed = seed_times(results, workers)
    (out_dir / "results.json").write_text(json.dumps(
        {"rows": lines, "runs": results, "table_wall_seconds": wall, "table_span_seconds": span,
         "table_scheduled_seconds": scheduled, "seed_times": by_seed, "workers": workers, "threads": cfg.get("threads"),
         "machine": speed.machine_info(cfg["train"].get("device", "cpu"))}, indent=1))
    print(f"table: {wall / 60:.1f} min of row wall time (each row's data, probe, training and tests), "
          + (f"{span / 60:.1f} min on the clock with {workers} row(s) side by side" if span is not None
             else "clock span not recorded for every row")
          + f"; one uninterrupted run of these rows, {workers} at a time: {scheduled / 60:.1f} min",
          flush=True)
    for seed, t in by_seed.items():
        print(f"training seed {seed}: {len(t['rows'])} row(s), {t['wall_seconds'] / 60:.1f} min of row time, "
              f"{t['scheduled_seconds'] / 60:.1f} min as one run ({', '.join(t['machines'])})", flush=True)
    if lines:
        plot_curves(lines, out_dir / "noprop_curves.png")
    print(md, flush=True)


def plot_curves(lines: list[dict], path: Path) -> None:
    """Left: validation accuracy per epoch; right: test accuracy vs training time per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ln in lines:
        curves = ln["curves"]
        n = min(len(c) for c in curves)
        mean = [100 * sum(c[e] for c in curves) / len(curves) for e in range(n)]
        ax.plot(range(1, n + 1), mean, marker="o", label=f"{ln['row']}")
        acc = ln["test_acc"].get("stochastic", ln["test_acc"]["deterministic"])[0]
        bx.scatter(ln["seconds_per_epoch"][0] / 60, acc)
        bx.annotate(ln["row"], (ln["seconds_per_epoch"][0] / 60, acc), fontsize=7,
                    xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Fashion-MNIST: validation accuracy per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    bx.set_xlabel("training time per epoch (min)")
    bx.set_ylabel("test accuracy (%), stochastic for NoProp")
    bx.set_title("accuracy vs cost (same machine, same pipeline)")
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
