"""Demonstrations of any task: the arrays a task config names, read from a zarr store.

A :class:`DemoSpec` says what a policy observes and does, in the store's own key
names (``data/<key>`` of a :class:`~diffpolicy.datasets.replay_buffer.ReplayBuffer`):

* ``action_key`` with ``action_dim`` values per step;
* ``obs_keys``: the low-dimensional observation, the listed arrays flattened per
  step and concatenated in the given order into one vector of ``obs_dim`` values;
  a key may take a slice of its flattened values, ``"state[0:2]"``;
* ``cameras``: name -> :class:`CameraSpec` (store key, per-step ``(H, W, C)``
  shape, optional crop), any number, any sizes.

In memory (:class:`DemoData`, N = all steps of all episodes)::

    frames["obs"]      (N, Do) float32       (absent when there are no obs_keys)
    frames[<camera>]   (N, C, H, W) uint8    channels first; float stores must hold
                                             pixels 0..255 (rounded to integers)
    frames["action"]   (N, Da) float32

A batch of :func:`demo_loader` (raw units; the policy normalises)::

    low-dim only   {"obs": (B, To, Do), "action": (B, H, Da)}
    with cameras   {"obs": {"obs": (B, To, Do), <camera>: (B, To, C, h, w) float in [0, 1]},
                    "action": (B, H, Da)}

Every mismatch between the spec and the store (a missing key, another shape, a
dtype that is not a number, a total that is not ``obs_dim``) raises
:class:`DatasetError` naming the store, the key and both values.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from diffpolicy.datasets.crops import random_crop
from diffpolicy.datasets.errors import DatasetError
from diffpolicy.datasets.normalizer import LinearNormalizer
from diffpolicy.datasets.replay_buffer import ReplayBuffer
from diffpolicy.datasets.windows import BatchLoader, SequenceWindows, split_episodes

OBS = "obs"             # the low-dimensional vector's name in frames, batches and the normaliser
ACTION = "action"
RESERVED = (OBS, ACTION)
_KEY_RE = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_./-]*)(?:\[(-?\d*):(-?\d*)\])?$")


@dataclass(frozen=True)
class CameraSpec:
    key: str                                  # data/<key>: (N, H, W, C) uint8 or float pixels 0..255
    shape: tuple[int, int, int]               # (H, W, C) per step
    crop: tuple[int, int] | None = None       # (h, w): random in training, central at evaluation

    @property
    def chw(self) -> tuple[int, int, int]:
        h, w, c = self.shape
        return c, h, w


@dataclass(frozen=True)
class DemoSpec:
    action_dim: int
    obs_keys: tuple[str, ...] = ()
    obs_dim: int = 0
    cameras: Mapping[str, CameraSpec] = field(default_factory=dict)
    action_key: str = ACTION


def parse_key(spec: str) -> tuple[str, slice | None]:
    """``"state[0:2]"`` -> ``("state", slice(0, 2))``; ``"keypoint"`` -> ``("keypoint", None)``."""
    m = _KEY_RE.match(spec) if isinstance(spec, str) else None
    if m is None:
        raise DatasetError(f"bad observation key {spec!r}: expected a store key, optionally with a "
                           f"slice of its flattened values, e.g. 'state' or 'state[0:2]'")
    name, lo, hi = m.groups()
    if lo is None:
        return name, None
    return name, slice(int(lo) if lo else None, int(hi) if hi else None)


@dataclass
class DemoData:
    """One task's demonstrations held in memory; see the module docstring for ``frames``."""
    name: str
    frames: dict[str, torch.Tensor]
    episode_ends: np.ndarray
    path: Path
    cameras: tuple[str, ...] = ()

    @property
    def n_episodes(self) -> int:
        return int(len(self.episode_ends))

    @property
    def n_steps(self) -> int:
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.episode_ends, prepend=0)

    @property
    def obs_dim(self) -> int:
        """Do, the low-dimensional vector's size (0 without one)."""
        return int(self.frames[OBS].shape[1]) if OBS in self.frames else 0

    @property
    def action_dim(self) -> int:
        return int(self.frames[ACTION].shape[1])


