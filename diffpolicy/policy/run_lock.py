"""One run per run folder: an exclusive lock on ``<run_dir>/.lock`` for the whole run.

Two training runs writing into one ``run_dir`` would interleave their logs and
metrics and overwrite each other's checkpoints, so :func:`~diffpolicy.policy.train.train`
holds this lock (on rank 0, the process that writes) from before it reads the folder
until it returns.  A second run is refused with a :class:`ConfigError` naming the
folder and the holder's pid and start time (written into the lock file).

The lock is ``fcntl.flock``: the kernel drops it when its process dies, so the
file a killed run leaves behind does not block the next run.  A run that ends
removes the file (and the folder, if the lock created it and nothing else was
put there).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from diffpolicy.policy.run_config import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows has no flock: runs there are not locked)
    fcntl = None

LOCK_NAME = ".lock"


class RunLock:
    """``with RunLock(run_dir): ...`` or ``acquire()`` / ``release()``; see the module docstring."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self._made_dir = False

    def acquire(self) -> None:
        """Take the lock or raise :class:`ConfigError` naming the run that holds it."""
        if fcntl is None:
            return
        self._made_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode(errors="replace").split("\n")
                os.close(fd)
                raise ConfigError(f"run_dir {self.run_dir} is in use by another run "
                                  f"({', '.join(line for line in holder if line) or 'pid unknown'}; "
                                  f"lock {self.path}); wait for it to end or choose another "
                                  f"run_dir=") from None
            # The holder before us may have removed the file between our open and our flock:
            # then we hold a lock on a file nobody else will see; open the path afresh.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\nstarted {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file, then drop the lock (and the folder, if the lock made it and it is empty)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
        if self._made_dir:
            try:
                self.run_dir.rmdir()
            except OSError:     # not empty: the run wrote into it
                pass

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
