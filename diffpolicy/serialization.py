"""Saving files atomically, and loading them without running code (tensors, plain data and
NumPy arrays only).

``torch.load`` without ``weights_only`` unpickles arbitrary objects, so a shared
checkpoint could execute code when opened.  Everything diffpolicy saves is
tensors and plain Python data (older policy checkpoints also hold NumPy's RNG
state as an array), and :func:`safe_load` accepts exactly that.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit what is asked of it."""


def _numpy_array_globals() -> list:
    """What unpickling a NumPy array needs (older checkpoints hold NumPy's RNG state as one):
    array reconstruction only, no callable that runs other code."""
    core = getattr(np, "_core", None) or np.core
    found = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in ("UInt32DType", "Float64DType", "Int64DType") if hasattr(dtypes, n)]
    return found


def safe_load(path: str | Path, what: str = "checkpoint"):
    """``torch.load`` with ``weights_only=True``: tensors, plain Python data and NumPy arrays
    only.  Anything else pickled in the file is refused with :class:`CheckpointError`
    instead of being run (a shared file must not execute code)."""
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if detail is None:
            raise CheckpointError(f"cannot read {what} {path}: {exc}") from None
        raise CheckpointError(f"{path}: refused: the {what} holds a pickled Python object "
                              f"({detail.group(1)}); "
                              "diffpolicy loads only tensors and plain data, so a shared file "
                              "cannot run code") from None
    except Exception as exc:  # noqa: BLE001 (torch raises many types for bad files)
        raise CheckpointError(f"cannot read {what} {path}: {exc}") from exc


class WriteError(OSError):
    """A file could not be written (disk full, file too large); the previous file is kept."""


class _KeepsWriteError:
    """A binary file that remembers the ``OSError`` of a failed ``write``: ``torch.save``
    reports it only as "unexpected pos 12103936 vs 12103828"."""

    def __init__(self, f: BinaryIO):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str):
        return getattr(self.f, name)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, flush it to disk, then rename
    it over ``path``: a crash leaves the old file or the new one, never a torn one.

    A write the file system refuses (disk full, ``ulimit -f``) raises :class:`WriteError`
    naming ``path`` and the cause; the previous file is kept and the temporary one removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    f = None
    try:
        with open(tmp, "wb") as raw:
            f = _KeepsWriteError(raw)
            write(f)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        cause = f.error if f is not None and f.error is not None else exc
        if not isinstance(cause, OSError):
            raise
        kept = "the previous file is kept" if path.exists() else "no file was written"
        raise WriteError(f"cannot write {path}: {cause.strerror or cause} ({kept})") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
