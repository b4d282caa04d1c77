"""Diffusion Policy speed on this machine: policy-call latency, training throughput, rollout cost.

Prints Markdown tables.  Default run: a few minutes on 2 CPU cores.

    python benchmarks/bench_policy.py [--threads 2] [--configs cpu,published_lowdim] [--quick]

Tables:
1. one ``predict_action`` call at batch 1 (median / p95 ms) per policy config,
   sampler and UNet path (the fast channels-last path vs plain ``nn.Conv1d``);
2. one training step (forward + backward + AdamW + EMA) at the config's batch;
3. one batched policy call at batch 50 (a standard evaluation's call).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffpolicy.datasets import LinearNormalizer
from diffpolicy.policy.diffusion_policy import DiffusionPolicy, PolicyConfig
from diffpolicy.policy.ema import EMA

CONFIGS = {  # name: PolicyConfig overrides (matching diffpolicy/configs/policy/*.yaml)
    "cpu": dict(down_dims=(32, 64, 128), step_embed_dim=32, sampler="ddim", num_inference_steps=10),
    "cpu_wide": dict(down_dims=(64, 128, 256), step_embed_dim=64, sampler="ddim", num_inference_steps=10),
    "published_lowdim": dict(down_dims=(256, 512, 1024), step_embed_dim=256, sampler="ddpm",
                             num_inference_steps=100),
}


def make_policy(overrides: dict, fast: bool = True) -> DiffusionPolicy:
    torch.manual_seed(0)
    norm = LinearNormalizer().fit({"obs": torch.rand(256, 20) * 512, "action": torch.rand(256, 2) * 512})
    return DiffusionPolicy(PolicyConfig(fast_unet=fast, **overrides), norm)


def timed(fn, reps: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def pct(x: list[float], q: float) -> float:
    s = sorted(x)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest for batch-1 calls on a busy 2-core machine)")
    ap.add_argument("--configs", default="cpu,cpu_wide")
    ap.add_argument("--steps", default="5,10", help="DDIM step counts for the latency table")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128, help="training batch")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reps = 8 if args.quick else args.reps
    names = args.configs.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")

    print("### Policy call at batch 1 (predict_action: encoder + sampler + unnormalise)\n")
    print("| policy | params | UNet path | sampler | median ms | p95 ms |")
    print("|---|---|---|---|---|---|")
    obs1 = {"obs": torch.rand(1, 2, 20) * 512}
    for name in names:
        for fast in (True, False):
            policy = make_policy(CONFIGS[name], fast).eval()
            n = sum(p.numel() for p in policy.parameters()) / 1e6
            samplers = ([("ddim", int(s)) for s in args.steps.split(",")] if name.startswith("cpu")
                        else [("ddim", 10), ("ddpm", 100)])
            for sampler, steps in samplers:
                r = reps if steps <= 20 else max(3, reps // 6)
                t = timed(lambda: policy.predict_action(obs1, sampler=sampler, num_inference_steps=steps), r)
                print(f"| {name} | {n:.2f} M | {'fast' if fast else 'plain'} | {sampler} {steps} | "
                      f"{statistics.median(t) * 1e3:.1f} | {pct(t, 0.95):.1f} |", flush=True)

    print(f"\n### Training step at batch {args.batch} (forward + backward + AdamW + EMA)\n")
    print("| policy | UNet path | ms / step | samples / s |")
    print("|---|---|---|---|")
    batch = {"obs": torch.rand(args.batch, 2, 20) * 512, "action": torch.rand(args.batch, 16, 2) * 512}
    for name in names:
        for fast in (True, False):
            policy = make_policy(CONFIGS[name], fast)
            ema = EMA(policy)
            opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)

            def step():
                loss = policy.compute_loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                ema.update(policy)

            t = timed(step, max(3, reps // 3), warmup=2)
            ms = statistics.median(t) * 1e3
            print(f"| {name} | {'fast' if fast else 'plain'} | {ms:.0f} | {args.batch / ms * 1e3:.0f} |",
                  flush=True)

    print("\n### Batched policy call at batch 50 (one call of a standard 50-episode evaluation)\n")
    print("| policy | UNet path | sampler | median ms |")
    print("|---|---|---|---|")
    obs50 = {"obs": torch.rand(50, 2, 20) * 512}
    for name in names:
        for fast in (True, False):
            policy = make_policy(CONFIGS[name], fast).eval()
            cfg = policy.config
            t = timed(lambda: policy.predict_action(obs50), max(3, reps // 4))
            print(f"| {name} | {'fast' if fast else 'plain'} | {cfg.sampler} {cfg.num_inference_steps} | "
                  f"{statistics.median(t) * 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    main()
