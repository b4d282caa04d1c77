"""Meta-World scripted experts on MT10: success, kept demos, episode lengths, generation time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_metaworld_experts.py   # ~5-10 min on 2 cores
    .venv/bin/python benchmarks/bench_metaworld_experts.py --seeds 20 --tasks reach-v3 --skip-render

Per task of ``MT10_TASKS``, over reset seeds ``0..N-1`` (one process, one env per task):

- expert success: Meta-World's scripted expert (``scripted_policy``) reports success
  within Meta-World's own limit of 500 steps (``run_episode(env, policy, seed, 500)``);
- kept: what ``diffpolicy-data generate`` keeps with its defaults, i.e.
  ``run_episode(env, policy, seed, DEFAULT_MAX_STEPS, POST_SUCCESS_STEPS).success``
  (success within 300 steps, still there 10 steps later).  Rollouts are deterministic per
  seed, so the 500-step rollout decides it except when its first success comes in steps
  291..300; only those seeds are rolled out again with the generator's settings;
- steps to the first success, mean / max, over the kept episodes (and, in the JSON, over
  every success within 500 steps);
- generation: wall time of ``generate_demos(task, 50, <temporary store>, progress=False)``
  from seed 0, the seeds it tried, and whether the seeds it skipped are the ones the pass
  above found not kept.

Per-call costs: building an env (the first build also imports Meta-World and MuJoCo),
``reset`` and ``step`` (timed inside the rollouts above), the expert's ``get_action``,
and one frame at 96 and 256 px (the first frame of an env separately: it makes the GL
context); where rendering fails the JSON records why.  ``--json PATH`` writes the rows
and the machine record (``diffpolicy.speed.machine_info``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from diffpolicy import speed
from diffpolicy.datasets.metaworld_demos import (DEFAULT_MAX_STEPS, POST_SUCCESS_STEPS, generate_demos,
                                                 run_episode, scripted_policy)
from diffpolicy.envs import metaworld as mw_env

EXPERT_LIMIT = 500   # Meta-World's own episode limit (its env refuses to step past it)


class TimedEnv:
    """Forwards ``reset`` / ``step`` to a :class:`MetaWorldEnv`, recording each call's wall time."""

    def __init__(self, env):
        self.env, self.reset_s, self.step_s = env, [], []

    def reset(self, **kw):
        t0 = time.perf_counter()
        out = self.env.reset(**kw)
        self.reset_s.append(time.perf_counter() - t0)
        return out

    def step(self, action):
        t0 = time.perf_counter()
        out = self.env.step(action)
        self.step_s.append(time.perf_counter() - t0)
        return out


class TimedPolicy:
    """Forwards ``get_action`` to a scripted expert, recording each call's wall time."""

    def __init__(self, policy, sink: list):
        self.policy, self.sink = policy, sink

    def get_action(self, obs):
        t0 = time.perf_counter()
        out = self.policy.get_action(obs)
        self.sink.append(time.perf_counter() - t0)
        return out


def _stats(steps: list[int]) -> dict:
    return {"n": len(steps), "mean": float(np.mean(steps)) if steps else None,
            "max": int(max(steps)) if steps else None}


