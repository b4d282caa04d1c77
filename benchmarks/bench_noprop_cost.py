"""The NoProp cost claims, measured: training time per epoch and peak training memory,
backprop vs NoProp on the same backbone, side by side in one run.

Claims tested (Fashion-MNIST, batch 128, 430 batches per pass over 55k images):

* NoProp paper: NoProp needs less memory than backprop (one block is trained at
  a time, so only its activations are kept);
* course paper: NoProp is 3-4x faster per epoch than backprop.

Pairs: NoProp-DT vs its backprop twin (the same T paper-CNN blocks chained end
to end), and NoProp-CT vs backprop on ResNet-18.  NoProp-DT runs two ways: all
T blocks on every batch (our default, ``block_schedule=all``) and one block per
batch (the paper's Algorithm 1, ``sweep``/``random``).  An *epoch* is one pass in
which every block sees every example: for one block per batch that is T passes
over the data; the one-pass time (each example trains one block) is reported
too, since that is the other reading of "per epoch".

Memory is the peak of one training step's tensors (``diffpolicy.noprop.memory``;
shape-only, so the same on every CPU); step times are medians of interleaved
steps (``diffpolicy.speed.time_interleaved``), so machine load hits all alike.

    python benchmarks/bench_noprop_cost.py --json docs/results/noprop_cost_<machine>.json  # ~3 min
"""
from __future__ import annotations

import argparse

import torch

from diffpolicy.noprop import execution
from diffpolicy.noprop.backprop import BackboneClassifier, BackpropDT
from diffpolicy.noprop.ct import NoPropCT
from diffpolicy.noprop.dt import NoPropDT
from diffpolicy.noprop.memory import training_step_memory
from diffpolicy.noprop.train import Optimizers, TrainConfig, train_step
from diffpolicy.speed import time_interleaved, write_benchmark_json

BATCH, N_TRAIN, K, T = 128, 55000, 10, 10
PASS = -(-N_TRAIN // BATCH)          # batches in one pass over the training images


def stepper(model: torch.nn.Module, cfg: TrainConfig, active: slice):
    """One optimiser step of ``model`` on a batch, training the blocks in ``active``."""
    opt = Optimizers(model, cfg)
    return lambda x, y: train_step(model, opt, x, y, cfg.precision, active)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the rows, verdicts and the machine here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, K, (BATCH,))
    # (name, model, blocks trained per step, optimiser steps per epoch, steps per pass over the data)
    one = slice(0, 1)
    cases = [("backprop twin (T paper blocks, end to end)", BackpropDT(K, T), slice(None), PASS, PASS),
             ("NoProp-DT, all T blocks per batch", NoPropDT(K, T), slice(None), PASS, PASS),
             ("NoProp-DT, one block per batch (paper)", NoPropDT(K, T), one, T * PASS, PASS),
             ("backprop ResNet-18", BackboneClassifier("resnet18", K), slice(None), PASS, PASS),
             ("NoProp-CT ResNet-18", NoPropCT("resnet18", K), slice(None), PASS, PASS)]
    steps, rows = {}, []
    for name, model, active, per_epoch, per_pass in cases:
        schedule = "all" if active == slice(None) else "random"
        cfg = execution.resolve(model, TrainConfig(block_schedule=schedule), x, y)
        mem = training_step_memory(model, cfg, x, y, active)
        steps[name] = stepper(model, cfg, active)
        rows.append({"name": name, "precision": cfg.precision, "layout": cfg.layout,
                     "steps_per_epoch": per_epoch, "steps_per_pass": per_pass, **mem})
    secs = time_interleaved({k: (lambda f=f: f(x, y)) for k, f in steps.items()}, args.reps)
    for r in rows:
        r["seconds_per_step"] = secs[r["name"]]
        r["minutes_per_epoch"] = secs[r["name"]] * r["steps_per_epoch"] / 60
        r["minutes_per_pass"] = secs[r["name"]] * r["steps_per_pass"] / 60

    by = {r["name"]: r for r in rows}
    twin, dt_all, dt_one = (by[c[0]] for c in cases[:3])
    r18, ct = by[cases[3][0]], by[cases[4][0]]
    verdicts = {
        "memory: NoProp-DT one block per batch vs backprop twin (peak step memory ratio)":
            dt_one["peak_mb"] / twin["peak_mb"],
        "memory: NoProp-DT all blocks per batch vs backprop twin": dt_all["peak_mb"] / twin["peak_mb"],
        "memory: NoProp-CT vs backprop, ResNet-18": ct["peak_mb"] / r18["peak_mb"],
        "speed: backprop twin / NoProp-DT all blocks, per epoch (x faster)":
            twin["minutes_per_epoch"] / dt_all["minutes_per_epoch"],
        "speed: backprop twin / NoProp-DT one block per batch, per epoch (x faster)":
            twin["minutes_per_epoch"] / dt_one["minutes_per_epoch"],
        "speed: backprop twin / NoProp-DT one block per batch, per pass over the data (x faster)":
            twin["minutes_per_pass"] / dt_one["minutes_per_pass"],
        "speed: backprop / NoProp-CT, ResNet-18, per epoch (x faster)":
            r18["minutes_per_epoch"] / ct["minutes_per_epoch"]}

    print(f"## Training cost, batch {BATCH}, {torch.get_num_threads()} threads "
          f"(median of {args.reps} interleaved steps)\n")
    print("| model | peak step memory (MB) | activations (MB) | grads (MB) | optimiser (MB) "
          "| s / step | min / epoch | min / pass |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['peak_mb']:.0f} | {r['activations_mb']:.0f} | {r['grads_mb']:.0f} | "
              f"{r['optimizer_mb']:.0f} | {r['seconds_per_step']:.3f} | {r['minutes_per_epoch']:.1f} | "
              f"{r['minutes_per_pass']:.1f} |")
    print()
    for k, v in verdicts.items():
        print(f"- {k}: {v:.2f}")
    if args.json:
        write_benchmark_json(args.json, "bench_noprop_cost", rows, verdicts=verdicts, batch=BATCH,
                             passes={"batches_per_pass": PASS, "T": T})


if __name__ == "__main__":
    main()
