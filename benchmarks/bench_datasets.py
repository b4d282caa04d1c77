"""Training-batch throughput of our Push-T loader vs an original-style per-window loader.

Ours: every window precomputed as an index matrix; a batch is one gather per key
from in-memory tensors (images held as uint8).  Baseline ("original-style"): our
reimplementation of the approach of the original Diffusion Policy code -- a
``torch.utils.data.Dataset`` whose ``__getitem__`` slices one window out of the
numpy arrays in Python, pads it with copies of the edge frames, builds the obs
and converts to tensors, batched by a ``DataLoader``.  It samples all H frames
of every key, as the original Push-T datasets do; a second row takes only the
To observation frames (the original's ``key_first_k`` option) so the speed-up is
not only that.  Both run side by side in this process; the image rows apply the
same vectorised random 84x84 crop to the To observation frames.

    python benchmarks/bench_datasets.py                 # ~2-3 minutes on 2 cores
    python benchmarks/bench_datasets.py --seconds 10 --workers 0 1 --skip-image
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from diffpolicy import paths, speed
from diffpolicy.datasets.crops import random_crop
from diffpolicy.datasets.demos import demo_loader
from diffpolicy.datasets.pusht import load_pusht
from diffpolicy.datasets.replay_buffer import ReplayBuffer
from diffpolicy.datasets.windows import split_episodes

H, TO, TA = 16, 2, 8


# ---------------------------------------------------------------------- the baseline
def original_style_windows(episode_ends: np.ndarray, episode_mask: np.ndarray) -> np.ndarray:
    """(N, 4) rows [buffer_start, buffer_end, sample_start, sample_end], built episode by episode in Python."""
    rows = []
    start = 0
    for i, end in enumerate(episode_ends):
        length = int(end) - start
        if episode_mask[i]:
            for s in range(-(TO - 1), length - H + (TA - 1) + 1):
                b0, b1 = max(s, 0) + start, min(s + H, length) + start
                s0 = max(s, 0) - s
                rows.append([b0, b1, s0, s0 + (b1 - b0)])
        start = int(end)
    return np.array(rows, dtype=np.int64)


class OriginalStyleDataset(Dataset):
    """One window per ``__getitem__``: slice, pad with edge frames, build obs, to tensors."""

    def __init__(self, arrays: dict[str, np.ndarray], windows: np.ndarray, task: str, first_k: int | None):
        self.arrays, self.windows, self.task, self.first_k = arrays, windows, task, first_k

    def __len__(self) -> int:
        return len(self.windows)

    def _sample(self, key: str, b0: int, b1: int, s0: int, s1: int) -> np.ndarray:
        arr = self.arrays[key]
        n = H
        if self.first_k is not None and key != "action":  # only the observation frames
            n = self.first_k
            b1 = min(b1, b0 + max(n - s0, 0))
            s1 = s0 + (b1 - b0)
        sample = arr[b0:b1]
        out = np.zeros((n,) + arr.shape[1:], dtype=arr.dtype)
        if s0 > 0:
            out[:s0] = sample[0]
        if s1 < n:
            out[s1:] = sample[-1]
        out[s0:s1] = sample
        return out

    def __getitem__(self, i: int) -> dict:
        b0, b1, s0, s1 = (int(v) for v in self.windows[i])
        data = {k: self._sample(k, b0, b1, s0, s1) for k in self.arrays}
        if self.task == "keypoints":
            kp = data["keypoint"]
            obs = np.concatenate([kp.reshape(kp.shape[0], -1), data["state"][:, :2]], axis=-1)
            return {"obs": torch.from_numpy(obs.astype(np.float32)), "action": torch.from_numpy(data["action"])}
        image = np.moveaxis(data["img"], -1, 1) / 255.0
        return {"obs": {"image": torch.from_numpy(image.astype(np.float32)),
                        "agent_pos": torch.from_numpy(data["state"][:, :2].copy())},
                "action": torch.from_numpy(data["action"])}


# ---------------------------------------------------------------------- timing
def throughput(batches, seconds: float, after_batch=None, warmup: int = 2) -> tuple[float, int]:
    """Batches per second over about ``seconds`` (restarting the iterator at each epoch end)."""
    it = iter(batches)

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(batches)
            return next(it)

    for _ in range(warmup):
        b = next_batch()
        if after_batch:
            after_batch(b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        b = next_batch()
        if after_batch:
            after_batch(b)
        n += 1
    return n / (time.perf_counter() - t0), n


def crop_obs(batch: dict) -> None:
    """What the original does in its image encoder: keep To frames, random 84x84 crop."""
    for key, value in batch["obs"].items():      # the image, and the agent position (ours: "obs")
        batch["obs"][key] = random_crop(value[:, :TO], 84) if key == "image" else value[:, :TO]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", default=None, help="Push-T store (default: diffpolicy.paths.pusht_zarr_path())")
    ap.add_argument("--seconds", type=float, default=9.0, help="timing budget per row (split over the rounds)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per row (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1: the loader runs in the training process; small gathers gain nothing from threads)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0], help="DataLoader workers for the baseline")
    ap.add_argument("--max-train-episodes", type=int, default=90, help="the original's cap (0: none)")
    ap.add_argument("--skip-image", action="store_true")
    ap.add_argument("--json", default=None, help="write the rows and the machine to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = args.path or paths.pusht_zarr_path()
    cap = args.max_train_episodes or None

    rb = ReplayBuffer.open(path)
    train_mask, _ = split_episodes(rb.n_episodes, 0.02, 42, cap)
    print(f"Push-T loader benchmark: {speed.cpu_model()}, {torch.get_num_threads()} "
          f"torch threads, {rb.n_episodes} episodes / {rb.n_steps} steps, train episodes {int(train_mask.sum())}, "
          f"H={H} To={TO} Ta={TA}\n")

    rows, loads = [], []
    tasks = [("keypoints", 256, ["keypoint", "state", "action"])]
    if not args.skip_image:
        tasks.append(("image", 64, ["img", "state", "action"]))
    for task, bs, keys in tasks:
        t0 = time.perf_counter()
        data = load_pusht(path, task=task)
        loads.append((f"ours, task {task}", time.perf_counter() - t0,
                      sum(v.numel() * v.element_size() for v in data.frames.values())))
        t0 = time.perf_counter()
        arrays = rb.load_all(keys)  # the baseline keeps the float32 arrays, as the original does
        loads.append((f"original-style, task {task}", time.perf_counter() - t0,
                      sum(a.nbytes for a in arrays.values())))
        windows = original_style_windows(rb.episode_ends, train_mask)
        after = crop_obs if task == "image" else None
        # (label, workers, iterable, per-batch hook); measured in interleaved rounds, median reported
        candidates = [("ours (index-matrix gather)", "-",
                       demo_loader(data, batch_size=bs, max_train_episodes=cap,
                                    crop=84 if task == "image" else None), None)]
        for first_k, label in ((None, "original-style, all H frames"), (TO, "original-style, To obs frames")):
            ds = OriginalStyleDataset(arrays, windows, task, first_k)
            for w in args.workers:
                candidates.append((label, str(w), DataLoader(ds, batch_size=bs, shuffle=True, num_workers=w,
                                                              persistent_workers=w > 0), after))
        rates = {i: [] for i in range(len(candidates))}
        for _ in range(args.rounds):
            for i, (_, _, batches, hook) in enumerate(candidates):
                rates[i].append(throughput(batches, args.seconds / args.rounds, after_batch=hook)[0])
        for i, (label, w, _, _) in enumerate(candidates):
            rows.append((task, bs, label, w, float(np.median(rates[i])), min(rates[i]), max(rates[i])))
        del candidates, arrays, data

    print("| load | seconds | MB in memory |\n|---|---:|---:|")
    for name, sec, nbytes in loads:
        print(f"| {name} | {sec:.1f} | {nbytes / 2**20:.0f} |")
    print()
    print(f"| task | batch | loader | workers | batches/s (median of {args.rounds}) | range | samples/s | ours / this |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for task, bs, name, w, bps, lo, hi in rows:
        ref = next(r[4] for r in rows if r[0] == task and r[2].startswith("ours"))
        print(f"| {task} | {bs} | {name} | {w} | {bps:,.1f} | {lo:,.1f}-{hi:,.1f} | {bps * bs:,.0f} | {ref / bps:.1f}x |")
    if args.json:
        records = [{"name": f"{task} batch {bs} {name} workers {w}", "task": task, "batch": bs, "loader": name,
                    "workers": w, "batches_per_s": bps, "samples_per_s": bps * bs,
                    "ours_vs_this": next(r[4] for r in rows if r[0] == task and r[2].startswith("ours")) / bps}
                   for task, bs, name, w, bps, lo, hi in rows]
        speed.write_benchmark_json(args.json, "bench_datasets", records,
                                   loads=[{"name": n, "seconds": sec, "mb": b / 2**20} for n, sec, b in loads])


if __name__ == "__main__":
    main()
