"""Camera encoder throughput: the CPU trunk (``image_encoder: small``) against the published ResNet-18.

    python benchmarks/bench_image_encoder.py [--batch 64] [--rounds 5] [--threads 1] [--json out.json]

Rows, each timed in alternation with the ResNet-18 encoder in the same run (median of
``--rounds``; "plain" in the JSON is the ResNet-18 time, so ``speedup_vs_plain`` is the
ratio): a training step of the encoder alone (``batch`` samples x 2 observation steps of
96x96 frames, random 84x84 crops, forward, a mean loss, backward, Adam step), and one
call at batch 1 (2 frames, central crop, inference mode).  Both encoders end in the same
spatial softmax (32 keypoints) and Linear(64, 64), so they give the policy the same
features.  The machine is shared; the ratio measured side by side is the figure to trust.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffpolicy import speed
from diffpolicy.policy.encoders import CameraEncoder
from diffpolicy.speed import speed_row

TRUNKS = ("resnet18", "small")


def _encoders() -> dict[str, CameraEncoder]:
    torch.manual_seed(0)
    return {t: CameraEncoder(3, (84, 84), 32, 64, trunk=t) for t in TRUNKS}


def _train_step(enc: CameraEncoder, opt: torch.optim.Optimizer, images: torch.Tensor) -> float:
    t0 = time.perf_counter()
    loss = enc(images).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


@torch.inference_mode()
def _call(enc: CameraEncoder, images: torch.Tensor) -> float:
    t0 = time.perf_counter()
    enc(images)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64, help="samples per training batch (each 2 frames)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--json", default=None, help="write the rows and the machine to this file")
    args = ap.parse_args()
    speed.keep_freed_memory()                # as the command-line entry points do
    torch.set_num_threads(args.threads)
    encoders = _encoders()
    params = {t: sum(p.numel() for p in e.parameters()) for t, e in encoders.items()}
    opts = {t: torch.optim.Adam(e.parameters(), lr=1e-4) for t, e in encoders.items()}
    g = torch.Generator().manual_seed(0)
    train_images = torch.rand(args.batch * 2, 3, 96, 96, generator=g) * 2 - 1
    call_images = torch.rand(2, 3, 96, 96, generator=g) * 2 - 1
    times: dict[str, list[float]] = {f"{k} {t}": [] for k in ("train", "call") for t in TRUNKS}
    for t, e in encoders.items():                           # warm-up
        e.train(); _train_step(e, opts[t], train_images)
        e.eval(); _call(e, call_images)
    for _ in range(args.rounds):
        for t, e in encoders.items():
            e.train()
            times[f"train {t}"].append(_train_step(e, opts[t], train_images))
            e.eval()
            times[f"call {t}"].append(statistics.median(_call(e, call_images) for _ in range(10)))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    print(f"| encoder | params | train step, batch {args.batch} x 2 frames | images/s | "
          f"call, batch 1 x 2 frames | vs ResNet-18 (train / call) |")
    print("|---|---|---|---|---|---|")
    for t in TRUNKS:
        tr, call = med[f"train {t}"], med[f"call {t}"]
        ratio_t, ratio_c = med["train resnet18"] / tr, med["call resnet18"] / call
        print(f"| {t} | {params[t] / 1e6:.2f} M | {tr * 1e3:.0f} ms | {2 * args.batch / tr:,.0f} | "
              f"{call * 1e3:.1f} ms | {ratio_t:.1f}x / {ratio_c:.1f}x |")
        rows.append(speed_row(f"train step {t}", tr, med["train resnet18"], params=params[t],
                              images_per_s=2 * args.batch / tr))
        rows.append(speed_row(f"call batch 1 {t}", call, med["call resnet18"], params=params[t]))
    print(f"(threads {args.threads}, load {speed.machine_info()['load_average']})")
    if args.json:
        speed.write_benchmark_json(args.json, "bench_image_encoder", rows, batch=args.batch, rounds=args.rounds,
                                   threads=args.threads)


if __name__ == "__main__":
    main()
