"""NoProp tests run their many small ops on one thread (restored afterwards): on the
shared 2-core machine, two OpenMP threads contending with other jobs made them ~10x slower."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
