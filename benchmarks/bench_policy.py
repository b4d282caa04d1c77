"""Diffusion Policy speed on this machine: policy-call latency, training throughput, rollout cost.

Prints Markdown tables.  Default run: a few minutes on 2 CPU cores.

    python benchmarks/bench_policy.py [--threads 2] [--configs cpu,published_lowdim] [--quick] [--json out.json]

Each table times the plain UNet path, the fast path and the default
(``fast_unet: auto``: the faster by a cached start-up probe) side by side, and
gives each row's ratio to plain measured in the same run.

Tables:
1. one ``predict_action`` call at batch 1 (median / p95 ms) per policy config,
   sampler and UNet path (the fast channels-last path vs plain ``nn.Conv1d``);
2. one training step (forward + backward + AdamW + EMA) at the config's batch;
3. one batched policy call at batch 50 (a standard evaluation's call).
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from diffpolicy import speed
from diffpolicy.datasets import LinearNormalizer
from diffpolicy.policy.diffusion_policy import DiffusionPolicy, PolicyConfig
from diffpolicy.policy.ema import EMA
from diffpolicy.speed import speed_row

CONFIG_DIR = Path(__file__).resolve().parents[1] / "diffpolicy" / "configs"


def policy_group(name: str) -> dict:
    """PolicyConfig fields of ``policy=<name>`` as Hydra composes them (keypoints task), minus
    ``fast_unet``, which each row sets."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=[f"policy={name}"])
    fields = {k: v for k, v in OmegaConf.to_container(cfg.policy).items() if k not in ("name", "fast_unet")}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def make_policy(overrides: dict, fast: bool | str = True) -> DiffusionPolicy:
    torch.manual_seed(0)
    norm = LinearNormalizer().fit({"obs": torch.rand(256, 20) * 512, "action": torch.rand(256, 2) * 512})
    return DiffusionPolicy(PolicyConfig(fast_unet=fast, **overrides), norm)


def pct(x: list[float], q: float) -> float:
    s = sorted(x)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] * 1e3


PATHS = (("plain", False), ("fast", True), ("default", "auto"))   # default: fast_unet: auto


def label(key: str, policy: DiffusionPolicy) -> str:
    return f"default (auto: {'fast' if policy.unet.fast else 'plain'})" if key == "default" else key


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest for batch-1 calls on a busy 2-core machine)")
    ap.add_argument("--configs", default="cpu,cpu_wide")
    ap.add_argument("--steps", default="10,16", help="DDIM step counts for the latency table (16: the default)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128, help="training batch")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--json", default=None, help="write the rows and the machine to this JSON file")
    args = ap.parse_args()
    speed.keep_freed_memory()                # as the command-line entry points do
    torch.set_num_threads(args.threads)
    reps = 8 if args.quick else args.reps
    names = args.configs.split(",")
    groups = {name: policy_group(name) for name in names}
    m = speed.machine_info()
    print(f"{m['cpu_model']} ({m['cpu_capability']}), torch {m['torch']}, {m['threads']} threads, "
          f"load {m['load_average']}\n")
    records = []

    print("### Policy call at batch 1 (predict_action: encoder + sampler + unnormalise), paths interleaved\n")
    print("| policy | params | UNet path | sampler | median ms | p95 ms | vs plain |")
    print("|---|---|---|---|---|---|---|")
    obs1 = {"obs": torch.rand(1, 2, 20) * 512}
    for name in names:
        policies = {k: make_policy(groups[name], fast).eval() for k, fast in PATHS}
        n = sum(p.numel() for p in policies["plain"].parameters()) / 1e6
        samplers = ([("ddim", int(s)) for s in args.steps.split(",")] if name.startswith("cpu")
                    else [("ddim", 10), ("ddpm", 100)])
        for sampler, steps in samplers:
            r = reps if steps <= 20 else max(3, reps // 6)
            t = speed.time_samples({k: (lambda p=p: p.predict_action(obs1, sampler=sampler,
                                                                      num_inference_steps=steps))
                                    for k, p in policies.items()}, r, warmup=3)
            plain = statistics.median(t["plain"])
            for k, p in policies.items():
                med = statistics.median(t[k])
                print(f"| {name} | {n:.2f} M | {label(k, p)} | {sampler} {steps} | {med * 1e3:.1f} | "
                      f"{pct(t[k], 0.95):.1f} | {plain / med:.2f}x |", flush=True)
                records.append(speed_row(f"policy call batch 1 {name} {sampler} {steps} {label(k, p)}",
                                         med, plain, part="latency", policy=name, default=k == "default",
                                         p95_seconds=pct(t[k], 0.95) / 1e3))

    print(f"\n### Training step at batch {args.batch} (forward + backward + AdamW + EMA), paths interleaved\n")
    print("| policy | UNet path | ms / step | samples / s | vs plain |")
    print("|---|---|---|---|---|")
    batch = {"obs": torch.rand(args.batch, 2, 20) * 512, "action": torch.rand(args.batch, 16, 2) * 512}
    for name in names:
        steps, policies = {}, {}
        for k, fast in PATHS:
            policy = make_policy(groups[name], fast)
            policy.choose_train_path(args.batch)          # what diffpolicy-train does (auto only)
            ema = EMA(policy)
            opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)

            def step(policy=policy, ema=ema, opt=opt):
                loss = policy.compute_loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                ema.update(policy)
            steps[k], policies[k] = step, policy
        t = speed.time_interleaved(steps, max(3, reps // 3), warmup=2)
        for k, s_ in t.items():
            print(f"| {name} | {label(k, policies[k])} | {s_ * 1e3:.0f} | {args.batch / s_:.0f} | "
                  f"{t['plain'] / s_:.2f}x |", flush=True)
            records.append(speed_row(f"train step batch {args.batch} {name} {label(k, policies[k])}", s_,
                                     t["plain"], part="train", policy=name, default=k == "default"))

    print("\n### Batched policy call at batch 50 (one call of a standard 50-episode evaluation)\n")
    print("| policy | UNet path | sampler | median ms | vs plain |")
    print("|---|---|---|---|---|")
    obs50 = {"obs": torch.rand(50, 2, 20) * 512}
    for name in names:
        policies = {k: make_policy(groups[name], fast).eval() for k, fast in PATHS}
        cfg = policies["plain"].config
        t = speed.time_interleaved({k: (lambda p=p: p.predict_action(obs50)) for k, p in policies.items()},
                                   max(3, reps // 4), warmup=2)
        for k, p in policies.items():
            print(f"| {name} | {label(k, p)} | {cfg.sampler} {cfg.num_inference_steps} | "
                  f"{t[k] * 1e3:.1f} | {t['plain'] / t[k]:.2f}x |", flush=True)
            records.append(speed_row(f"policy call batch 50 {name} {label(k, p)}", t[k], t["plain"],
                                     part="batch50", policy=name, default=k == "default"))
    if args.json:
        speed.write_benchmark_json(args.json, "bench_policy", records, train_batch=args.batch)


if __name__ == "__main__":
    main()
