"""Speed of the temporal UNet on this CPU: training-step throughput and batch-1 latency.

    python benchmarks/bench_unet.py --json out.json # ~3-5 min on the 2-core machine
    python benchmarks/bench_unet.py --threads 1     # one core (robust to a busy machine)
    python benchmarks/bench_unet.py --compile       # also the torch.compile'd GroupNorm+Mish

Prints Markdown tables.  "plain" is the reference formulation (``nn.Conv1d``,
``nn.GroupNorm``, ``nn.Mish`` in the (B, C, H) layout, i.e. the published
code's architecture re-implemented, trained with ``torch.optim.AdamW``
defaults); "fast" is ``ConditionalUnet1D(fast=True)`` (channels-last per-step
matmul convolutions, fused GroupNorm+Mish, ``AdamW(foreach=True)``); "default"
is what ``policy.fast_unet: auto`` runs on this machine (the faster of the two
by a cached start-up probe, :mod:`diffpolicy.policy.execution`).  All run
the same training step: forward, MSE loss, backward, optimiser step, batch 256,
horizon 16.  GFLOP/s divides the nominal FLOPs of the plain model's forward +
backward (``FlopCounterMode``, padding taps included) by the step time, so the
column compares throughput on equal work.  They are timed in alternation and
the median is reported: the machine is shared, so absolute numbers move with
the load (printed); the ratio measured side by side is the figure to trust.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffpolicy import speed
from diffpolicy.diffusion import fast_conv
from diffpolicy.diffusion.sampling import DiffusionSampler
from diffpolicy.diffusion.schedule import NoiseSchedule
from diffpolicy.diffusion.unet1d import ConditionalUnet1D, count_parameters
from diffpolicy.policy.execution import choose_unet_path
from diffpolicy.speed import speed_row

HORIZON, ACTION_DIM, COND_DIM = 16, 2, 40
CONFIGS = {   # name: (down_dims, step_embed_dim)
    "published low-dim [256,512,1024]": ((256, 512, 1024), 256),
    "candidate [128,256,512]": ((128, 256, 512), 128),
    "candidate [64,128,256]": ((64, 128, 256), 64),
    "candidate [32,64,128]": ((32, 64, 128), 32),
}


class Trainer:
    """One model + optimiser + fixed batch; ``step()`` runs one training step."""

    def __init__(self, dims, dsed, fast: bool | str, batch: int):
        torch.manual_seed(0)
        self.model = ConditionalUnet1D(ACTION_DIM, COND_DIM, dims, dsed, 5, fast=fast is not False)
        if fast == "auto":          # what fast_unet: auto trains with on this machine (cached probe)
            self.model.set_fast(choose_unet_path(self.model, batch, HORIZON, train=True))
        self.path = "fast" if self.model.fast else "plain"
        opt_kw = {"foreach": True} if fast is True else {}     # default: what train.py uses
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.95, 0.999),
                                     weight_decay=1e-6, **opt_kw)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(batch, HORIZON, ACTION_DIM, generator=g)
        self.t = torch.randint(0, 100, (batch,), generator=g)
        self.cond = torch.randn(batch, COND_DIM, generator=g)
        self.noise = torch.randn(batch, HORIZON, ACTION_DIM, generator=g)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = (self.model(self.x, self.t, self.cond) - self.noise).pow(2).mean()
        loss.backward()
        self.opt.step()


def train_flops(dims, dsed, batch: int) -> float:
    """Nominal FLOPs of forward + backward (plain model, FlopCounterMode)."""
    t = Trainer(dims, dsed, fast=False, batch=batch)
    with FlopCounterMode(display=False) as fc:
        (t.model(t.x, t.t, t.cond) - t.noise).pow(2).mean().backward()
    return float(fc.get_total_flops())


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def bench_training(names, batch: int, warmup: int, repeats: int, compile_gn: bool, records: list):
    rows = []
    for name in names:
        dims, dsed = CONFIGS[name]
        flops = train_flops(dims, dsed, batch)
        impls = {"plain": Trainer(dims, dsed, False, batch), "fast": Trainer(dims, dsed, True, batch),
                 "default": Trainer(dims, dsed, "auto", batch)}
        if compile_gn:
            impls["fast+compile"] = Trainer(dims, dsed, True, batch)
        params = count_parameters(impls["plain"].model)
        times = {k: [] for k in impls}
        for rep in range(warmup + repeats):          # alternate: both see the same load
            for key, trainer in impls.items():
                fast_conv.set_compile(key == "fast+compile")
                wall, cpu = timed(trainer.step)
                if rep >= warmup:
                    times[key].append((wall, cpu))
        fast_conv.set_compile(False)
        base = statistics.median(w for w, _ in times["plain"])
        for key in impls:
            wall = statistics.median(w for w, _ in times[key])
            cpu = statistics.median(c for _, c in times[key])
            gflops = flops / wall / 1e9
            label = f"default (auto: {impls[key].path})" if key == "default" else key
            rows.append([name, f"{params / 1e6:.2f}", label, f"{wall:.3f}", f"{cpu:.2f}",
                         f"{batch / wall:.0f}", f"{flops / 1e9:.1f}", f"{gflops:.0f}",
                         f"{base / wall:.2f}x"])
            records.append(speed_row(f"train {name} {label}", wall, base, part="train", model=name,
                                     params=params, batch=batch, default=key == "default"))
    return rows


def bench_latency(names, repeats: int, sampler_steps, compile_model: bool, records: list):
    """Per model: one UNet call (plain, fast[, compiled fast]) and whole sampling calls."""
    rows = []
    x, t = torch.randn(1, HORIZON, ACTION_DIM), torch.tensor([50])
    cond = torch.randn(1, COND_DIM)
    schedule = NoiseSchedule("cosine", 100)
    for name in names:
        dims, dsed = CONFIGS[name]
        plain = ConditionalUnet1D(ACTION_DIM, COND_DIM, dims, dsed, 5, fast=False).eval()
        fast = ConditionalUnet1D(ACTION_DIM, COND_DIM, dims, dsed, 5, fast=True).eval()
        fast.load_state_dict(plain.state_dict())
        default = ConditionalUnet1D(ACTION_DIM, COND_DIM, dims, dsed, 5, fast=True).eval()
        default.load_state_dict(plain.state_dict())
        default.fast = choose_unet_path(default, 1, HORIZON, train=False)   # fast_unet: auto at batch 1
        models = {"plain": plain, "fast": fast, "default": default}
        if compile_model:
            models["fast+compile"] = torch.compile(fast, dynamic=False)
        with torch.no_grad():
            res = {key: [] for key in models}
            for m in models.values():
                for _ in range(3):
                    m(x, t, cond)
            for _ in range(repeats):                   # alternate
                for key, m in models.items():
                    res[key].append(timed(lambda: m(x, t, cond)))
            plain_s = statistics.median(w for w, _ in res["plain"])
            for key, m in models.items():
                if key == "plain":
                    continue
                label = f"default (auto: {'fast' if m.fast else 'plain'})" if key == "default" else key
                row = [name, label, ms(res["plain"]), ms(res[key])]
                records.append(speed_row(f"unet call batch 1 {name} {label}",
                                         statistics.median(w for w, _ in res[key]), plain_s,
                                         part="latency", model=name, default=key == "default"))
                for method, steps in sampler_steps:
                    sampler = DiffusionSampler(schedule, method, steps)
                    sampler(m, (1, HORIZON, ACTION_DIM), cond)
                    n = max(3, repeats * 10 // steps)
                    row.append(ms([timed(lambda: sampler(m, (1, HORIZON, ACTION_DIM), cond))
                                   for _ in range(n)]))
                rows.append(row)
    return rows


def ms(samples: list[tuple[float, float]]) -> str:
    """'wall (CPU)' medians in milliseconds."""
    wall = statistics.median(w for w, _ in samples) * 1e3
    cpu = statistics.median(c for _, c in samples) * 1e3
    return f"{wall:.1f} ({cpu:.1f})"


def table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def check_equal() -> float:
    """Max |fast - plain| of one output on a random batch (sanity, same parameters)."""
    m = ConditionalUnet1D(ACTION_DIM, COND_DIM, (64, 128, 256), 64, 5, fast=True)
    x, t, c = torch.randn(32, HORIZON, ACTION_DIM), torch.randint(0, 100, (32,)), torch.randn(32, COND_DIM)
    with torch.no_grad():
        a = m(x, t, c)
        m.fast = False
        b = m(x, t, c)
    return (a - b).abs().max().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (this machine: 2 cores)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed training steps per model (median)")
    p.add_argument("--latency-repeats", type=int, default=30)
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile: fused GroupNorm+Mish in training, the whole "
                        "fast model at batch 1 (adds minutes of compilation)")
    p.add_argument("--skip-published", action="store_true", help="only the small candidates")
    p.add_argument("--json", default=None, help="write the rows and the machine to this JSON file")
    a = p.parse_args()
    speed.keep_freed_memory()                # as the command-line entry points do
    torch.set_num_threads(a.threads)
    names = [n for n in CONFIGS if not (a.skip_published and "published" in n)]
    m = speed.machine_info()
    print(f"# bench_unet: {m['cpu_model']} ({m['cpu_capability']}), {m['cores']} cores, torch {m['torch']}, "
          f"{m['threads']} threads; load average at start {m['load_average']}")
    records: list = []
    print(f"\nfast vs plain, max |difference| of one output: {check_equal():.2e}\n")
    print(f"## Training step (batch {a.batch}, horizon {HORIZON}, median of {a.repeats} "
          f"after {a.warmup} warm-up, alternating)\n")
    rows = bench_training(names, a.batch, a.warmup, a.repeats, a.compile, records)
    print(table(["model", "params (M)", "impl", "step (s)", "CPU s/step", "samples/s",
                 "GFLOP/step", "GFLOP/s", "speedup vs plain"], rows))
    sampler_steps = [("ddim", 10), ("ddim", 16), ("ddpm", 100)]
    print(f"\n## Batch-1 latency (median of {a.latency_repeats}: one UNet call, plain and "
          "impl side by side, and one whole sampling call = one policy call with impl)\n")
    lat = bench_latency(names, a.latency_repeats, sampler_steps, a.compile, records)
    print(table(["model", "impl", "UNet call, plain", "UNet call, impl"]
                + [f"{m.upper()} {s} steps, impl" for m, s in sampler_steps], lat))
    print("\nmilliseconds, wall (process CPU time); CPU time counts every thread, and on a "
          "busy machine wall time includes waiting for a core")
    print(f"\nload average at end {speed.load_average()}")
    if a.json:
        speed.write_benchmark_json(a.json, "bench_unet", records, batch=a.batch, horizon=HORIZON)


if __name__ == "__main__":
    main()