def measure_task(task: str, n_seeds: int, gen_episodes: int | None, tmp: Path) -> dict:
    t0 = time.perf_counter()
    env = mw_env.MetaWorldEnv(task, terminate_on_success=False)
    build_s = time.perf_counter() - t0
    timed, policy_s = TimedEnv(env), []
    expert_steps, kept_steps, kept_seeds, rerun = [], [], [], 0
    t0 = time.perf_counter()
    for seed in range(n_seeds):
        ep = run_episode(timed, TimedPolicy(scripted_policy(task), policy_s), seed, EXPERT_LIMIT,
                         POST_SUCCESS_STEPS)
        s = ep.success_step
        if s is not None:
            expert_steps.append(s)
        if s is None or s > DEFAULT_MAX_STEPS:
            kept = False
        elif s + POST_SUCCESS_STEPS <= DEFAULT_MAX_STEPS:   # the generator's rollout is this one
            kept = ep.final_success
        else:                                               # it stops at 300: roll out as it does
            kept = run_episode(env, scripted_policy(task), seed, DEFAULT_MAX_STEPS, POST_SUCCESS_STEPS).success
            rerun += 1
        if kept:
            kept_steps.append(s)
            kept_seeds.append(seed)
    rollout_s = time.perf_counter() - t0
    env.close()
    row = {"task": task, "seeds": n_seeds,
           "expert_success": len(expert_steps) / n_seeds, "kept": len(kept_seeds) / n_seeds,
           "steps_kept": _stats(kept_steps), "steps_expert": _stats(expert_steps),
           "expert_successes_over_300": sum(s > DEFAULT_MAX_STEPS for s in expert_steps),
           "seeds_rolled_out_again": rerun, "rollout_seconds": rollout_s,
           "build_seconds": build_s,
           "reset_ms": {"mean": 1e3 * statistics.fmean(timed.reset_s), "median": 1e3 * statistics.median(timed.reset_s),
                        "calls": len(timed.reset_s)},
           "step_ms": {"mean": 1e3 * statistics.fmean(timed.step_s), "median": 1e3 * statistics.median(timed.step_s),
                       "calls": len(timed.step_s)},
           "get_action_ms": {"mean": 1e3 * statistics.fmean(policy_s), "median": 1e3 * statistics.median(policy_s)}}
    if gen_episodes:
        t0 = time.perf_counter()
        rep = generate_demos(task, gen_episodes, tmp / f"{task}.zarr", progress=False)
        gen_s = time.perf_counter() - t0
        tried = rep.last_seed + 1
        expected = None
        if tried <= n_seeds:   # the seeds it skipped should be exactly those found not kept above
            expected = sorted(set(range(tried)) - set(kept_seeds)) == sorted(rep.failed_seeds)
        row["generation"] = {"episodes": gen_episodes, "seconds": gen_s, "report_seconds": rep.seconds,
                             "seeds_tried": tried, "failed_seeds": rep.failed_seeds,
                             "skipped_seeds_match_kept": expected}
    return row


