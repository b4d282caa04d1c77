"""Push-T demonstrations: tasks, data location, download, and the training batch loader.

Tasks (what a policy observes; the action is always the 2-d agent target):

==========  ===========================================================  =======
task        obs per step                                                 keys read
==========  ===========================================================  =======
state       5-d state (agent x, y, block x, y, angle)                    state, action
keypoints   20-d: 9 block keypoints (18, x/y interleaved) + agent x, y   keypoint, state, action
image       96x96 RGB frame + agent x, y                                 img, state, action
==========  ===========================================================  =======

Images are held in memory as uint8 (N, 3, 96, 96), channels first (0.7 GB
instead of the stored 2.8 GB float32 (N, 96, 96, 3)); the published pixels are
whole numbers 0..255, so this is lossless for them (other stores are rounded
to the nearest integer).  Batches carry them as float (B, To, 3, s, s) in [0, 1],
s = 96, or 84 with the loader's optional random crop.

Where the data is: an explicit ``path``; else ``diffpolicy.paths.pusht_zarr_path()``
(``$DIFFPOLICY_DATA``, then ``../shared/data``, then ``./data``, each followed by
``pusht/pusht_cchi_v7_replay.zarr``); ``download_pusht`` fetches the official archive.

Command line (``diffpolicy.cli.data``)::

    diffpolicy-data info|verify [--path STORE]
    diffpolicy-data repair STORE
    diffpolicy-data download [--dest DATA_ROOT]
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffpolicy import paths
from diffpolicy.datasets.errors import ChecksumError, DatasetError
from diffpolicy.datasets.normalizer import LinearNormalizer
from diffpolicy.datasets.replay_buffer import ArraySpec, ReplayBuffer
from diffpolicy.datasets.windows import BatchLoader, SequenceWindows, split_episodes

PUSHT_URL = "https://diffusion-policy.cs.columbia.edu/data/training/pusht.zip"
PUSHT_STORE_NAME = "pusht_cchi_v7_replay.zarr"
# SHA-256 of the published store's file list: sorted lines "<sha256 of file>  ./<relative path>\n"
# (the content of pusht_cchi_v7_replay.SHA256SUMS, sorted by path); see ``tree_sha256``.
PUSHT_TREE_SHA256 = "cf89fb4b9366da44184ab2b69dccbe5e61c28fcccd8aaf3d426e22a505f5a087"

_FLOAT = ("float32", "float64")
PUSHT_SCHEMA = {
    "state": ArraySpec((5,), _FLOAT),
    "action": ArraySpec((2,), _FLOAT),
    "keypoint": ArraySpec((9, 2), _FLOAT),
    "img": ArraySpec((96, 96, 3), _FLOAT + ("uint8",)),
    "n_contacts": ArraySpec((1,), _FLOAT),
}
TASK_KEYS = {
    "state": ("state", "action"),
    "keypoints": ("keypoint", "state", "action"),
    "image": ("img", "state", "action"),
}
IMAGE_KEY = "image"


@dataclass
class PushTData:
    """One Push-T task held in memory.

    ``frames`` (N = all steps of all episodes):
      - state / keypoints: ``{"obs": (N, Do) float32, "action": (N, 2) float32}``, Do = 5 / 20
      - image: ``{"image": (N, 3, 96, 96) uint8, "agent_pos": (N, 2) float32, "action": (N, 2) float32}``
    Units: world pixels (0..512) for positions and actions, radians for the angle.
    """
    task: str
    frames: dict[str, torch.Tensor]
    episode_ends: np.ndarray
    path: Path

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
    def obs_keys(self) -> tuple[str, ...]:
        return (IMAGE_KEY, "agent_pos") if self.task == "image" else ("obs",)

    @property
    def obs_dim(self) -> int | None:
        """Do of the low-dim tasks (5 or 20); None for the image task."""
        return None if self.task == "image" else int(self.frames["obs"].shape[1])


def load_pusht(path: str | Path | None = None, task: str = "keypoints") -> PushTData:
    """Open a Push-T store, check it fits ``task``, and load that task's arrays.

    Only the arrays the task needs are read (the keypoints task never touches
    the images), each checked for NaN/inf and undecodable chunks as it is read.
    Raises ``DatasetError`` naming the store and key on any mismatch.
    """
    if task not in TASK_KEYS:
        raise DatasetError(f"unknown Push-T task {task!r}; expected one of {list(TASK_KEYS)}")
    if path is None:
        path = paths.pusht_zarr_path()
        if not path.exists():
            raise FileNotFoundError(f"Push-T demos not found at {path} (default location). Pass a path, "
                                    f"set ${paths.DATA_ENV_VAR} to the folder holding pusht/, or run "
                                    f"`python -m diffpolicy.datasets download`")
    keys = TASK_KEYS[task]
    rb = ReplayBuffer.open(path, mode="r")
    rb.check_schema({k: PUSHT_SCHEMA[k] for k in keys}, what=f"Push-T task '{task}'")
    if rb.n_episodes == 0:
        raise DatasetError(f"{rb.path}: store has no episodes")
    state = rb.read("state").astype(np.float32)
    action = rb.read("action").astype(np.float32)
    if task == "state":
        frames = {"obs": state, "action": action}
    elif task == "keypoints":
        kp = rb.read("keypoint").astype(np.float32)
        frames = {"obs": np.concatenate([kp.reshape(len(kp), -1), state[:, :2]], axis=1), "action": action}
    else:
        frames = {IMAGE_KEY: rb.read("img", convert=_PixelsToUint8(rb.path)), "agent_pos": state[:, :2].copy(),
                  "action": action}
    return PushTData(task=task, frames={k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in frames.items()},
                     episode_ends=rb.episode_ends, path=rb.path)


class _PixelsToUint8:
    """Block converter (T, 96, 96, 3) float pixels 0..255 -> (T, 3, 96, 96) uint8 (rounded);
    errors name the store."""

    def __init__(self, store: Path):
        self.store = store

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if block.dtype != np.uint8:
            if block.size and (block.min() < 0 or block.max() > 255):
                raise DatasetError(f"{self.store}: data/img values must be pixels in 0..255, found "
                                   f"{float(block.min())}..{float(block.max())}")
            block = np.rint(block).astype(np.uint8)
        return np.ascontiguousarray(block.transpose(0, 3, 1, 2))


def fit_normalizer(data: PushTData, episode_mask: np.ndarray | None = None) -> LinearNormalizer:
    """Min/max normaliser of ``data``'s low-dim keys (fitted on all episodes, as the original
    does, or on ``episode_mask``'s), plus the fixed [0, 1] -> [-1, 1] map for ``"image"``."""
    frames = {k: v for k, v in data.frames.items() if k != IMAGE_KEY}
    if episode_mask is not None:
        ends = data.episode_ends
        starts = np.concatenate([[0], ends[:-1]])
        step_mask = np.repeat(np.asarray(episode_mask, dtype=bool), ends - starts)
        frames = {k: v[torch.from_numpy(step_mask)] for k, v in frames.items()}
    return LinearNormalizer().fit(frames, image_keys=(IMAGE_KEY,) if data.task == "image" else ())


