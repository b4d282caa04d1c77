"""Fixtures of small stores written by the tests themselves (real-data fixtures: tests/conftest.py)."""
from __future__ import annotations

import pytest
from zarr_stores import write_store


@pytest.fixture(params=[2, 3], ids=["zarr2", "zarr3"])
def zarr_format(request) -> int:
    return request.param


@pytest.fixture
def small_store(tmp_path, zarr_format):
    """(path, episodes) of a fresh 3-episode Push-T-shaped store without images."""
    path = tmp_path / "small.zarr"
    return path, write_store(path, zarr_format=zarr_format, with_img=False)
