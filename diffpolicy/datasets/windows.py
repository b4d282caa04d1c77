"""Sequence windows over concatenated episodes, and a vectorised batch loader.

A window is H consecutive frames of one episode (or, with ``frame_stride = k``,
H frames k apart: ``s, s + k, .., s + k (H - 1)``, one window for every start
``s``, so every phase of the subsampled episode is used).  With the reference padding
(pad_before = To - 1, pad_after = Ta - 1) an episode of length L has windows
starting at s = -pad_before .. L - H + pad_after; frame s + j of a window is
clamped to [0, L - 1], i.e. the first / last frame repeats.  So the first
window of an episode is [0, 0, 1, ..., 14] for H = 16, To = 2 (it predicts
actions from the episode's very first observation), and the last one ends with
Ta - 1 copies of the final frame.

All windows are precomputed once as an index matrix ``indices`` (N_windows, H)
of global frame numbers with the padding baked in, so a batch of any key is one
gather ``frames[indices[ids, :k]]`` -- no per-window Python.
"""
from __future__ import annotations

from typing import Callable, Iterator, Mapping

import numpy as np
import torch

from diffpolicy.datasets.errors import DatasetError

Batch = dict  # {key: Tensor (B, k, ...)} (a transform may nest, e.g. batch["obs"]["image"])


