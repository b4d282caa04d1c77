"""The check every env's ``step`` makes first: is the action real numbers?"""
from __future__ import annotations

from typing import Any

import numpy as np


def real_array(action: Any, where: str, expected: str) -> np.ndarray:
    """``action`` as a float64 array, refusing what is not real numbers (strings, dicts,
    objects, booleans, complex) with a ``ValueError`` that names ``where`` (e.g.
    ``"PushTEnv.step"``), what was ``expected`` and what was found."""
    try:
        arr = np.asarray(action)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: action must be {expected}, found {type(action).__name__} ({exc})") from None
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{where}: action must be {expected}, found {type(action).__name__} of dtype "
                         f"{arr.dtype}; the environment state is unchanged")
    return arr.astype(np.float64)