def load_demos(store: str | Path | ReplayBuffer, spec: DemoSpec, name: str = "task") -> DemoData:
    """Open the store (a path, opened read-only, or an open :class:`ReplayBuffer`), check it
    against ``spec`` and load the arrays it names.

    Only those arrays are read, each checked for NaN/inf and undecodable chunks as it is read.
    """
    rb = store if isinstance(store, ReplayBuffer) else ReplayBuffer.open(store, mode="r")
    what = f"task {name!r}"
    if rb.n_episodes == 0:
        raise DatasetError(f"{rb.path}: store has no episodes")
    shapes, dtypes = rb.shapes, rb.dtypes

    def require(key: str, role: str) -> tuple[int, ...]:
        if key not in shapes:
            raise DatasetError(f"{rb.path}: data/{key} ({role} of {what}) is missing; the store has "
                               f"{rb.keys}")
        if dtypes[key].kind not in "fiu" or dtypes[key] == np.bool_:
            raise DatasetError(f"{rb.path}: data/{key} has dtype {dtypes[key].name}, {what} needs numbers")
        return shapes[key][1:]

    a_shape = require(spec.action_key, "the action")
    if a_shape != (spec.action_dim,):
        raise DatasetError(f"{rb.path}: data/{spec.action_key} has per-step shape {a_shape}, "
                           f"{what} expects action_dim={spec.action_dim}, i.e. ({spec.action_dim},)")
    frames: dict[str, np.ndarray] = {}
    parts, found = [], []
    for entry in spec.obs_keys:
        key, sl = parse_key(entry)
        size = int(np.prod(require(key, "an observation key"), dtype=np.int64))
        values = rb.read(key).astype(np.float32).reshape(rb.n_steps, size)
        if sl is not None:
            values = values[:, sl]
            if values.shape[1] == 0:
                raise DatasetError(f"{rb.path}: observation key {entry!r} selects no values of data/{key} "
                                   f"({size} per step)")
        parts.append(values)
        found.append(f"{entry}: {values.shape[1]}")
    if parts:
        obs = np.concatenate(parts, axis=1)
        if obs.shape[1] != spec.obs_dim:
            raise DatasetError(f"{rb.path}: the observation keys give {obs.shape[1]} values per step "
                               f"({', '.join(found)}), {what} expects obs_dim={spec.obs_dim}")
        frames[OBS] = obs
    elif spec.obs_dim:
        raise DatasetError(f"{what}: obs_dim={spec.obs_dim} but no obs_keys name where to read them")
    for cam, cs in spec.cameras.items():
        if cam in RESERVED:
            raise DatasetError(f"{what}: camera name {cam!r} is reserved (pick another than {RESERVED})")
        shape = require(cs.key, f"camera {cam!r}")
        if shape != tuple(cs.shape):
            raise DatasetError(f"{rb.path}: data/{cs.key} (camera {cam!r}) has per-step shape {shape}, "
                               f"{what} expects (H, W, C) = {tuple(cs.shape)}")
        frames[cam] = rb.read(cs.key, convert=_PixelsToUint8(rb.path, cs.key))
    frames[ACTION] = rb.read(spec.action_key).astype(np.float32)
    return DemoData(name=name, frames={k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in frames.items()},
                    episode_ends=rb.episode_ends, path=rb.path, cameras=tuple(spec.cameras))


class _PixelsToUint8:
    """Block converter (T, H, W, C) pixels 0..255 -> (T, C, H, W) uint8 (rounded); errors name the store."""

    def __init__(self, store: Path, key: str):
        self.store, self.key = store, key

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if block.dtype != np.uint8:
            if block.size and (block.min() < 0 or block.max() > 255):
                raise DatasetError(f"{self.store}: data/{self.key} values must be pixels in 0..255, found "
                                   f"{float(block.min())}..{float(block.max())}")
            block = np.rint(block).astype(np.uint8)
        return np.ascontiguousarray(block.transpose(0, 3, 1, 2))


