"""Fixtures of the fault-injection suite (``-m slow``; ``make test-all`` runs it): a small
writable keypoints store copied from the published demos, and the policy tests' helpers."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policy"))   # policy_helpers: tiny runs
from policy_helpers import copy_demo_episodes  # noqa: E402


@pytest.fixture(scope="session")
def keypoints_store(pusht_zarr: Path, tmp_path_factory) -> Path:
    """The first 6 demo episodes without images (what the keypoints task reads) in a temporary store."""
    return copy_demo_episodes(pusht_zarr, tmp_path_factory.mktemp("faults") / "keypoints.zarr", 6, skip=("img",))
