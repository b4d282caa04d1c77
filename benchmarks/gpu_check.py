"""GPU check: train (and evaluate) every model for a few hundred steps on a device, beside the CPU.

    python benchmarks/gpu_check.py --json docs/results/gpu_check.json       # `make gpu-check`
    python benchmarks/gpu_check.py --device cpu --steps 3 --cpu-steps 2     # smoke run without a GPU

Rows: the Push-T policies (`cpu`, `cpu_wide`, `published_lowdim`, keypoints
task, real demos) through `diffpolicy.policy.train.train` and a short
`diffpolicy.eval.evaluate`; the NoProp table's models through
`diffpolicy.noprop.train.fit` on Fashion-MNIST.  Each runs `--steps` steps on
`--device` (kernels and precision chosen by the same start-up probes as any
run, see docs/speed.md) and `--cpu-steps` steps on the CPU, and the table gives
seconds per step on each, peak device memory and the speed-up over the CPU.
The device and machine are recorded in the JSON.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from diffpolicy import speed

POLICIES = ("cpu", "cpu_wide", "published_lowdim")
NOPROP_ROWS = ("noprop-dt", "backprop-dt", "backprop-resnet18", "backprop-resnet50",
               "noprop-ct-resnet18", "noprop-ct-resnet50")


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None


def compose_train_config(overrides: list[str]):
    """The training config `diffpolicy-train <overrides>` would run."""
    from hydra import compose, initialize_config_dir  # noqa: PLC0415

    import diffpolicy  # noqa: PLC0415
    config_dir = Path(diffpolicy.__file__).parent / "configs"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name="train", overrides=overrides)


def policy_seconds_per_step(policy: str, device: str, steps: int, workdir: Path,
                            episodes: int, role: str) -> tuple[float, dict | None]:
    """Seconds per training step of ``policy`` on ``device`` (after one warm-up run of 2 steps)."""
    from diffpolicy.eval.evaluate import evaluate  # noqa: PLC0415
    from diffpolicy.policy.train import train  # noqa: PLC0415

    def run(n: int, tag: str):
        cfg = compose_train_config([f"policy={policy}", "training=demo", f"device={device}",
                                    f"training.max_steps={n}", "training.warmup_steps=1",
                                    "training.val_every=0", f"training.checkpoint_every={n}",
                                    f"run_dir={workdir / f'{policy}-{role}-{tag}'}"])
        t0 = time.perf_counter()
        result = train(cfg, progress=False)
        return time.perf_counter() - t0, result

    warm, _ = run(2, "warm")
    total, result = run(steps + 2, "timed")
    per_step = (total - warm) / steps        # start-up (data, probes) cancels out
    report = None
    if episodes:
        report = evaluate({"checkpoint": str(result.run_dir / "checkpoints" / "latest.pt"),
                           "task": None, "n_episodes": episodes, "seed_start": 200000, "max_steps": 300,
                           "n_envs": episodes, "use_ema": True, "sampler": None,
                           "num_inference_steps": None, "n_action_steps": None, "sampling_seed": 0,
                           "device": device, "output_dir": str(result.run_dir / "eval"), "n_videos": 0,
                           "video_format": "mp4", "video_size": 96, "latency_calls": 20,
                           "num_threads": None})
    return per_step, report


def noprop_seconds_per_step(row_name: str, device: str, steps: int) -> float:
    from diffpolicy.noprop.bench import build_model, row_train_config  # noqa: PLC0415
    from diffpolicy.noprop.cli import load_config  # noqa: PLC0415
    from diffpolicy.datasets.fashion_mnist import fashion_mnist_splits  # noqa: PLC0415
    from diffpolicy.noprop.train import fit  # noqa: PLC0415

    cfg = load_config("bench")
    row = next(r for r in cfg["rows"] if r["name"] == row_name)
    data = fashion_mnist_splits(train_subset=128 * (steps + 2), test_subset=256, val_size=256)
    out = {}
    for n, tag in ((2, "warm"), (steps + 2, "timed")):
        torch.manual_seed(0)
        model = build_model(row, data)
        tcfg = row_train_config(dict(row, epochs=1), dict(cfg["train"], device=device, progress=False,
                                                         max_steps_per_epoch=n), 0)
        res = fit(model, data, tcfg, log=lambda *_: None)
        out[tag] = res["history"][0]["seconds"]
    return (out["timed"] - out["warm"]) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=300, help="timed training steps per model on --device")
    ap.add_argument("--cpu-steps", type=int, default=10, help="timed training steps per model on the CPU")
    ap.add_argument("--episodes", type=int, default=10, help="evaluation episodes per policy (0: none)")
    ap.add_argument("--only", default=None, help="comma-separated subset of the rows")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda but torch sees no CUDA device "
                         f"(torch {torch.__version__}); use --device cpu for a smoke run")
    names = [*POLICIES, *NOPROP_ROWS]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    rows = []
    print(f"| model | {args.device} s / step | cpu s / step | speed-up | peak {args.device} MB | eval score |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            _reset_peak(args.device)
            if name in POLICIES:
                dev_s, report = policy_seconds_per_step(name, args.device, args.steps, Path(tmp),
                                                        args.episodes, "device")
                cpu_s, _ = policy_seconds_per_step(name, "cpu", args.cpu_steps, Path(tmp), 0, "cpu")
                score = report["metrics"]["score"]["mean"] if report else None
            else:
                dev_s = noprop_seconds_per_step(name, args.device, args.steps)
                cpu_s = noprop_seconds_per_step(name, "cpu", args.cpu_steps)
                score = None
            peak = _peak_mb(args.device)
            rows.append(speed.speed_row(name, dev_s, cpu_s, cpu_seconds=cpu_s, peak_device_mb=peak,
                                        eval_score=score, device=args.device))
            print(f"| {name} | {dev_s:.4f} | {cpu_s:.4f} | {cpu_s / dev_s:.1f}x | "
                  f"{'-' if peak is None else f'{peak:.0f}'} | {'-' if score is None else f'{score:.3f}'} |",
                  flush=True)
    if args.json:
        # speedup_vs_plain here is the speed-up over the CPU (the 'plain' reference of this check)
        speed.write_benchmark_json(args.json, "gpu_check", rows, device=args.device, steps=args.steps,
                                   cpu_steps=args.cpu_steps)


if __name__ == "__main__":
    main()
