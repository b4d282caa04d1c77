"""Training steps with glibc's malloc as it comes vs keeping freed memory, side by side.

    python benchmarks/bench_allocator.py --json docs/results/bench_allocator_<machine>.json

``diffpolicy.speed.keep_freed_memory`` (called by every command-line entry
point) turns off glibc's ``mmap`` for large blocks and heap trimming, so a
training step reuses the memory the previous step freed instead of faulting
fresh pages in.  The setting is process-wide, so each measurement is a child
process (``DIFFPOLICY_KEEP_FREED_MEMORY=0`` or ``1``) that builds one workload,
runs warm-up steps, then times ``--steps`` steps and counts the page faults they
take; the two settings alternate for ``--rounds`` rounds and the medians count.
Workloads (one thread each, as the long runs use):

* ``image_encoder``: the small camera trunk of ``policy=cpu_image``, 64 samples x 2
  frames of 84x84, forward + backward + Adam (the image policy's big activations);
* ``policy_cpu``: the ``cpu`` keypoints policy, one training step at batch 256;
* ``noprop_dt``: NoProp-DT, all 10 blocks, batch 128, fp32, per-block channels-last.

Rows: seconds per step and page faults per step of each setting, and
``speedup_vs_plain`` of keeping freed memory over glibc's default (the plain).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from diffpolicy import speed
from diffpolicy.speed import speed_row, write_benchmark_json

BENCH_DIR = Path(__file__).resolve().parent
WORKLOADS = ("image_encoder", "policy_cpu", "noprop_dt")


def _step_fn(workload: str):
    """A zero-argument function running one training step of ``workload``."""
    sys.path.insert(0, str(BENCH_DIR))
    torch.manual_seed(0)
    if workload == "image_encoder":
        from bench_image_encoder import _encoders, _train_step  # noqa: PLC0415
        enc = _encoders()["small"]
        opt = torch.optim.Adam(enc.parameters(), lr=1e-4)
        images = torch.rand(64 * 2, 3, 84, 84)
        return lambda: _train_step(enc, opt, images)
    if workload == "policy_cpu":
        from bench_policy import make_policy, policy_group  # noqa: PLC0415
        policy = make_policy(policy_group("cpu"), fast="auto")
        policy.choose_train_path(256)                    # what diffpolicy-train does
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
        batch = {"obs": torch.rand(256, 2, 20) * 512, "action": torch.rand(256, 16, 2) * 512}

        def policy_step():
            loss = policy.compute_loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return policy_step
    if workload == "noprop_dt":
        from bench_noprop import D, K, T, fused_stepper  # noqa: PLC0415
        from diffpolicy.noprop.dt import NoPropDT  # noqa: PLC0415
        step = fused_stepper(NoPropDT(K, T, embed_dim=D), "fp32", "per_block_cl")
        x, y = torch.randn(128, 1, 28, 28), torch.randint(0, K, (128,))
        return lambda: step(x, y)
    raise SystemExit(f"unknown workload {workload!r}; expected one of {WORKLOADS}")


def child(workload: str, steps: int, warmup: int) -> dict:
    applied = speed.keep_freed_memory()
    torch.set_num_threads(1)
    fn = _step_fn(workload)
    for _ in range(warmup):
        fn()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / steps
    return {"workload": workload, "keeps_freed_memory": applied, "seconds": statistics.median(times),
            "faults_per_step": faults}


def measure(workload: str, keep: bool, steps: int, warmup: int) -> dict:
    env = {**os.environ, speed.KEEP_FREED_ENV: "1" if keep else "0"}
    r = subprocess.run([sys.executable, __file__, "--child", workload, "--steps", str(steps),
                        "--warmup", str(warmup)], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"error: the {workload} child failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--steps", type=int, default=10, help="timed steps per child (median)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="alternating off/on rounds (median of the medians)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="write the rows and the machine to this JSON file")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.warmup)))
        return
    print("| workload | malloc | s / step | page faults / step | speed-up |")
    print("|---|---|---|---|---|")
    rows = []
    for workload in args.workloads.split(","):
        runs = {False: [], True: []}
        for _ in range(args.rounds):
            for keep in (False, True):
                runs[keep].append(measure(workload, keep, args.steps, args.warmup))
        sec = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
        flt = {k: statistics.median(r["faults_per_step"] for r in v) for k, v in runs.items()}
        applied = all(r["keeps_freed_memory"] for r in runs[True])
        for keep, name in ((False, "glibc default (plain)"), (True, "keep freed memory")):
            print(f"| {workload} | {name} | {sec[keep]:.4f} | {flt[keep]:.0f} | {sec[False] / sec[keep]:.2f}x |")
            rows.append(speed_row(f"{workload} {name}", sec[keep], sec[False], workload=workload,
                                  keeps_freed_memory=keep and applied, faults_per_step=flt[keep],
                                  seconds_per_round=[r["seconds"] for r in runs[keep]]))
    if args.json:
        write_benchmark_json(args.json, "bench_allocator", rows, steps=args.steps, rounds=args.rounds,
                             threads=1)


if __name__ == "__main__":
    main()
