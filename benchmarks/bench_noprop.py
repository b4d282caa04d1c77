"""NoProp-DT speed: a plain implementation vs ours, measured side by side in one run.

Plain: 10 separate ``PaperBlock`` modules, fp32, contiguous tensors, each block
trained on every batch with its own AdamW (what public NoProp code does).
Ours: the 10 blocks fused (one conv with 10x32 filters, grouped convs, batched
matmuls), channels-last, per-block AdamW, optionally bf16 autocast.  The
measurements are interleaved (plain, fused, fused-bf16, plain, ...) so machine
load hits all alike; per-epoch times are extrapolated from the median step time
to 430 batches of 128 (55k training images) and say so.

    python benchmarks/bench_noprop.py                 # ~3 min on 2 busy cores
    python benchmarks/bench_noprop.py --reps 5 --models   # also every table row's step time
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffpolicy.noprop.backprop import BackboneClassifier, BackpropDT
from diffpolicy.noprop.blocks import PaperBlock
from diffpolicy.noprop.ct import NoPropCT
from diffpolicy.noprop.dt import NoPropDT
from diffpolicy.noprop.train import Optimizers, TrainConfig, autocast

BATCH, N_TRAIN, K, D, T = 128, 55000, 10, 20, 10
BATCHES_PER_EPOCH = -(-N_TRAIN // BATCH)


class PlainDT:
    """The plain reference: one module and one optimiser per block, blocks run one by one."""

    def __init__(self):
        self.ref = NoPropDT(K, T, embed_dim=D)           # schedule, embedding, head
        self.blocks = [PaperBlock(D, K) for _ in range(T)]
        self.opts = [torch.optim.AdamW(b.parameters(), 1e-3, weight_decay=1e-3) for b in self.blocks]
        self.shared = torch.optim.AdamW(self.ref.shared_parameters, 1e-3, weight_decay=1e-3)

    def step(self, x, y):
        m = self.ref
        self.shared.zero_grad()
        for t, (blk, opt) in enumerate(zip(self.blocks, self.opts), start=1):
            opt.zero_grad()
            u = m.embed(y)
            z = m.sample_latents(u.detach(), torch.tensor([t - 1]), torch.randn(1, *u.shape))[0]
            uhat = torch.softmax(blk(x, z), -1) @ m.embed.weight
            loss = m.eta * T / 2 * m.snr_diff[t - 1] * (uhat - u).pow(2).sum(-1).mean()
            loss.backward()
            opt.step()
        u = m.embed(y)
        (m.head_loss(u, y, torch.randn_like(u)) + m.kl_loss(u)).backward()
        self.shared.step()

    @torch.no_grad()
    def predict(self, x):
        m = self.ref
        for b in self.blocks:
            b.eval()
        z = torch.zeros(x.shape[0], D)
        for t, blk in enumerate(self.blocks, start=1):
            z = m.a[t] * (torch.softmax(blk(x, z), -1) @ m.embed.weight) + m.b[t] * z
        return m.head(z)


def fused_stepper(model, precision):
    cfg = TrainConfig(precision=precision)
    opt = Optimizers(model, cfg)

    def step(x, y):
        opt.zero_grad()
        with autocast(precision):
            loss = model.loss(x, y)["total"]
        loss.backward()
        opt.step()
    return step


def time_interleaved(fns: dict, x, y, reps: int) -> dict:
    """Median seconds per call of each fn, calls interleaved across fns."""
    for fn in fns.values():      # warm-up
        fn(x, y)
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn(x, y)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", action="store_true", help="also time one step of every table row's model")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, K, (BATCH,))

    plain = PlainDT()
    fused, fused16 = NoPropDT(K, T, embed_dim=D), NoPropDT(K, T, embed_dim=D)
    res = time_interleaved({"plain": plain.step, "fused": fused_stepper(fused, "fp32"),
                            "fused_bf16": fused_stepper(fused16, "bf16")}, x, y, args.reps)
    print(f"## NoProp-DT training, all {T} blocks per batch of {BATCH} "
          f"({torch.get_num_threads()} threads, median of {args.reps} interleaved steps)\n")
    print("| implementation | s / batch | min / epoch (extrapolated to 430 batches) | speed-up |")
    print("|---|---|---|---|")
    names = {"plain": "plain: 10 modules, fp32, NCHW, AdamW each",
             "fused": "fused blocks, channels-last, fp32",
             "fused_bf16": "fused blocks, channels-last, bf16 autocast"}
    for k, s in res.items():
        print(f"| {names[k]} | {s:.3f} | {s * BATCHES_PER_EPOCH / 60:.1f} | {res['plain'] / s:.2f}x |")

    n_eval = 1000
    xe = torch.randn(n_eval, 1, 28, 28)
    fused.eval()

    def fused_eval(precision):
        def run(xx, _):
            with torch.inference_mode(), autocast(precision):
                fused.predict(xx)
        return run

    def plain_eval(xx, _):
        for i in range(0, len(xx), BATCH):
            plain.predict(xx[i:i + BATCH])
    ev = time_interleaved({"plain": plain_eval, "fused": fused_eval("fp32"),
                           "fused_bf16": fused_eval("bf16")}, xe, None, 2)
    print(f"\n## NoProp-DT inference, {n_eval} images (plain: batches of {BATCH}, per-block modules; "
          "fused: one batch, image paths of all blocks at once)\n")
    print(f"| implementation | s / {n_eval} images | s / 10k test set (extrapolated) | speed-up |")
    print("|---|---|---|---|")
    for k, s in ev.items():
        print(f"| {names[k]} | {s:.2f} | {10000 / n_eval * s:.1f} | {ev['plain'] / s:.2f}x |")

    if args.models:
        models = {"NoProp-DT (paper CNN)": NoPropDT(K, T),
                  "Backprop twin (paper CNN x10)": BackpropDT(K, T),
                  "Backprop ResNet-18": BackboneClassifier("resnet18", K),
                  "Backprop ResNet-50": BackboneClassifier("resnet50", K),
                  "NoProp-CT ResNet-18": NoPropCT("resnet18", K),
                  "NoProp-CT ResNet-50": NoPropCT("resnet50", K)}
        for prec in ("bf16", "fp32"):
            steps = {k: fused_stepper(m, prec) for k, m in models.items()}
            r = time_interleaved(steps, x, y, max(2, args.reps // 2))
            print(f"\n## One training step per table row, {prec}, batch {BATCH}\n")
            print("| row model | s / batch | min / epoch (extrapolated) |")
            print("|---|---|---|")
            for k, s in r.items():
                print(f"| {k} | {s:.3f} | {s * BATCHES_PER_EPOCH / 60:.1f} |")


if __name__ == "__main__":
    main()
