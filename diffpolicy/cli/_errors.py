"""Turn the errors that bad input raises into one line on stderr and exit status 2."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from diffpolicy.datasets.errors import DatasetError
from diffpolicy.policy.checkpoint import CheckpointError
from diffpolicy.policy.run_config import ConfigError
from diffpolicy.serialization import WriteError
from diffpolicy.speed import keep_freed_memory

# WriteError: a checkpoint or report the disk refused (full, ulimit -f); the previous file is kept
USER_ERRORS = (ConfigError, DatasetError, CheckpointError, FileNotFoundError, WriteError)


def remove_if_unused(run_dir: str | Path) -> None:
    """Delete ``run_dir`` when it holds nothing but empty ``*.log`` files.

    Hydra creates the run directory and its (empty) job log before our checks run, so
    a command refused for bad input would otherwise leave an empty run folder behind.
    Anything with content (a checkpoint, a non-empty log, another file) keeps it all.
    """
    path = Path(str(run_dir))      # a config value: run_dir=5 is refused, but Hydra made "5/" already
    if not path.is_dir():
        return
    entries = list(path.iterdir())
    if all(e.is_file() and e.suffix == ".log" and e.stat().st_size == 0 for e in entries):
        for e in entries:
            e.unlink()
        path.rmdir()


def run_cli(fn: Callable[[], object], run_dir: str | Path | None = None) -> None:
    """Call ``fn``; a user error prints ``error: <message>`` and exits with status 2,
    first removing ``run_dir`` if the refused run left it empty (``remove_if_unused``).
    Freed memory is kept for reuse (:func:`diffpolicy.speed.keep_freed_memory`)."""
    keep_freed_memory()
    try:
        fn()
    except USER_ERRORS as exc:
        if run_dir is not None:
            remove_if_unused(run_dir)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
