"""Push-T env benchmark: step throughput and demo-replay fidelity.

    .venv/bin/python benchmarks/bench_envs.py              # ~1-2 min on 2 cores
    .venv/bin/python benchmarks/bench_envs.py --steps 5000 --image-frames 25650

Prints Markdown tables:
1. env steps per second for state and image observations, single env and
   vectors of 8 (SyncVectorEnv, AsyncVectorEnv);
2. the full 206-demo replay: time, worst state error, keypoint agreement,
   n_contacts agreement, successes and mean max reward;
3. rendering the dataset's states vs its ``img`` frames.
"""
from __future__ import annotations

import argparse
import os
import time

import gymnasium as gym
import numpy as np
import zarr

import diffpolicy.envs  # noqa: F401  (registers the ids)
from diffpolicy import speed
from diffpolicy.envs.geometry import coverage
from diffpolicy.envs.pusht import PushTEnv
from diffpolicy.envs.render import SceneRenderer
from diffpolicy.paths import pusht_zarr_path


def single_env_rate(obs_type: str, steps: int) -> float:
    env = PushTEnv(obs_type=obs_type)
    actions = np.random.default_rng(0).uniform(0, 512, (steps, 2))
    env.reset(seed=0)
    t0 = time.perf_counter()
    for t, a in enumerate(actions):
        _, _, terminated, _, _ = env.step(a)
        if terminated or t % 300 == 299:
            env.reset(seed=t)
    return steps / (time.perf_counter() - t0)


def vector_env_rate(obs_type: str, n: int, steps: int, mode: str) -> float:
    cls = gym.vector.SyncVectorEnv if mode == "sync" else gym.vector.AsyncVectorEnv
    venv = cls([lambda: gym.make(f"diffpolicy/PushT-{obs_type}-v0") for _ in range(n)])
    try:
        venv.reset(seed=list(range(n)))
        actions = np.random.default_rng(0).uniform(0, 512, (steps, n, 2)).astype(np.float32)
        venv.step(actions[0])  # warm-up (worker start-up)
        t0 = time.perf_counter()
        for a in actions[1:]:
            venv.step(a)
        return (steps - 1) * n / (time.perf_counter() - t0)
    finally:
        venv.close()


def replay_all(store) -> dict:
    state, action = store["data/state"][:], store["data/action"][:]
    keypoint, n_contacts = store["data/keypoint"][:], store["data/n_contacts"][:, 0]
    ends = store["meta/episode_ends"][:]
    starts = np.r_[0, ends[:-1]]
    env = PushTEnv(obs_type="keypoints")
    pos_err = ang_err = 0.0
    kp_err, contact_ok, successes, max_rewards = [], 0, 0, []
    t0 = time.perf_counter()
    for i, (s, e) in enumerate(zip(starts, ends)):
        obs, info = env.reset(seed=i)
        best = info["coverage"]
        for t in range(s, e):
            st = env.state()
            pos_err = max(pos_err, float(np.abs(st[:4] - state[t, :4]).max()))
            ang_err = max(ang_err, float(abs((st[4] - state[t, 4] + np.pi) % (2 * np.pi) - np.pi)))
            kp_err.append(np.abs(obs[:18].reshape(9, 2) - keypoint[t]).max())
            contact_ok += info["n_contacts"] == n_contacts[t]
            obs, reward, terminated, _, info = env.step(action[t])
            best = max(best, info["coverage"])
        successes += best > 0.95
        max_rewards.append(min(1.0, best / 0.95))
    seconds = time.perf_counter() - t0
    kp_err = np.asarray(kp_err)
    no_contact = n_contacts == 0
    return {"episodes": len(ends), "steps": int(ends[-1]), "seconds": seconds,
            "pos_err": pos_err, "ang_err": ang_err,
            "kp_within_1e-3": float((kp_err < 1e-3).mean()),
            "kp_within_1e-3_no_contact": float((kp_err[no_contact] < 1e-3).mean()),
            "kp_median": float(np.median(kp_err)), "kp_p99": float(np.percentile(kp_err, 99)),
            "kp_max": float(kp_err.max()), "n_contacts_agree": contact_ok / len(kp_err),
            "successes": successes, "mean_max_reward": float(np.mean(max_rewards))}


