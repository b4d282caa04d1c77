"""``diffpolicy-data``: inspect, verify, repair, download or generate demo stores.

    diffpolicy-data info [--path STORE] [--verify]   episodes, lengths, arrays (checks the structure)
    diffpolicy-data verify [--path STORE]            the same, after reading and checking every value
    diffpolicy-data repair STORE                     roll back a killed append, remove *.partial files
    diffpolicy-data download [--dest DATA_ROOT]      the official Push-T archive
    diffpolicy-data generate metaworld/TASK --episodes N --out STORE
        [--seed-start S] [--max-steps M] [--post-success-steps K]
                                                     scripted Meta-World demos (resumable; needs
                                                     the metaworld extra, docs/metaworld.md)
    diffpolicy-data self-play CHECKPOINT --out STORE --seeds START:END [--include-demos]
        [--n-envs N] [--batch EPISODES] [--action-stride K] [--n-action-steps N]
        [--sampler ddim|ddpm] [--num-inference-steps S] [--max-steps M] [--raw]
        [--sampling-seed S] [--device D] [--demo-store STORE]
                                                     a Push-T policy's successful rollouts as demos
                                                     (resumable; docs/datasets.md#self-play-demonstrations)

``--path`` defaults to ``diffpolicy.paths.pusht_zarr_path()``; ``repair`` has no
default, so it never writes into the shared demo store by accident (and it refuses
a store without write permission).  ``generate`` re-run with the same arguments
continues a store where a killed run stopped, and refuses a store made with other
settings; so does ``self-play`` (a later END extends its store).  Bad input ends
with one ``error:`` line and exit status 2; warnings (an interrupted append) print
as one ``warning:`` line.  Also runs as ``python -m diffpolicy.datasets``.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from diffpolicy import paths
from diffpolicy.cli._errors import run_cli
from diffpolicy.datasets.pusht import PUSHT_URL, download_pusht
from diffpolicy.datasets.replay_buffer import ReplayBuffer, repair_store


def print_info(path: Path | None, verify: bool = False) -> None:
    """Open ``path`` read-only (``verify``: read every value too) and print its summary."""
    rb = ReplayBuffer.open(path or paths.pusht_zarr_path(), mode="r", verify=verify)
    print(rb)
    lengths = rb.episode_lengths
    if len(lengths):
        print(f"episode lengths: min {lengths.min()}, max {lengths.max()}, mean {lengths.mean():.1f}")
    else:
        print("episode lengths: none (the store has no episodes yet)")
    for key, shape in sorted(rb.shapes.items()):
        print(f"  data/{key}: {shape} {rb.dtypes[key]}")
    if verify:
        print(f"verified: every value of {len(rb.keys)} arrays decodes and is finite")


def repair(path: Path) -> None:
    """Repair ``path`` (``repair_store``), say what was done, then show the store."""
    done = repair_store(path)
    for line in done or ["nothing to repair"]:
        print(f"{path}: {line}")
    print_info(path)


def generate(args: argparse.Namespace) -> None:
    """Run the scripted-demo generator (``generate_demos``), then show the store."""
    from diffpolicy.datasets import metaworld_demos as demos
    try:
        task = demos.parse_task(args.task)
    except ImportError as e:           # the metaworld extra is not installed
        raise demos.DemoGenerationError(str(e)) from e
    report = demos.generate_demos(
        task, args.episodes, args.out, seed_start=args.seed_start,
        max_steps=demos.DEFAULT_MAX_STEPS if args.max_steps is None else args.max_steps,
        post_success_steps=(demos.POST_SUCCESS_STEPS if args.post_success_steps is None
                            else args.post_success_steps))
    print(report.summary())
    print_info(args.out)


def parse_seeds(text: str) -> range:
    """``"400000:401000"`` -> ``range(400000, 401000)`` (END exclusive); ``SelfPlayError`` else."""
    from diffpolicy.eval.self_play import SelfPlayError, check_seeds
    try:
        start, end = (int(part) for part in text.split(":"))
    except ValueError:
        raise SelfPlayError(f"--seeds must be START:END (END exclusive), e.g. 400000:401000, "
                            f"found {text!r}") from None
    if end <= start:
        raise SelfPlayError(f"--seeds {text}: END must be greater than START (END is exclusive)")
    return check_seeds(range(start, end))


def self_play(args: argparse.Namespace) -> None:
    """Record a policy's successful Push-T rollouts (``record_successes``), then show the store."""
    from diffpolicy.eval.self_play import record_successes
    seeds = parse_seeds(args.seeds)
    report = record_successes(
        args.checkpoint, args.out, seeds, include_demos=args.include_demos, demo_store=args.demo_store,
        n_envs=args.n_envs, batch=args.batch, action_stride=args.action_stride,
        n_action_steps=args.n_action_steps, sampler=args.sampler,
        num_inference_steps=args.num_inference_steps, use_ema=not args.raw, max_steps=args.max_steps,
        sampling_seed=args.sampling_seed, device=args.device)
    print(report.summary())
    print_info(args.out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffpolicy-data",
                                     description="Demo data: inspect, verify, repair or download the "
                                                 "Push-T set; generate scripted Meta-World demos; record "
                                                 "a Push-T policy's successes as demos.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    default = "store (default: diffpolicy.paths.pusht_zarr_path())"
    p_info = sub.add_parser("info", help="validate a store's structure and print its episodes and arrays")
    p_info.add_argument("--path", type=Path, default=None, help=default)
    p_info.add_argument("--verify", action="store_true", help="also read every value (NaN/inf, corrupt chunks)")
    p_verify = sub.add_parser("verify", help="info after reading and checking every value")
    p_verify.add_argument("--path", type=Path, default=None, help=default)
    p_repair = sub.add_parser("repair", help="roll back an append killed mid-way, remove *.partial files")
    p_repair.add_argument("path", type=Path, help="a writable store (copy a read-only one first)")
    p_dl = sub.add_parser("download", help=f"download {PUSHT_URL}")
    p_dl.add_argument("--dest", type=Path, default=None, help="data root (default: diffpolicy.paths.data_root())")
    p_dl.add_argument("--url", default=PUSHT_URL)
    p_dl.add_argument("--sha256", default=None, help="expected SHA-256 of the archive")
    p_gen = sub.add_parser("generate", help="scripted Meta-World demos into a store (resumable)")
    p_gen.add_argument("task", help="metaworld/<task>, e.g. metaworld/reach-v3 (any Meta-World v3 task)")
    p_gen.add_argument("--episodes", type=int, required=True, help="successful episodes the store should hold")
    p_gen.add_argument("--out", type=Path, required=True, help="the store (created, or continued)")
    p_gen.add_argument("--seed-start", type=int, default=0, help="reset seed of the first episode (default 0)")
    p_gen.add_argument("--max-steps", type=int, default=None,
                       help="steps an episode has to succeed (default: the env's episode limit)")
    p_gen.add_argument("--post-success-steps", type=int, default=None,
                       help="steps recorded after the first success (default 10)")
    p_sp = sub.add_parser("self-play", help="a Push-T policy's successful rollouts as demos (resumable)")
    p_sp.add_argument("checkpoint", type=Path, help="a training checkpoint (.pt) or pretrained folder "
                                                    "of pusht_keypoints or pusht_state")
    p_sp.add_argument("--out", type=Path, required=True, help="the store (created, or continued)")
    p_sp.add_argument("--seeds", required=True,
                      help="reset seeds START:END (END exclusive), clear of the test seeds 100000..100499 "
                           "and the selection seeds 200000..200999, e.g. 400000:401000")
    p_sp.add_argument("--include-demos", action="store_true",
                      help="a new store starts with a copy of the human demos (then the rollouts)")
    p_sp.add_argument("--demo-store", type=Path, default=None,
                      help="the human demo store (default: diffpolicy.paths.pusht_zarr_path()); read only")
    p_sp.add_argument("--n-envs", type=int, default=None, help="envs side by side (default: --batch)")
    p_sp.add_argument("--batch", type=int, default=50,
                      help="episodes per rollout call, stored before the next (default 50)")
    p_sp.add_argument("--action-stride", type=int, default=None,
                      help="execute every k-th planned action (default: the checkpoint's)")
    p_sp.add_argument("--n-action-steps", type=int, default=None,
                      help="actions executed per policy call (default: the checkpoint's)")
    p_sp.add_argument("--sampler", choices=("ddim", "ddpm"), default=None, help="default: the checkpoint's")
    p_sp.add_argument("--num-inference-steps", type=int, default=None, help="default: the checkpoint's")
    p_sp.add_argument("--max-steps", type=int, default=None, help="env steps per episode (default: the task's)")
    p_sp.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA ones")
    p_sp.add_argument("--sampling-seed", type=int, default=0, help="seed of the sampler's noise (default 0)")
    p_sp.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    return parser


def _run(args: argparse.Namespace) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if args.cmd == "download":
                download_pusht(args.dest, args.url, args.sha256)
            elif args.cmd == "generate":
                generate(args)
            elif args.cmd == "self-play":
                self_play(args)
            elif args.cmd == "repair":
                repair(args.path)
            else:
                print_info(args.path, verify=args.cmd == "verify" or args.verify)
        finally:
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 on success (a user error exits with status 2 and one line)."""
    args = _parser().parse_args(argv)
    run_cli(lambda: _run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