def pusht_loader(data: PushTData, batch_size: int = 256, split: str = "train", val_ratio: float = 0.02,
                 seed: int = 42, max_train_episodes: int | None = None, horizon: int = 16,
                 n_obs_steps: int = 2, n_action_steps: int = 8, crop: int | None = None,
                 shuffle: bool | None = None, drop_last: bool = False,
                 device: str | torch.device | None = None, frame_stride: int = 1) -> BatchLoader:
    """Batches of windows for training (``split="train"``), validation ("val") or all episodes ("all").

    Each batch (raw units; normalise in the policy with ``fit_normalizer``'s result):
      - state / keypoints: ``{"obs": (B, To, Do), "action": (B, H, 2)}``
      - image: ``{"obs": {"image": (B, To, 3, s, s) float32 in [0, 1], "agent_pos": (B, To, 2)},
        "action": (B, H, 2)}`` with s = 96, or s = ``crop`` when a random crop is asked for
        (an independent crop per frame, drawn from the loader's seeded generator).
    The split is by episode (``split_episodes``: ``val_ratio``, ``seed``, ``max_train_episodes``;
    the original used 0.02, 42 and 90).  ``shuffle`` defaults to True for "train" only.
    ``device`` moves the frames there once (e.g. "cuda"); batches are then gathered on it.
    ``frame_stride = k`` takes every k-th frame of the episodes (all k phases): a policy
    trained on it plans and moves k times faster than the demonstrator.
    """
    train_mask, val_mask = split_episodes(data.n_episodes, val_ratio, seed, max_train_episodes)
    masks = {"train": train_mask, "val": val_mask, "all": np.ones(data.n_episodes, dtype=bool)}
    if split not in masks:
        raise DatasetError(f"split must be one of {list(masks)}, got {split!r}")
    windows = SequenceWindows(data.episode_ends, horizon, n_obs_steps, n_action_steps, masks[split],
                              frame_stride)
    frames = data.frames if device is None else {k: v.to(device) for k, v in data.frames.items()}
    n_frames = {k: (horizon if k == "action" else n_obs_steps) for k in frames}
    if data.task == "image":
        transform = _ImageBatch(crop)
    elif crop is not None:
        raise DatasetError(f"crop={crop} only applies to the image task, not {data.task!r}")
    else:
        transform = None
    return BatchLoader(frames, windows, n_frames, batch_size=batch_size,
                       shuffle=(split == "train") if shuffle is None else shuffle,
                       drop_last=drop_last, seed=seed, transform=transform)


