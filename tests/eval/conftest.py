"""Fixtures for the evaluation tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from eval_helpers import make_checkpoint


@pytest.fixture
def keypoints_ckpt(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