def fit_normalizer(data: DemoData, episode_mask: np.ndarray | None = None) -> LinearNormalizer:
    """Min/max normaliser of ``data``'s low-dim keys (fitted on all episodes, as the original
    does, or on ``episode_mask``'s), plus the fixed [0, 1] -> [-1, 1] map for each camera."""
    frames = {k: v for k, v in data.frames.items() if k not in data.cameras}
    if episode_mask is not None:
        ends = data.episode_ends
        starts = np.concatenate([[0], ends[:-1]])
        step_mask = np.repeat(np.asarray(episode_mask, dtype=bool), ends - starts)
        frames = {k: v[torch.from_numpy(step_mask)] for k, v in frames.items()}
    return LinearNormalizer().fit(frames, image_keys=data.cameras)


def demo_loader(data: DemoData, batch_size: int = 256, split: str = "train", val_ratio: float = 0.02,
                seed: int = 42, max_train_episodes: int | None = None, horizon: int = 16,
                n_obs_steps: int = 2, n_action_steps: int = 8, crop: int | None = None,
                shuffle: bool | None = None, drop_last: bool = False,
                device: str | torch.device | None = None, frame_stride: int = 1,
                pad_after: int | None = None) -> BatchLoader:
    """Batches of windows for training (``split="train"``), validation ("val") or all episodes ("all").

    Batches as in the module docstring; ``crop`` (optional, cameras only) takes a random
    ``crop`` x ``crop`` square of every frame (an independent one per frame, from the
    loader's seeded generator).  The split is by episode (``split_episodes``: ``val_ratio``,
    ``seed``, ``max_train_episodes``; the original used 0.02, 42 and 90).  ``shuffle``
    defaults to True for "train" only.  ``device`` moves the frames there once (e.g.
    "cuda"); batches are then gathered on it.  ``frame_stride = k`` takes every k-th frame
    of the episodes (all k phases): a policy trained on it moves k times faster than the
    demonstrator.  ``pad_after`` (None: ``n_action_steps - 1``): see :class:`SequenceWindows`.
    """
    train_mask, val_mask = split_episodes(data.n_episodes, val_ratio, seed, max_train_episodes)
    masks = {"train": train_mask, "val": val_mask, "all": np.ones(data.n_episodes, dtype=bool)}
    if split not in masks:
        raise DatasetError(f"split must be one of {list(masks)}, got {split!r}")
    windows = SequenceWindows(data.episode_ends, horizon, n_obs_steps, n_action_steps, masks[split],
                              frame_stride, pad_after)
    frames = data.frames if device is None else {k: v.to(device) for k, v in data.frames.items()}
    n_frames = {k: (horizon if k == ACTION else n_obs_steps) for k in frames}
    if data.cameras:
        transform = _CameraBatch(data.cameras, crop)
    elif crop is not None:
        raise DatasetError(f"crop={crop} applies to camera images; task {data.name!r} has no cameras")
    else:
        transform = None
    return BatchLoader(frames, windows, n_frames, batch_size=batch_size,
                       shuffle=(split == "train") if shuffle is None else shuffle,
                       drop_last=drop_last, seed=seed, transform=transform)


class _CameraBatch:
    """Gathered uint8 frames -> optional random crop -> float (B, To, C, s, s) in [0, 1]; nests obs."""

    def __init__(self, cameras: tuple[str, ...], crop: int | None):
        self.cameras, self.crop = cameras, crop

    def __call__(self, batch: dict, generator: torch.Generator) -> dict:
        obs = {k: v for k, v in batch.items() if k != ACTION}
        for cam in self.cameras:
            img = obs[cam]                                   # (B, To, C, H, W) uint8
            if self.crop is not None:
                img = random_crop(img, self.crop, generator)  # cropped while still uint8: 4x less to copy
            obs[cam] = img.to(torch.float32).div_(255.0)
        return {"obs": obs, ACTION: batch[ACTION]}
