"""Fixtures for the policy tests: a small copy of the Push-T demos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffpolicy.datasets import ReplayBuffer


@pytest.fixture(scope="session")
def small_store(pusht_zarr: Path, tmp_path_factory) -> Path:
    """The first 8 demo episodes (all keys, images included) in a temporary store."""
    src = ReplayBuffer.open(pusht_zarr, mode="r")
    path = tmp_path_factory.mktemp("pusht_small") / "small.zarr"
    dst = ReplayBuffer.create(path)
    for i in range(8):
        ep = src.get_episode(i)
        dst.add_episode({k: np.asarray(v) for k, v in ep.items()})
    return path
