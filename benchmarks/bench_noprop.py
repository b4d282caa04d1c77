"""NoProp-DT speed: a plain implementation vs ours, measured side by side in one run.

Plain: 10 separate ``PaperBlock`` modules, fp32, contiguous tensors, each block
trained on every batch with its own AdamW (what public NoProp code does).
Ours: the 10 blocks stacked (batched matmuls, per-block AdamW) in each layout
(``per_block``: one plain conv per block, NCHW; ``per_block_cl``: the same in
channels-last; ``fused``: grouped convs, channels-last) and precision (fp32;
bf16 autocast where the CPU has it natively).
The default is what ``precision=auto layout=auto`` picks on this machine
(:mod:`diffpolicy.noprop.execution`, a cached start-up probe) and is marked.
Measurements are interleaved (plain, candidate 1, candidate 2, ..., plain, ...)
so machine load hits all alike; per-epoch times are extrapolated from the
median step time to 430 batches of 128 (55k training images) and say so.
``--json PATH`` writes every row with the plain time measured in the same run,
``speedup_vs_plain`` and the machine (CPU model, ISA, torch, threads, load).

    python benchmarks/bench_noprop.py --json out.json  # ~3 min on 2 cores
    python benchmarks/bench_noprop.py --reps 5 --models   # also every table row's step time
"""
from __future__ import annotations

import argparse
import torch

from diffpolicy.noprop.backprop import BackboneClassifier, BackpropDT
from diffpolicy.noprop.blocks import PaperBlock
from diffpolicy.noprop.ct import NoPropCT
from diffpolicy.noprop.dt import NoPropDT
from diffpolicy import speed
from diffpolicy.noprop import execution
from diffpolicy.noprop.train import Optimizers, TrainConfig, predict_all, train_step
from diffpolicy.speed import speed_row, time_interleaved, write_benchmark_json

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


def fused_stepper(model, precision, layout: str | None = None):
    if layout is not None and hasattr(model, "blocks"):
        model.blocks.set_layout(layout)
    cfg = TrainConfig(precision=precision, layout=layout or "fused")
    opt = Optimizers(model, cfg)
    return lambda x, y: train_step(model, opt, x, y, precision)


def default_execution(x, y) -> tuple[str, str]:
    """The (layout, precision) that ``auto`` picks on this machine for NoProp-DT (cached probe)."""
    cfg = execution.resolve(NoPropDT(K, T, embed_dim=D), TrainConfig(), x, y)
    return cfg.layout, cfg.precision


def _interleaved(fns: dict, reps: int, *args) -> dict:
    return time_interleaved({k: (lambda f=f: f(*args)) for k, f in fns.items()}, reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", action="store_true", help="also time one step of every table row's model")
    ap.add_argument("--json", default=None, help="write the rows and the machine to this JSON file")
    args = ap.parse_args()
    speed.keep_freed_memory()                # as the command-line entry points do
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, K, (BATCH,))
    default = default_execution(x, y)

    plain = PlainDT()
    steps = {"plain": plain.step}
    pairs = execution.candidates(NoPropDT(K, T, embed_dim=D), "auto", "auto", "cpu")
    for lay, prec in pairs:
        steps[f"{lay}_{prec}"] = fused_stepper(NoPropDT(K, T, embed_dim=D), prec, lay)
    res = _interleaved(steps, args.reps, x, y)
    names = {"plain": "plain: 10 modules, fp32, NCHW, AdamW each",
             "fused": "fused blocks (grouped convs, channels-last)",
             "per_block": "stacked blocks, one plain conv per block (NCHW)",
             "per_block_cl": "stacked blocks, one conv per block, channels-last"}
    default_key = f"{default[0]}_{default[1]}"
    print(f"## NoProp-DT training, all {T} blocks per batch of {BATCH} "
          f"({torch.get_num_threads()} threads, median of {args.reps} interleaved steps; "
          f"default = auto = {default_key} on this machine)\n")
    print("| implementation | s / batch | min / epoch (extrapolated to 430 batches) | speed-up vs plain |")
    print("|---|---|---|---|")
    rows = []
    for k, s in res.items():
        lay, prec = (k.rsplit("_", 1) if k != "plain" else ("plain", "fp32"))
        label = names[lay] + ("" if k == "plain" else f", {prec}") + (" **(default)**" if k == default_key else "")
        print(f"| {label} | {s:.3f} | {s * BATCHES_PER_EPOCH / 60:.1f} | {res['plain'] / s:.2f}x |")
        rows.append(speed_row(f"train {k}", s, res["plain"], part="train", default=k == default_key))

    n_eval = 1000
    xe = torch.randn(n_eval, 1, 28, 28)
    evals = {"plain": lambda: [plain.predict(xe[i:i + BATCH]) for i in range(0, n_eval, BATCH)]}
    for lay, prec in pairs:
        m = NoPropDT(K, T, embed_dim=D).eval()
        m.blocks.set_layout(lay)

        def run(m=m, prec=prec):
            predict_all(m, xe, TrainConfig().eval_batch, prec)
        evals[f"{lay}_{prec}"] = run
    ev = time_interleaved(evals, 2)
    print(f"\n## NoProp-DT inference, {n_eval} images (plain: batches of {BATCH}, per-block modules; "
          f"ours: predict_all in batches of {TrainConfig().eval_batch}, image paths of all blocks at once)\n")
    print(f"| implementation | s / {n_eval} images | s / 10k test set (extrapolated) | speed-up vs plain |")
    print("|---|---|---|---|")
    for k, s in ev.items():
        lay, prec = (k.rsplit("_", 1) if k != "plain" else ("plain", "fp32"))
        label = names[lay] + ("" if k == "plain" else f", {prec}") + (" **(default)**" if k == default_key else "")
        print(f"| {label} | {s:.2f} | {10000 / n_eval * s:.1f} | {ev['plain'] / s:.2f}x |")
        rows.append(speed_row(f"inference {k}", s, ev["plain"], part="inference", default=k == default_key))

    if args.models:
        models = {"NoProp-DT (paper CNN)": NoPropDT(K, T),
                  "Backprop twin (paper CNN x10)": BackpropDT(K, T),
                  "Backprop ResNet-18": BackboneClassifier("resnet18", K),
                  "Backprop ResNet-50": BackboneClassifier("resnet50", K),
                  "NoProp-CT ResNet-18": NoPropCT("resnet18", K),
                  "NoProp-CT ResNet-50": NoPropCT("resnet50", K)}
        precs = ["fp32"] + (["bf16"] if speed.bf16_native("cpu") else [])
        for prec in precs:
            r = _interleaved({k: fused_stepper(m, prec) for k, m in models.items()},
                             max(2, args.reps // 2), x, y)
            print(f"\n## One training step per table row, {prec}, batch {BATCH}\n")
            print("| row model | s / batch | min / epoch (extrapolated) |")
            print("|---|---|---|")
            for k, s in r.items():
                print(f"| {k} | {s:.3f} | {s * BATCHES_PER_EPOCH / 60:.1f} |")
                rows.append({"name": f"model step {k} {prec}", "seconds": s, "part": "models"})
    if args.json:
        write_benchmark_json(args.json, "bench_noprop", rows, default=default_key, batch=BATCH)


if __name__ == "__main__":
    main()
