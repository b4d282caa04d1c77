"""Fixtures for the policy tests: a small copy of the Push-T demos."""
from __future__ import annotations

from pathlib import Path

import pytest

from policy_helpers import copy_demo_episodes


@pytest.fixture(scope="session")
def small_store(pusht_zarr: Path, tmp_path_factory) -> Path:
    """The first 8 demo episodes (all keys, images included) in a temporary store."""
    return copy_demo_episodes(pusht_zarr, tmp_path_factory.mktemp("pusht_small") / "small.zarr", 8)
