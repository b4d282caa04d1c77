"""NoProp's locality as speed: NoProp-DT with its blocks split over processes, against
backprop (its twin: the same T paper-CNN blocks chained) and NoProp-DT in one process,
each given the same cores, side by side in one run.

Backprop can spread one step over threads only; NoProp-DT can also give each core its own
blocks (``TrainConfig(block_workers=n)``: one process per share, only the head's and
``W_embed``'s gradients all-reduced).  Each call trains a short epoch of ``--steps`` batches of
128 through the training loop ``fit`` uses (``train.EpochRunner`` / ``parallel.BlockWorkers``;
gathering and merging the shares after a call is timed apart and counted once per 430-batch
epoch); calls are interleaved so machine load hits every row alike.

    python benchmarks/bench_noprop_parallel.py --json docs/results/noprop_parallel_<machine>.json
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch

from diffpolicy.noprop.backprop import BackpropDT
from diffpolicy.noprop.dt import NoPropDT
from diffpolicy.noprop.parallel import BlockWorkers
from diffpolicy.noprop.train import EpochRunner, TrainConfig, resolve_execution
from diffpolicy.speed import time_interleaved, write_benchmark_json

BATCH, K, T, PASS = 128, 10, 10, 430          # 430 batches: one pass over 55k training images


def serial_runner(model: torch.nn.Module, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor,
                  threads: int):
    torch.set_num_threads(threads)
    cfg = resolve_execution(model, cfg, x[:BATCH], y[:BATCH])
    runner = EpochRunner(model, cfg, x, y)

    def call():
        torch.set_num_threads(threads)
        runner.train_epoch(0, "serial")
    return call, cfg


def parallel_runner(model: NoPropDT, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor,
                    workers: int, threads: int):
    torch.set_num_threads(threads)                 # each process's threads (helpers copy it)
    cfg = resolve_execution(model, TrainConfig(**{**cfg.__dict__, "block_workers": workers}),
                            x[:BATCH], y[:BATCH])
    runner = BlockWorkers(model, cfg, x, y, EpochRunner)
    merges = []

    def call():
        torch.set_num_threads(threads)
        merges.append(runner.train_epoch(0, "parallel")["merge_seconds"])
    return call, cfg, runner, merges


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="cores every row gets")
    ap.add_argument("--steps", type=int, default=30, help="batches per timed call")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the rows, verdicts and the machine here")
    args = ap.parse_args()
    n = args.cores
    torch.manual_seed(0)
    x, y = torch.randn(BATCH * args.steps, 1, 28, 28), torch.randint(0, K, (BATCH * args.steps,))
    base = TrainConfig(progress=False, lr_schedule="constant")
    twin_call, twin_cfg = serial_runner(BackpropDT(K, T), base, x, y, n)
    dt_call, dt_cfg = serial_runner(NoPropDT(K, T, block_loss="mean"), base, x, y, n)
    par_call, par_cfg, par, merges = parallel_runner(NoPropDT(K, T, block_loss="mean"), base, x, y, n, 1)
    names = {"twin": f"backprop twin, 1 process x {n} threads",
             "dt": f"NoProp-DT, 1 process x {n} threads",
             "par": f"NoProp-DT, blocks over {n} processes x 1 thread"}
    try:
        secs = time_interleaved({"twin": twin_call, "dt": dt_call, "par": par_call}, args.reps)
    finally:
        par.close()
    cfgs = {"twin": twin_cfg, "dt": dt_cfg, "par": par_cfg}
    # the shares are gathered and merged once per call; an epoch pays it once, not per step
    merge = {"twin": 0.0, "dt": 0.0, "par": statistics.median(merges)}
    rows = [{"name": names[k], "precision": cfgs[k].precision, "layout": cfgs[k].layout,
             "seconds_per_call": secs[k], "merge_seconds": merge[k],
             "seconds_per_step": (secs[k] - merge[k]) / args.steps,
             "minutes_per_epoch": ((secs[k] - merge[k]) / args.steps * PASS + merge[k]) / 60}
            for k in ("twin", "dt", "par")]
    by = dict(zip(("twin", "dt", "par"), rows))
    verdicts = {f"speed: backprop twin / block-parallel NoProp-DT, per epoch on {n} cores (x faster)":
                by["twin"]["minutes_per_epoch"] / by["par"]["minutes_per_epoch"],
                f"speed: NoProp-DT in one process / block-parallel, per epoch on {n} cores (x faster)":
                by["dt"]["minutes_per_epoch"] / by["par"]["minutes_per_epoch"]}
    print(f"## One epoch of the paper CNN (T = {T}), batch {BATCH}, {n} cores per row "
          f"(median of {args.reps} interleaved calls of {args.steps} steps)\n")
    print("| training | precision, layout | s / step | merge s / epoch | min / epoch (430 steps) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['precision']}, {r['layout']} | {r['seconds_per_step']:.3f} | "
              f"{r['merge_seconds']:.1f} | {r['minutes_per_epoch']:.1f} |")
    print()
    for k, v in verdicts.items():
        print(f"- {k}: {v:.2f}")
    if args.json:
        write_benchmark_json(args.json, "bench_noprop_parallel", rows, verdicts=verdicts, batch=BATCH,
                             cores=n, steps_per_call=args.steps)


if __name__ == "__main__":
    main()
