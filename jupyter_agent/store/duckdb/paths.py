"""Where the store's files live and who may read or write them, without importing DuckDB.

The default store path (:func:`default_store_path`), whether another user could have
written a file (:func:`exposure`), files created private to the user
(:func:`private_files`), and warnings that name the file to inspect (:func:`warn`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from ...errors import StoreWarning
from . import journal


def default_store_path() -> Path:
    """``JUPYTER_AGENT_STORE`` if set, else ``<jupyter data dir>/jupyter_agent/agents.duckdb``."""
    env = os.environ.get("JUPYTER_AGENT_STORE")
    if env:
        return Path(env).expanduser().absolute()
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "jupyter_agent" / "agents.duckdb"


def exposure(st: os.stat_result | journal.JournalFile) -> str | None:
    """Why another user could have written this file: None when only this user can."""
    uid, mode = (
        (st.owner, st.mode) if isinstance(st, journal.JournalFile) else (st.st_uid, st.st_mode)
    )
    if uid != os.getuid():
        return f"belongs to another user (uid {uid})"
    if mode & 0o022:
        return "is writable by other users"
    return None


_warned: dict = {}


def warn(message: str, path: Path) -> None:
    """A :class:`StoreWarning` attributed to ``path``, so the notice points at what to inspect.

    Shown once per message in a process (a polling reader would repeat it every poll).
    """
    warnings.warn_explicit(StoreWarning(message), StoreWarning, str(path), 0, registry=_warned)


# Concurrency: its place in the lock order is in the docstring of jupyter_agent.loop.
_umask_lock = threading.Lock()
_umask_users = 0
_umask_saved = 0


@contextlib.contextmanager
def private_files(directory: Path) -> Iterator[None]:
    """Create files private to the user while DuckDB is open in ``directory``.

    DuckDB creates its database file and write-ahead log with the process umask
    (usually world-readable), and the WAL holds checkpoint data while it exists.
    In a private directory (the default store's is created 0700) that is
    harmless. Elsewhere the umask is tightened while a connection is open and
    restored when the last one closes; it is process-wide, so it is left alone
    whenever it need not change.
    """
    global _umask_users, _umask_saved
    try:
        private = os.stat(directory).st_mode & 0o077 == 0
    except OSError:
        private = False
    if private:
        yield
        return
    with _umask_lock:
        if _umask_users == 0:
            _umask_saved = os.umask(0o077)
        _umask_users += 1
    try:
        yield
    finally:
        with _umask_lock:
            _umask_users -= 1
            if _umask_users == 0:
                os.umask(_umask_saved)
