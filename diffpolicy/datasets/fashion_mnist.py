"""Fashion-MNIST from its IDX files (gzipped or raw), with a seeded validation split.

The four files are the ones Debian's ``dataset-fashion-mnist`` installs under
``/usr/share/datasets/fashion-mnist`` (``diffpolicy.paths.fmnist_dir()`` finds
them); any folder holding them works.  torchvision's download is used only
when asked for (``download=True``) and only where the network is reachable.

Normalisation statistics are computed from the training images actually used
for training (never from validation or test images); on the full 60k training
set they are mean 0.2860, std 0.3530 (MNIST's 0.1307 / 0.3081 are wrong here).

Usage::

    data = fashion_mnist_splits(val_size=5000, seed=0)
    data.train_x.shape   # (55000, 1, 28, 28) float32, normalised
    for x, y in iterate_batches(data.train_x, data.train_y, 128, shuffle=True, generator=g): ...
"""
from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffpolicy import paths
from diffpolicy.datasets.crops import random_crop
from diffpolicy.datasets.errors import CorruptDataError, DatasetError
from diffpolicy.host_copy import to_device

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MAGIC = {1: 0x00000801, 3: 0x00000803}   # ndim -> magic number of unsigned-byte IDX files


def find_idx_file(root: Path, stem: str) -> Path:
    """``root/stem.gz`` or ``root/stem``; a clear FileNotFoundError naming both otherwise."""
    root = Path(root)
    for cand in (root / f"{stem}.gz", root / stem):
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}; expected the four IDX files "
        f"{', '.join(FILES.values())} (gzipped or raw). Install Debian's dataset-fashion-mnist, "
        f"set {paths.FMNIST_ENV_VAR}, or pass download=True where online.")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``ndim`` dimensions into a uint8 array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise CorruptDataError(f"{path}: cannot read IDX file ({e})") from e
    if len(raw) < 4 + 4 * ndim:
        raise CorruptDataError(f"{path}: {len(raw)} bytes is too short for an IDX header "
                               f"of {ndim} dims")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _MAGIC[ndim]:
        raise CorruptDataError(f"{path}: IDX magic number expected {_MAGIC[ndim]:#010x} "
                               f"(uint8, {ndim} dims), found {magic:#010x}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) + 4 + 4 * ndim
    if len(raw) != expected:
        raise CorruptDataError(f"{path}: header says shape {shape} ({expected} bytes), "
                               f"file has {len(raw)} bytes (truncated or corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@functools.lru_cache(maxsize=2)
def _read_all(root: Path) -> dict[str, np.ndarray]:
    """The four arrays of ``root`` (cached: quick runs load the set once per process)."""
    out = {}
    for key, stem in FILES.items():
        arr = read_idx(find_idx_file(root, stem), 3 if key.endswith("images") else 1)
        arr.setflags(write=False)
        out[key] = arr
    return out


def load_fashion_mnist(root: str | Path | None = None, download: bool = False
                       ) -> dict[str, np.ndarray]:
    """The raw arrays: ``train_images (60000, 28, 28)``, ``train_labels (60000,)``,
    ``test_images (10000, 28, 28)``, ``test_labels (10000,)``, all uint8, read-only.

    ``root`` defaults to ``diffpolicy.paths.fmnist_dir()``.  With ``download=True``
    and files missing, torchvision downloads them into ``root`` (needs network).
    """
    root = Path(root) if root is not None else paths.fmnist_dir()
    if download and not all((root / f"{s}.gz").is_file() or (root / s).is_file()
                            for s in FILES.values()):
        root = _torchvision_download(root)
    out = dict(_read_all(Path(root).resolve()))
    for split in ("train", "test"):
        n_img, n_lab = len(out[f"{split}_images"]), len(out[f"{split}_labels"])
        if n_img != n_lab:
            raise CorruptDataError(f"{root}: {split} has {n_img} images but {n_lab} labels")
        if out[f"{split}_labels"].max() >= len(CLASSES):
            raise CorruptDataError(f"{root}: {split} labels expected in 0..9, found max "
                                   f"{out[f'{split}_labels'].max()}")
    return out


def _torchvision_download(root: Path) -> Path:
    """Download with torchvision into ``root``; returns the folder holding the raw files."""
    from torchvision.datasets import FashionMNIST  # imported only when asked to download
    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as e:  # network errors come in many types
        raise DatasetError(f"Fashion-MNIST download into {root} failed ({e}); "
                           f"are we online? Otherwise point root at the IDX files.") from e
    return Path(root) / "FashionMNIST" / "raw"


def normalization_stats(images: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Mean and std of pixel values scaled to [0, 1]; ``images`` uint8 ``(N, H, W)``."""
    x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return float(x.mean(dtype=np.float64) / 255.0), float(x.std(dtype=np.float64, ddof=1) / 255.0)


@dataclass
class FMNISTSplits:
    """Normalised float32 images ``(N, 1, 28, 28)`` and int64 labels ``(N,)`` per split.

    ``val_index`` are the rows of the 60k training file used for validation,
    ``train_index`` the rows used for training (disjoint); the test split is the
    t10k file, never used for model selection.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: float
    std: float
    train_index: torch.Tensor
    val_index: torch.Tensor

    @property
    def n_classes(self) -> int:
        return len(CLASSES)


def fashion_mnist_splits(root: str | Path | None = None, val_size: int = 5000, seed: int = 0,
                         train_subset: int | None = None, test_subset: int | None = None,
                         download: bool = False) -> FMNISTSplits:
    """Train / validation / test splits; validation carved from the training file by ``seed``.

    ``train_subset`` / ``test_subset`` keep only the first n rows (after the seeded
    shuffle for train) for quick runs.  Statistics come from the training rows.
    """
    raw = load_fashion_mnist(root, download)
    n = len(raw["train_images"])
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}), got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_index, train_index = perm[:val_size], perm[val_size:]
    if train_subset is not None:
        if train_subset < 1:
            raise ValueError(f"train_subset must be >= 1, got {train_subset}")
        train_index = train_index[:train_subset]
    images = torch.from_numpy(raw["train_images"].copy())
    labels = torch.from_numpy(raw["train_labels"].astype(np.int64))
    mean, std = normalization_stats(images[train_index])

    def prep(img: torch.Tensor) -> torch.Tensor:
        return ((img.float() / 255.0 - mean) / std).unsqueeze(1).contiguous()

    test_x = torch.from_numpy(raw["test_images"].copy())
    test_y = torch.from_numpy(raw["test_labels"].astype(np.int64))
    if test_subset is not None:
        test_x, test_y = test_x[:test_subset], test_y[:test_subset]
    return FMNISTSplits(train_x=prep(images[train_index]), train_y=labels[train_index],
                        val_x=prep(images[val_index]), val_y=labels[val_index],
                        test_x=prep(test_x), test_y=test_y, mean=mean, std=std,
                        train_index=train_index, val_index=val_index)


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
                    generator: torch.Generator | None = None, drop_last: bool = False):
    """Yield ``(x[i], y[i])`` batches; shuffled with ``generator`` when ``shuffle``."""
    n = len(x)
    order = to_device(torch.randperm(n, generator=generator) if shuffle else torch.arange(n), x.device)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


AUGMENTATIONS = ("none", "crop_flip")


def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator | None = None,
                  pad: int = 2) -> torch.Tensor:
    """Training-time augmentation of a normalised batch ``x (B, C, H, W)``.

    ``"none"`` returns ``x`` itself; ``"crop_flip"`` pads each image by ``pad``
    pixels with its own background (the image's minimum, i.e. a black pixel
    after normalisation), takes a random ``H x W`` crop, and mirrors half the
    images left-right (the usual Fashion-MNIST / CIFAR recipe).
    """
    if mode not in AUGMENTATIONS:
        raise ValueError(f"augment: expected one of {AUGMENTATIONS}, got {mode!r}")
    if mode == "none":
        return x
    b, c, h, w = x.shape
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    padded = background.expand(b, c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad:pad + h, pad:pad + w] = x
    out = random_crop(padded, (h, w), generator)
    flip = to_device(torch.rand(b, generator=generator) < 0.5, x.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)
