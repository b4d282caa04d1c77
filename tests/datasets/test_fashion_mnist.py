"""Fashion-MNIST IDX loading, splits and statistics."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from diffpolicy.datasets.errors import CorruptDataError
from diffpolicy.datasets.fashion_mnist import (FILES, fashion_mnist_splits, iterate_batches,
                                               load_fashion_mnist, normalization_stats, read_idx)


def _write_idx(path, arr: np.ndarray, gz: bool) -> None:
    header = (0x800 + arr.ndim).to_bytes(4, "big") + b"".join(
        int(s).to_bytes(4, "big") for s in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fake_set(tmp_path, n_train=50, n_test=20, gz=True):
    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28)),
              "train_labels": np.arange(n_train) % 10,
              "test_images": rng.integers(0, 256, (n_test, 28, 28)),
              "test_labels": np.arange(n_test) % 10}
    for key, stem in FILES.items():
        _write_idx(tmp_path / stem, arrays[key], gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_reads_gz_and_raw_idx_files(tmp_path, gz):
    arrays = _fake_set(tmp_path, gz=gz)
    raw = load_fashion_mnist(tmp_path)
    for key in FILES:
        np.testing.assert_array_equal(raw[key], arrays[key])


def test_missing_file_names_folder_and_file(tmp_path):
    _fake_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\(\.gz\) not found in"):
        load_fashion_mnist(tmp_path)


def test_corrupt_files_are_reported(tmp_path):
    _fake_set(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(CorruptDataError, match="truncated or corrupt"):
        read_idx(p, 3)
    bad = tmp_path / "bad"
    bad.write_bytes((0x801).to_bytes(4, "big") + bytes(20))
    with pytest.raises(CorruptDataError, match="magic number expected 0x00000803"):
        read_idx(bad, 3)


def test_split_sizes_disjoint_and_seeded(tmp_path):
    _fake_set(tmp_path, n_train=50)
    a = fashion_mnist_splits(tmp_path, val_size=10, seed=1)
    b = fashion_mnist_splits(tmp_path, val_size=10, seed=1)
    c = fashion_mnist_splits(tmp_path, val_size=10, seed=2)
    assert len(a.train_x) == 40 and len(a.val_x) == 10 and len(a.test_x) == 20
    assert a.train_x.shape[1:] == (1, 28, 28) and a.train_x.dtype == torch.float32
    assert set(a.train_index.tolist()).isdisjoint(a.val_index.tolist())
    assert sorted(a.train_index.tolist() + a.val_index.tolist()) == list(range(50))
    assert torch.equal(a.val_index, b.val_index) and not torch.equal(a.val_index, c.val_index)
    # statistics from the training rows only: the normalised training set is standardised
    assert abs(float(a.train_x.mean())) < 1e-4 and abs(float(a.train_x.std()) - 1) < 1e-3
    with pytest.raises(ValueError, match="val_size must be in"):
        fashion_mnist_splits(tmp_path, val_size=50)


def test_iterate_batches_covers_every_row_once():
    x, y = torch.arange(10).float(), torch.arange(10)
    seen = torch.cat([b for _, b in iterate_batches(x, y, 3, shuffle=True,
                                                     generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))


def test_real_fashion_mnist_shapes_and_statistics(fmnist_root):
    raw = load_fashion_mnist(fmnist_root)
    assert raw["train_images"].shape == (60000, 28, 28)
    assert raw["test_images"].shape == (10000, 28, 28)
    assert np.bincount(raw["train_labels"]).tolist() == [6000] * 10
    mean, std = normalization_stats(raw["train_images"])
    assert abs(mean - 0.2860) < 5e-4 and abs(std - 0.3530) < 5e-4   # not MNIST's 0.1307/0.3081
    data = fashion_mnist_splits(fmnist_root, val_size=5000, seed=0)
    assert len(data.train_x) == 55000 and len(data.val_x) == 5000 and len(data.test_x) == 10000
    assert abs(data.mean - 0.2860) < 2e-3 and abs(data.std - 0.3530) < 2e-3


def test_augment_batch_crops_within_the_padding_and_mirrors_half():
    from diffpolicy.datasets.fashion_mnist import augment_batch
    x = torch.randn(256, 1, 28, 28)
    assert augment_batch(x, "none") is x
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, "crop_flip", g)
    assert out.shape == x.shape
    assert torch.equal(out, augment_batch(x, "crop_flip", torch.Generator().manual_seed(0)))
    background = x.amin(dim=(1, 2, 3))
    flips = 0
    for i in range(len(x)):
        found = []
        for dy in range(5):
            for dx in range(5):
                padded = torch.full((32, 32), float(background[i]))
                padded[2:30, 2:30] = x[i, 0]
                crop = padded[dy:dy + 28, dx:dx + 28]
                found += [f for f, img in ((False, crop), (True, crop.flip(1))) if torch.equal(img, out[i, 0])]
        assert len(found) == 1, i                      # exactly one shift (and mirror) explains it
        flips += found[0]
    assert 90 < flips < 166                            # about half mirrored
    with pytest.raises(ValueError, match="augment: expected one of"):
        augment_batch(x, "flip")