def measure_render(task: str, sizes: list[int], frames: int) -> list[dict]:
    rows = []
    for size in sizes:
        row = {"name": f"render {size} px", "task": task, "size": size,
               "mujoco_gl": os.environ.get("MUJOCO_GL")}
        env = None
        try:
            env = mw_env.MetaWorldEnv(task, render_mode="rgb_array", render_size=size)
            env.reset(seed=0)
            t0 = time.perf_counter()
            env.render()
            row["first_frame_seconds"] = time.perf_counter() - t0
            times = []
            for _ in range(frames):
                env.step(env.action_space.sample())
                t0 = time.perf_counter()
                env.render()
                times.append(time.perf_counter() - t0)
            row["mujoco_gl"] = os.environ.get("MUJOCO_GL")   # set by the first frame when unset
            row.update(frames=frames, frame_ms={"mean": 1e3 * statistics.fmean(times),
                                                "median": 1e3 * statistics.median(times)})
        except Exception as e:   # no EGL / OSMesa: record why
            row["error"] = f"{type(e).__name__}: {e}"
        finally:
            if env is not None:
                env.close()
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200, help="reset seeds 0..N-1 per task")
    parser.add_argument("--tasks", nargs="+", default=list(mw_env.MT10_TASKS))
    parser.add_argument("--gen-episodes", type=int, default=50,
                        help="episodes of the timed generate_demos run (0: skip it)")
    parser.add_argument("--render-sizes", type=int, nargs="+", default=[96, 256])
    parser.add_argument("--render-frames", type=int, default=20, help="frames timed per size")
    parser.add_argument("--skip-render", action="store_true")
    parser.add_argument("--json", default=None, help="write the rows and the machine to this JSON file")
    args = parser.parse_args()

    t0 = time.perf_counter()
    try:
        versions = mw_env.metaworld_versions()
    except ImportError as e:   # the optional extra is missing: nothing to measure (make bench goes on)
        print(f"Meta-World not available, skipped: {e}")
        return
    import_s = time.perf_counter() - t0
    print(f"machine: {speed.cpu_model()}, {os.cpu_count()} CPU cores visible, load {speed.load_average()}; "
          f"metaworld {versions['metaworld']}, mujoco {versions['mujoco']}; wall-clock, noisy on a "
          f"shared machine\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_mw_") as tmp:
        for task in args.tasks:
            rows.append(measure_task(task, args.seeds, args.gen_episodes, Path(tmp)))
            r = rows[-1]
            print(f"[bench] {task}: expert {100 * r['expert_success']:.1f} %, kept {100 * r['kept']:.1f} %, "
                  f"{r['rollout_seconds']:.1f} s", flush=True)

    print(f"\n### MT10 scripted experts, seeds 0..{args.seeds - 1}\n")
    print(f"| task | expert success ({EXPERT_LIMIT} steps) | kept ({DEFAULT_MAX_STEPS} steps, held) "
          f"| steps to success, mean / max | generation, {args.gen_episodes} episodes |")
    print("|---|---|---|---|---|")
    for r in rows:
        k, g = r["steps_kept"], r.get("generation")
        steps = f"{k['mean']:.1f} / {k['max']}" if k["n"] else "-"
        gen = f"{g['seconds']:.1f} s ({g['seeds_tried']})" if g else "-"
        print(f"| {r['task']} | {100 * r['expert_success']:.1f} % | {100 * r['kept']:.1f} % | {steps} | {gen} |")

    build = [r["build_seconds"] for r in rows]
    costs = {"name": "per-call costs", "first_build_seconds": build[0], "first_build_task": rows[0]["task"],
             "import_seconds": import_s, "build_seconds_min": min(build[1:] or build),
             "build_seconds_max": max(build[1:] or build),
             "reset_ms_mean": statistics.fmean(r["reset_ms"]["mean"] for r in rows),
             "step_ms_mean": statistics.fmean(r["step_ms"]["mean"] for r in rows),
             "get_action_ms_mean": statistics.fmean(r["get_action_ms"]["mean"] for r in rows)}
    print("\n### Per-call costs (means over tasks; reset / step / get_action timed inside the rollouts)\n")
    print("| what | time |")
    print("|---|---|")
    print(f"| import Meta-World and MuJoCo | {costs['import_seconds']:.2f} s |")
    print(f"| first env build ({costs['first_build_task']}) | {costs['first_build_seconds']:.2f} s |")
    print(f"| env build, other tasks | {costs['build_seconds_min']:.2f} .. {costs['build_seconds_max']:.2f} s |")
    print(f"| reset | {costs['reset_ms_mean']:.1f} ms |")
    print(f"| step | {costs['step_ms_mean']:.2f} ms |")
    print(f"| expert get_action | {costs['get_action_ms_mean']:.3f} ms |")
    render = [] if args.skip_render else measure_render(args.tasks[0], args.render_sizes, args.render_frames)
    for r in render:
        if "error" in r:
            print(f"| frame {r['size']} px | failed: {r['error']} |")
        else:
            print(f"| frame {r['size']} px (first / later, MUJOCO_GL={r['mujoco_gl']}) "
                  f"| {r['first_frame_seconds']:.2f} s / {r['frame_ms']['mean']:.0f} ms |")
    if args.json:
        speed.write_benchmark_json(args.json, "bench_metaworld_experts", [*rows, costs, *render],
                                   versions=versions, max_steps=DEFAULT_MAX_STEPS,
                                   post_success_steps=POST_SUCCESS_STEPS, expert_limit=EXPERT_LIMIT,
                                   env={k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MUJOCO_GL")})


if __name__ == "__main__":
    main()
