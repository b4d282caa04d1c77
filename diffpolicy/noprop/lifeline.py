"""End a spawned process when the process that started it ends.

The NoProp table trains each (row, seed) in a spawned child (``bench``), and block-parallel
training adds helper processes (``parallel``).  A parent killed alone (SIGTERM or SIGKILL to
its pid, not Ctrl-C to the whole group) would leave its child training unseen, orphaned,
on the cores the next command needs, and writing the same checkpoint as a rerun.

:func:`end_with_parent` watches the parent from a daemon thread.  When the parent ends, the
main thread gets :data:`STOP_SIGNAL`, whose handler raises :class:`ParentEnded` (a
``KeyboardInterrupt``), so the child unwinds as on Ctrl-C: block workers are stopped and the
last finished epoch's checkpoint stays (checkpoints are replaced atomically), so a rerun
resumes from it.  SIGINT itself would not do: a command started in the background by a
shell inherits SIGINT ignored, and Python then never turns it into ``KeyboardInterrupt``.
If the process is still alive ``grace_s`` later (the main thread stuck in a C call), it
exits at once.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import signal
import sys
import threading
import time


# None where the platform has no SIGUSR1 or pthread_kill (Windows): the child then exits at
# once when its parent ends, without unwinding (the last epoch's checkpoint is still whole).
STOP_SIGNAL = getattr(signal, "SIGUSR1", None) if hasattr(signal, "pthread_kill") else None


class ParentEnded(KeyboardInterrupt):
    """Raised in the main thread once the parent process has ended."""


def _raise_parent_ended(signum, frame) -> None:
    raise ParentEnded("the process that started this one ended")


def end_with_parent(grace_s: float = 60.0) -> bool:
    """Start watching the parent (call from the main thread: it installs the handler of
    :data:`STOP_SIGNAL`); False, and nothing done, where there is no parent to watch, e.g.
    in a process not started by ``multiprocessing``."""
    parent = mp.parent_process()
    if parent is None or parent.sentinel is None:
        return False
    if STOP_SIGNAL is not None:
        signal.signal(STOP_SIGNAL, _raise_parent_ended)

    def watch() -> None:
        mp_connection.wait([parent.sentinel])
        print(f"[pid {os.getpid()}] the process that started this one (pid {parent.pid}) ended: "
              "stopping; a rerun resumes from the last finished epoch", file=sys.stderr, flush=True)
        if STOP_SIGNAL is not None:
            signal.pthread_kill(threading.main_thread().ident, STOP_SIGNAL)
            time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()
    return True
