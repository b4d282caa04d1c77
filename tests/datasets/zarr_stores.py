"""Helpers that write small Push-T-shaped stores for the dataset tests."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from diffpolicy.datasets.replay_buffer import ReplayBuffer


def make_episode(T: int, rng: np.random.Generator, with_img: bool = True) -> dict[str, np.ndarray]:
    """A Push-T-shaped episode of T steps with random values (pixels are whole numbers)."""
    ep = {
        "state": rng.uniform(0, 512, (T, 5)).astype(np.float32),
        "action": rng.uniform(0, 512, (T, 2)).astype(np.float32),
        "keypoint": rng.uniform(0, 512, (T, 9, 2)).astype(np.float32),
        "n_contacts": rng.integers(0, 3, (T, 1)).astype(np.float32),
    }
    if with_img:
        ep["img"] = rng.integers(0, 256, (T, 96, 96, 3)).astype(np.float32)
    return ep


def write_store(path: Path, lengths=(7, 12, 5), zarr_format: int = 2, seed: int = 0,
                with_img: bool = True) -> list[dict[str, np.ndarray]]:
    """Create a store at ``path`` with one random episode per length; return the episodes."""
    rng = np.random.default_rng(seed)
    rb = ReplayBuffer.create(path, zarr_format=zarr_format)
    episodes = [make_episode(T, rng, with_img) for T in lengths]
    for ep in episodes:
        rb.add_episode(ep)
    return episodes


def writable_copy(src: Path, dst: Path) -> Path:
    """Copy a (possibly read-only) store and make the copy writable."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst
