"""Shared fixtures.  Real data is found through ``DIFFPOLICY_DATA`` (see
``diffpolicy.paths``).  Where it is missing a test skips with the reason,
except under CI (``CI=true``), where a missing data set fails the test:
a skipped fidelity test proves nothing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from diffpolicy import paths


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_data(path: Path, what: str) -> Path:
    """Return ``path`` if it exists; else skip (locally) or fail (under CI)."""
    if path.exists():
        return path
    msg = (f"{what} not found at {path} (set {paths.DATA_ENV_VAR} or "
           f"{paths.FMNIST_ENV_VAR})")
    if _under_ci():
        pytest.fail(msg + "; CI=true, so a missing data set is a failure")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def pusht_zarr() -> Path:
    """Path of the published Push-T demo store (read-only: copy before writing)."""
    return require_data(paths.pusht_zarr_path(), "Push-T demos")


@pytest.fixture(scope="session")
def metaworld_installed() -> None:
    """Meta-World (the optional ``metaworld`` extra) importable; else skip (locally) or fail
    (under CI, where ``make setup`` installs it)."""
    try:
        import metaworld  # noqa: F401, PLC0415
    except ImportError as e:
        msg = f"metaworld is not importable ({e}); install the extra: pip install -e '.[metaworld]'"
        if _under_ci():
            pytest.fail(msg + "; CI=true, so a missing extra is a failure")
        pytest.skip(msg)


@pytest.fixture(scope="session")
def fmnist_root() -> Path:
    """Folder holding the Fashion-MNIST IDX files (gzipped or raw)."""
    d = paths.fmnist_dir()
    images = d / "train-images-idx3-ubyte.gz"
    if not images.exists():
        images = d / "train-images-idx3-ubyte"
    return require_data(images, "Fashion-MNIST").parent


@pytest.fixture(autouse=True, scope="session")
def _speed_choice_cache(tmp_path_factory):
    """Speed probes (diffpolicy.speed) cache their choices in a folder of this test
    session, not in the user's ~/.cache: each session measures afresh, once per shape."""
    old = os.environ.get("DIFFPOLICY_CACHE")
    os.environ["DIFFPOLICY_CACHE"] = str(tmp_path_factory.mktemp("speed_cache"))
    yield
    if old is None:
        os.environ.pop("DIFFPOLICY_CACHE", None)
    else:
        os.environ["DIFFPOLICY_CACHE"] = old


@pytest.fixture(autouse=True)
def _seeded_global_rngs():
    """Every test starts from the same global random state (torch, numpy, random), so a
    test that draws weights or data without its own seed gives the same result each run
    instead of failing now and then. (Gymnasium envs reset without a seed draw from the OS,
    not from these; tests that need fixed starts pass seeds.)"""
    import random  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