class _ImageBatch:
    """Gathered uint8 frames -> optional random crop -> float (B, To, 3, s, s) in [0, 1]; nests obs."""

    def __init__(self, crop: int | None):
        self.crop = crop

    def __call__(self, batch: dict, generator: torch.Generator) -> dict:
        img = batch[IMAGE_KEY]  # (B, To, 3, 96, 96) uint8
        if self.crop is not None:
            img = random_crop(img, self.crop, generator)  # cropped while still uint8: 4x less to copy
        img = img.to(torch.float32).div_(255.0)
        return {"obs": {IMAGE_KEY: img, "agent_pos": batch["agent_pos"]}, "action": batch["action"]}


# ---------------------------------------------------------------------- image crops
def random_crop(images: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random ``size`` x ``size`` crop of every image of ``images`` (..., C, H, W), each with its
    own offset drawn from ``generator`` (uniform over all H - size + 1 by W - size + 1 positions).

    Vectorised and copy-light: every output row is ``size`` consecutive elements of
    the (contiguous) input, starting at ``((m * C + c) * H + oy[m] + i) * W + ox[m]``
    for image m.  An overlapping strided view makes each element the start of such
    a run, and one ``index_select`` picks all the runs (5x faster than indexing a
    pixel at a time).  Works on any dtype and device.
    """
    h, w = _check_crop(images, size)
    flat = images.reshape((-1,) + images.shape[-3:]).contiguous()       # (M, C, H, W)
    n_img, n_ch = flat.shape[:2]
    dev = images.device
    oy = torch.randint(0, h - size + 1, (n_img, 1, 1), generator=generator).to(dev)
    ox = torch.randint(0, w - size + 1, (n_img, 1, 1), generator=generator).to(dev)
    m = torch.arange(n_img, device=dev)[:, None, None]
    ch = torch.arange(n_ch, device=dev)[None, :, None]
    i = torch.arange(size, device=dev)[None, None, :]
    starts = ((m * n_ch + ch) * h + oy + i) * w + ox                    # (M, C, size)
    buf = flat.reshape(-1)
    runs = buf.as_strided((buf.numel() - size + 1, size), (1, 1))       # row k = buf[k : k + size]
    return runs.index_select(0, starts.reshape(-1)).reshape(images.shape[:-2] + (size, size))


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Central ``size`` x ``size`` crop of (..., C, H, W) (the evaluation counterpart of ``random_crop``)."""
    h, w = _check_crop(images, size)
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top:top + size, left:left + size]


