"""Fixtures of the fault-injection suite (``-m slow``; ``make test-all`` runs it): a small
writable keypoints store copied from the published demos, and the policy tests' helpers."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from diffpolicy.datasets import ReplayBuffer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policy"))   # policy_helpers: tiny runs


@pytest.fixture(scope="session")
def keypoints_store(pusht_zarr: Path, tmp_path_factory) -> Path:
    """The first 6 demo episodes without images (what the keypoints task reads) in a temporary store."""
    src = ReplayBuffer.open(pusht_zarr, mode="r")
    path = tmp_path_factory.mktemp("faults") / "keypoints.zarr"
    dst = ReplayBuffer.create(path)
    for i in range(6):
        dst.add_episode({k: np.asarray(v) for k, v in src.get_episode(i).items() if k != "img"})
    return path