def split_episodes(n_episodes: int, val_ratio: float = 0.02, seed: int = 42,
                   max_train_episodes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Episode-level train/validation split, as the original Diffusion Policy makes it.

    ``round(n_episodes * val_ratio)`` episodes (at least 1 and at most
    ``n_episodes - 1`` when ``val_ratio > 0``) are drawn for validation with
    ``np.random.default_rng(seed)``; the rest train, optionally subsampled to
    ``max_train_episodes`` with a fresh generator of the same seed.  With the
    original's settings (206 episodes, 0.02, seed 42, cap 90) this selects the
    same 4 validation and 90 training episodes as the original code.

    Returns:
        (train_mask, val_mask): bool arrays (n_episodes,), disjoint.
    """
    if n_episodes < 1:
        raise DatasetError(f"split_episodes: need at least one episode, got {n_episodes}")
    if not 0 <= val_ratio < 1:
        raise DatasetError(f"split_episodes: val_ratio must be in [0, 1), got {val_ratio}")
    val = np.zeros(n_episodes, dtype=bool)
    if val_ratio > 0 and n_episodes > 1:
        n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
        val[np.random.default_rng(seed).choice(n_episodes, size=n_val, replace=False)] = True
    train = ~val
    if max_train_episodes is not None:
        if max_train_episodes < 1:
            raise DatasetError(f"split_episodes: max_train_episodes must be >= 1, got {max_train_episodes}")
        idx = np.nonzero(train)[0]
        if len(idx) > max_train_episodes:
            keep = idx[np.random.default_rng(seed).choice(len(idx), size=max_train_episodes, replace=False)]
            train = np.zeros(n_episodes, dtype=bool)
            train[keep] = True
    return train, val


def window_indices(episode_ends: np.ndarray, horizon: int, pad_before: int, pad_after: int,
                   episode_mask: np.ndarray | None = None,
                   frame_stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Every valid window of the selected episodes, padding included.

    Args:
        episode_ends: (E,) exclusive end of each episode in the concatenated frames.
        horizon: H, frames per window.
        pad_before, pad_after: how far windows may start before frame 0 / end after the last
            frame, in window positions (``frame_stride`` frames each).
        episode_mask: (E,) bool, episodes to use (default all).
        frame_stride: k, frames between consecutive window positions.
    Returns:
        indices: (N, H) int64 global frame index of each window position.
        episode: (N,) int64 episode of each window.
    """
    ends = np.asarray(episode_ends, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    lengths = ends - starts
    episodes = np.arange(len(ends))
    if episode_mask is not None:
        mask = np.asarray(episode_mask, dtype=bool)
        if mask.shape != ends.shape:
            raise DatasetError(f"episode_mask has shape {mask.shape}, expected {ends.shape}")
        episodes = episodes[mask]
    k = frame_stride
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DatasetError(f"frame_stride must be an integer >= 1, got {frame_stride!r}")
    n_win = np.maximum(lengths[episodes] - k * (horizon - 1 - pad_before - pad_after), 0)
    ep = np.repeat(episodes, n_win)                                 # (N,)
    first = np.repeat(np.cumsum(n_win) - n_win, n_win)             # (N,) index of the episode's first window
    rel_start = np.arange(len(ep)) - first - k * pad_before         # (N,) window start within its episode
    rel = rel_start[:, None] + k * np.arange(horizon)[None, :]      # (N, H)
    rel = np.clip(rel, 0, lengths[ep][:, None] - 1)                 # edge frames repeat
    return rel + starts[ep][:, None], ep.astype(np.int64)


class SequenceWindows:
    """All (episode-respecting, padded) windows of horizon H.

    Attributes:
        indices: (N, H) int64 tensor of global frame indices.
        episode: (N,) int64 tensor, episode of each window.
        horizon, n_obs_steps, n_action_steps, pad_before (= To - 1), pad_after (default Ta - 1,
        the reference's rule: windows start up to that many frames past the last one whose
        whole plan lies in the episode, their missing frames repeating the last).

    ``frame_stride = k``: window positions are k frames apart (see the module docstring).
    """

    def __init__(self, episode_ends: np.ndarray, horizon: int = 16, n_obs_steps: int = 2,
                 n_action_steps: int = 8, episode_mask: np.ndarray | None = None, frame_stride: int = 1,
                 pad_after: int | None = None):
        if min(horizon, n_obs_steps, n_action_steps) < 1:
            raise DatasetError(f"horizon, n_obs_steps, n_action_steps must be >= 1, "
                               f"got {horizon}, {n_obs_steps}, {n_action_steps}")
        if n_obs_steps + n_action_steps - 1 > horizon:
            raise DatasetError(f"n_obs_steps - 1 + n_action_steps = {n_obs_steps - 1 + n_action_steps} "
                               f"exceeds horizon {horizon}: the executed actions must lie in the window")
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        if pad_after is not None and not 0 <= pad_after <= horizon - n_obs_steps:
            raise DatasetError(f"pad_after must be in [0, horizon - n_obs_steps = {horizon - n_obs_steps}], "
                               f"got {pad_after}")
        self.pad_before = n_obs_steps - 1
        self.pad_after = n_action_steps - 1 if pad_after is None else pad_after
        idx, ep = window_indices(episode_ends, horizon, self.pad_before, self.pad_after, episode_mask,
                                 frame_stride)
        self.indices = torch.from_numpy(idx)
        self.episode = torch.from_numpy(ep)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def to(self, device: torch.device | str) -> "SequenceWindows":
        """Move the index tensors (e.g. to the GPU holding the frames); returns self."""
        self.indices, self.episode = self.indices.to(device), self.episode.to(device)
        return self

    def gather(self, frames: torch.Tensor, window_ids: torch.Tensor, n_frames: int | None = None) -> torch.Tensor:
        """``frames`` (N_frames, ...) -> (B, n_frames or H, ...) for windows ``window_ids`` (B,).
        Uses the first ``n_frames`` positions of each window (obs: To; actions: H)."""
        # index_select rather than advanced indexing: same result, and it stays single-threaded
        # for small sizes (advanced indexing can be 100x slower on a busy 2-core machine)
        idx = self.indices.index_select(0, window_ids.to(self.indices.device))
        if n_frames is not None:
            idx = idx[:, :n_frames]
        return frames.index_select(0, idx.reshape(-1)).reshape(idx.shape + frames.shape[1:])


class BatchLoader:
    """Iterates batches of windows gathered from in-memory frame tensors.

    Args:
        frames: ``{key: (N_frames, ...)}`` tensors, all on one device.
        windows: the windows to draw from (e.g. train episodes only).
        n_frames: ``{key: k}`` frames per window for each key (default H for all);
            obs keys usually take To, actions H.
        batch_size, shuffle, drop_last: as in ``torch.utils.data.DataLoader``.
        seed: seeds the shuffling (and the generator passed to ``transform``).
        transform: optional ``f(batch, generator) -> batch`` (e.g. crop + nesting).
    Each epoch (one ``iter``) visits every window once.  Batches are on the frames' device.
    """

    def __init__(self, frames: Mapping[str, torch.Tensor], windows: SequenceWindows,
                 n_frames: Mapping[str, int] | None = None, batch_size: int = 256, shuffle: bool = True,
                 drop_last: bool = False, seed: int = 0,
                 transform: Callable[[Batch, torch.Generator], Batch] | None = None):
        if batch_size < 1:
            raise DatasetError(f"batch_size must be >= 1, got {batch_size}")
        n_steps = {k: int(v.shape[0]) for k, v in frames.items()}
        if len(set(n_steps.values())) != 1:
            raise DatasetError(f"frame tensors have different lengths {n_steps}")
        if len(windows) and int(windows.indices.max()) >= next(iter(n_steps.values())):
            raise DatasetError(f"windows index frame {int(windows.indices.max())} but frames have "
                               f"{next(iter(n_steps.values()))}")
        self.frames = dict(frames)
        self.device = next(iter(self.frames.values())).device
        self.windows = windows.to(self.device)
        self.n_frames = {k: (n_frames or {}).get(k, windows.horizon) for k in self.frames}
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.transform = transform
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.windows)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def sample_batch(self, window_ids: torch.Tensor) -> Batch:
        """The batch of windows ``window_ids`` (B,): ``{key: (B, n_frames[key], ...)}``, then ``transform``."""
        batch = {k: self.windows.gather(v, window_ids, self.n_frames[k]) for k, v in self.frames.items()}
        return self.transform(batch, self.generator) if self.transform is not None else batch

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.windows)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            yield self.sample_batch(order[b * self.batch_size:(b + 1) * self.batch_size])
