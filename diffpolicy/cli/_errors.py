"""Turn the errors that bad input raises into one line on stderr and exit status 2."""
from __future__ import annotations

import sys
from typing import Callable

from diffpolicy.datasets.errors import DatasetError
from diffpolicy.policy.checkpoint import CheckpointError
from diffpolicy.policy.run_config import ConfigError

USER_ERRORS = (ConfigError, DatasetError, CheckpointError, FileNotFoundError)


def run_cli(fn: Callable[[], object]) -> None:
    """Call ``fn``; a user error prints ``error: <message>`` and exits with status 2."""
    try:
        fn()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
