"""Where data lives: one setting for every reader of the real data sets.

``DIFFPOLICY_DATA`` names the data root (the folder holding ``pusht/``); when it
is unset we look for ``../shared/data`` beside the project checkout, then
``./data``.  Fashion-MNIST IDX files are looked up under ``DIFFPOLICY_FMNIST``,
then Debian's ``/usr/share/datasets/fashion-mnist``, then ``<data root>/fashion-mnist``.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV_VAR = "DIFFPOLICY_DATA"
FMNIST_ENV_VAR = "DIFFPOLICY_FMNIST"
DEBIAN_FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
PUSHT_ZARR_NAME = "pusht/pusht_cchi_v7_replay.zarr"


def data_root() -> Path:
    """The data root: ``$DIFFPOLICY_DATA``, else ``../shared/data``, else ``./data``."""
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    shared = (PROJECT_ROOT / ".." / "shared" / "data").resolve()
    if shared.is_dir():
        return shared
    return (Path.cwd() / "data").resolve()


def pusht_zarr_path() -> Path:
    """Default location of the published Push-T demo store (may not exist)."""
    return data_root() / PUSHT_ZARR_NAME


def fmnist_dir() -> Path:
    """Default folder of the Fashion-MNIST IDX files (may not exist)."""
    env = os.environ.get(FMNIST_ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    if DEBIAN_FMNIST_DIR.is_dir():
        return DEBIAN_FMNIST_DIR
    return data_root() / "fashion-mnist"