def image_fidelity(store, n_frames: int) -> dict:
    state = store["data/state"]
    total = state.shape[0]
    idx = np.arange(total) if n_frames >= total else np.sort(
        np.random.default_rng(0).choice(total, n_frames, replace=False))
    renderer = SceneRenderer()
    equal, mad, worst = [], [], 1.0
    t_render = 0.0
    for lo in range(0, len(idx), 1000):
        chunk = idx[lo:lo + 1000]
        states = state.get_orthogonal_selection((chunk, slice(None))).astype(np.float64)
        imgs = store["data/img"].get_orthogonal_selection((chunk,))
        for s, d in zip(states, imgs):
            t0 = time.perf_counter()
            ours = renderer.render(s[:2], s[2:5], 96).astype(np.float32)
            t_render += time.perf_counter() - t0
            eq = (ours == d).all(-1).mean()
            equal.append(eq)
            mad.append(np.abs(ours - d).mean())
            worst = min(worst, eq)
    return {"frames": len(idx), "equal": float(np.mean(equal)), "worst": float(worst),
            "mad": float(np.mean(mad)), "ms_per_frame": 1000 * t_render / len(idx)}


def coverage_cost(n: int = 20000) -> float:
    rng = np.random.default_rng(0)
    poses = np.c_[256 + rng.uniform(-80, 80, (n, 2)), rng.uniform(-np.pi, np.pi, n)]
    t0 = time.perf_counter()
    for p in poses:
        coverage(p)
    return 1e6 * (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="steps per single-env timing")
    parser.add_argument("--vec-steps", type=int, default=200, help="vector steps per vector timing")
    parser.add_argument("--image-frames", type=int, default=2000,
                        help="dataset frames rendered for the image check (25650 = all)")
    parser.add_argument("--skip-replay", action="store_true", help="skip the 206-demo replay")
    parser.add_argument("--json", default=None, help="write the rows and the machine to this JSON file")
    args = parser.parse_args()
    records: list[dict] = []

    print(f"machine: {speed.cpu_model()}, {os.cpu_count()} CPU cores visible; "
          f"numbers are wall-clock and noisy on a shared machine\n")
    print("### Env steps per second (random actions in [0, 512]^2)\n")
    print("| obs_type | single env | SyncVectorEnv x8 | AsyncVectorEnv x8 |")
    print("|---|---:|---:|---:|")
    for obs_type, steps in (("state", args.steps), ("image", max(args.steps // 5, 100))):
        single = single_env_rate(obs_type, steps)
        sync = vector_env_rate(obs_type, 8, args.vec_steps, "sync")
        asyn = vector_env_rate(obs_type, 8, args.vec_steps, "async")
        print(f"| {obs_type} | {single:,.0f} | {sync:,.0f} | {asyn:,.0f} |")
        records.append({"name": f"{obs_type} env steps/s", "single": single, "sync_x8": sync, "async_x8": asyn})
    cov = coverage_cost()
    records.append({"name": "coverage us per call", "microseconds": cov})
    print(f"\nexact T-T coverage (4 convex clips): {cov:.1f} us per call near the goal\n")

    path = pusht_zarr_path()
    if not path.exists():
        print(f"(demo store not found at {path}: replay and image checks skipped)")
        if args.json:
            speed.write_benchmark_json(args.json, "bench_envs", records)
        return
    store = zarr.open_group(str(path), mode="r")
    if not args.skip_replay:
        r = replay_all(store)
        print("### Replaying all demos from reset(seed=i)\n")
        print("| episodes | steps | time (s) | steps/s | max state err (px) | max angle err (rad) "
              "| successes | mean max reward |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        records.append({"name": "replay all demos", **r})
        print(f"| {r['episodes']} | {r['steps']} | {r['seconds']:.1f} | {r['steps'] / r['seconds']:,.0f} "
              f"| {r['pos_err']:.2e} | {r['ang_err']:.2e} | {r['successes']} | {r['mean_max_reward']:.4f} |")
        print("\n| keypoint obs vs data: within 1e-3 px | same, frames without contact | median (px) "
              "| p99 (px) | max (px) | n_contacts equal |")
        print("|---:|---:|---:|---:|---:|---:|")
        print(f"| {100 * r['kp_within_1e-3']:.2f} % | {100 * r['kp_within_1e-3_no_contact']:.2f} % "
              f"| {r['kp_median']:.1e} | {r['kp_p99']:.3f} | {r['kp_max']:.2f} "
              f"| {100 * r['n_contacts_agree']:.2f} % |\n")
    f = image_fidelity(store, args.image_frames)
    print("### Rendering dataset states at 96 x 96 vs the dataset's img\n")
    print("| frames | pixels identical | worst frame | mean abs diff (0..255) | render ms/frame |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {f['frames']} | {100 * f['equal']:.3f} % | {100 * f['worst']:.2f} % | {f['mad']:.4f} "
          f"| {f['ms_per_frame']:.2f} |")
    records.append({"name": "image fidelity", **f})
    if args.json:
        speed.write_benchmark_json(args.json, "bench_envs", records)


if __name__ == "__main__":
    main()
