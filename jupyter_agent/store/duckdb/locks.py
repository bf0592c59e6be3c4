"""One writer per agent on the DuckDB store: an exclusive ``flock`` on a lock file.

:func:`owner_lock` holds an exclusive ``flock`` on a per-agent lock file
(``*.lock``, in the journal directory) naming the holder's pid. The store takes
it before the agent's latest run is even read and holds it for the whole
execution, so two kernels can never both decide to start or resume the same
agent. The kernel drops it when the process dies, so a crashed kernel never
blocks the next one; forked children close their copy, as they do journals
(see :mod:`jupyter_agent.store.duckdb.journal`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOCK_SUFFIX = ".lock"


class LockHeld(Exception):
    """Another process (``pid``), or another thread of this one (``here``), holds the lock."""

    def __init__(self, pid: int | None, *, here: bool) -> None:
        super().__init__(pid)
        self.pid = pid
        self.here = here


@dataclass
class _Hold:
    fd: int
    thread: int
    depth: int = 1


_holds: dict[Path, _Hold] = {}
# Concurrency: its place in the lock order is in the docstring of jupyter_agent.loop.
_holds_lock = threading.Lock()


def _drop_locks_in_child() -> None:
    """In a forked child: the parent holds the locks, not the child (nor its threads' state)."""
    global _holds_lock
    _holds_lock = threading.Lock()
    for hold in _holds.values():
        with contextlib.suppress(OSError):
            os.close(hold.fd)
    _holds.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


@contextlib.contextmanager
def owner_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock ``path`` (re-entrant within one thread) or raise :class:`LockHeld`.

    Non-blocking: the caller reports who holds it instead of waiting. The file
    is never deleted (unlinking a lock file lets two processes lock two files).
    """
    me = threading.get_ident()
    with _holds_lock:
        hold = _holds.get(path)
        if hold is None:
            _holds[path] = _Hold(_take(path), me)
        elif hold.thread == me:
            hold.depth += 1
        else:
            raise LockHeld(os.getpid(), here=True)
    try:
        yield
    finally:
        with _holds_lock:
            hold = _holds[path]
            hold.depth -= 1
            if hold.depth == 0:
                del _holds[path]
                os.close(hold.fd)  # releases the flock


def _take(path: Path) -> int:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(fd)
        os.close(fd)
        raise LockHeld(pid, here=False) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holder(fd: int) -> int | None:
    """The pid the holder wrote; it may be a moment late, so look for up to 0.2 s."""
    deadline = time.monotonic() + 0.2
    while True:
        with contextlib.suppress(OSError, ValueError):
            return int(os.pread(fd, 32, 0).decode().strip())
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
