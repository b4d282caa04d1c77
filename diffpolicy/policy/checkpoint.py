"""Checkpoints: atomic writes, ``latest.pt`` plus the best ``k`` by evaluation score.

A checkpoint is one ``torch.save``d dict::

    format        "diffpolicy-checkpoint-v1"
    task          task name (e.g. "pusht_keypoints"), checked when loading
    config        the resolved run config (plain dict)
    policy_config PolicyConfig.to_dict()
    model, ema    state dicts (the normaliser is inside both; also under "normalizer")
    optimizer, scheduler, step, epoch, rng, metrics

Writes go to ``<name>.tmp-<pid>`` in the same folder, are flushed to disk, and
then renamed over the target, so a crash or kill leaves either the old or the
new file, never a torn one.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

from diffpolicy.serialization import CheckpointError, atomic_write, safe_load  # noqa: F401 (re-exported)

FORMAT = "diffpolicy-checkpoint-v1"
LATEST = "latest.pt"
_BEST_RE = re.compile(r"^best_step(\d+)_score(-?[0-9.]+)\.pt$")
_TEMP_RE = re.compile(r"\.tmp-\d+$")      # atomic_write's temporary files: <name>.tmp-<pid>


def atomic_save(obj: object, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` via a temporary file and an atomic rename."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path, task: str | None = None) -> dict:
    """Load a checkpoint on the CPU; with ``task`` given, refuse one from another task."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a diffpolicy checkpoint "
                              f"(expected format {FORMAT!r}, found {found!r})")
    if task is not None and ckpt.get("task") != task:
        raise CheckpointError(f"checkpoint {path} was trained on task {ckpt.get('task')!r}, "
                              f"but task {task!r} was asked for")
    return ckpt


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]       # keys: a tensor (older files: an array)
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointDir:
    """``latest.pt`` and ``best_step<step>_score<score>.pt`` files in one folder.

    ``keep_best`` files with the highest scores are kept (ties: the later step wins).
    """

    def __init__(self, folder: str | Path, keep_best: int = 3):
        self.folder = Path(folder)
        self.keep_best = keep_best

    @property
    def latest(self) -> Path:
        return self.folder / LATEST

    def best(self) -> list[tuple[float, int, Path]]:
        """``(score, step, path)`` of the kept best checkpoints, best first."""
        found = []
        if self.folder.is_dir():
            for p in self.folder.iterdir():
                m = _BEST_RE.match(p.name)
                if m:
                    found.append((float(m.group(2)), int(m.group(1)), p))
        return sorted(found, key=lambda e: (e[0], e[1]), reverse=True)

    def remove_temp_files(self) -> tuple[int, int]:
        """Delete the ``<name>.tmp-<pid>`` files that writes killed mid-way left behind;
        returns ``(files removed, bytes freed)``.  Only call it while no other process can be
        writing here (training holds the run folder's lock, ``policy/run_lock.py``)."""
        removed, freed = 0, 0
        if self.folder.is_dir():
            for p in self.folder.iterdir():
                if _TEMP_RE.search(p.name) and p.is_file():
                    freed += p.stat().st_size
                    p.unlink()
                    removed += 1
        return removed, freed

    def save_latest(self, ckpt: dict) -> Path:
        return atomic_save(ckpt, self.latest)

    def save_best(self, ckpt: dict, score: float, step: int) -> Path | None:
        """Save as a best checkpoint if it ranks in the top ``keep_best``; prune the rest.

        Returns the new file, or None when the score did not make the cut.
        """
        if self.keep_best <= 0:
            return None
        ranked = self.best()
        if len(ranked) >= self.keep_best and (score, step) <= ranked[self.keep_best - 1][:2]:
            return None
        path = atomic_save(ckpt, self.folder / f"best_step{step:08d}_score{score:.4f}.pt")
        for _, _, old in self.best()[self.keep_best:]:
            old.unlink(missing_ok=True)
        return path
