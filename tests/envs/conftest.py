"""Fixtures for the Push-T env tests: the real demos, read once per session."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr

# Only the pygame ``human`` window needs a display; tests never open a real one.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


@dataclass
class Demos:
    """The low-dim arrays of the demo store; images are read on demand."""

    path: Path
    state: np.ndarray       # (N, 5) float32
    action: np.ndarray      # (N, 2) float32
    keypoint: np.ndarray    # (N, 9, 2) float32
    n_contacts: np.ndarray  # (N,) float32
    ends: np.ndarray        # (E,) int64

    @property
    def starts(self) -> np.ndarray:
        return np.r_[0, self.ends[:-1]]

    def episode(self, i: int) -> slice:
        return slice(int(self.starts[i]), int(self.ends[i]))

    def images(self, index) -> np.ndarray:
        """``data/img`` rows (sorted int indices or a slice) as (n, 96, 96, 3) float32."""
        img = zarr.open_group(str(self.path), mode="r")["data/img"]
        if isinstance(index, slice):
            return img[index]
        return img.get_orthogonal_selection((np.asarray(index),))


@pytest.fixture(scope="session")
def demos(pusht_zarr) -> Demos:
    g = zarr.open_group(str(pusht_zarr), mode="r")
    return Demos(path=Path(pusht_zarr), state=g["data/state"][:], action=g["data/action"][:],
                 keypoint=g["data/keypoint"][:], n_contacts=g["data/n_contacts"][:, 0],
                 ends=g["meta/episode_ends"][:])