def _check_crop(images: torch.Tensor, size: int) -> tuple[int, int]:
    if images.ndim < 3:
        raise DatasetError(f"crop needs images (..., C, H, W), got shape {tuple(images.shape)}")
    h, w = int(images.shape[-2]), int(images.shape[-1])
    if not (0 < size <= min(h, w)):
        raise DatasetError(f"crop size {size} does not fit images of {h}x{w}")
    return h, w


# ---------------------------------------------------------------------- download
def tree_sha256(root: str | Path) -> str:
    """SHA-256 of a directory's file list: sorted lines ``"<file sha256>  ./<relative path>\\n"``."""
    root = Path(root)
    lines = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        lines.append((f.relative_to(root).as_posix(), h.hexdigest()))
    lines.sort()
    return hashlib.sha256("".join(f"{d}  ./{rel}\n" for rel, d in lines).encode()).hexdigest()


def download_pusht(dest: str | Path | None = None, url: str = PUSHT_URL, sha256: str | None = None,
                   tree_sha: str | None = PUSHT_TREE_SHA256, progress: bool = True) -> Path:
    """Download and unpack the official Push-T archive into ``dest/pusht/`` (default: the data root).

    The download streams through a tqdm progress bar and is hashed on the way;
    ``sha256`` (optional) pins the archive, ``tree_sha`` (default: the published
    store's) checks the unpacked files.  Nothing is left in ``dest`` unless every
    check passes.  Returns the store path; an existing store is returned as is.
    """
    dest = Path(dest) if dest is not None else paths.data_root()
    target = dest / "pusht" / PUSHT_STORE_NAME
    if target.exists():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".pusht-download-") as tmp:
        archive = Path(tmp) / "pusht.zip"
        digest = _fetch(url, archive, progress)
        if sha256 is not None and digest != sha256.lower():
            raise ChecksumError(f"{url}: archive SHA-256 is {digest}, expected {sha256}")
        unpacked = Path(tmp) / "unpacked"
        _safe_unzip(archive, unpacked)
        found = [p for p in unpacked.rglob(PUSHT_STORE_NAME) if p.is_dir()]
        if len(found) != 1:
            raise DatasetError(f"{url}: expected one {PUSHT_STORE_NAME} folder in the archive, found {len(found)}")
        if tree_sha is not None:
            got = tree_sha256(found[0])
            if got != tree_sha:
                raise ChecksumError(f"{url}: unpacked {PUSHT_STORE_NAME} has content SHA-256 {got}, "
                                    f"expected {tree_sha}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(found[0], target)
    print(f"Push-T demos in {target} (archive SHA-256 {digest})")
    return target


def _fetch(url: str, out: Path, progress: bool) -> str:
    """Stream ``url`` into ``out`` with a progress bar; returns the SHA-256 hex digest."""
    from tqdm import tqdm

    h = hashlib.sha256()
    try:
        resp = urllib.request.urlopen(url)
    except (urllib.error.URLError, OSError) as e:
        raise DatasetError(f"cannot download {url}: {getattr(e, 'reason', e)} (no network? pass a local "
                           f"path or set ${paths.DATA_ENV_VAR} instead)") from e
    with resp, open(out, "wb") as fh:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="pusht.zip", disable=not progress) as bar:
            for block in iter(lambda: resp.read(1 << 20), b""):
                fh.write(block)
                h.update(block)
                bar.update(len(block))
    return h.hexdigest()


def _safe_unzip(archive: Path, out: Path) -> None:
    """Extract ``archive`` into ``out``, refusing members that would land outside it."""
    out = out.resolve()
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            target = (out / name).resolve()
            if target != out and out not in target.parents:
                raise DatasetError(f"{archive}: member {name!r} would extract outside {out}")
        zf.extractall(out)
