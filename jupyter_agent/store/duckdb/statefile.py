"""An agent's latest run and state in a small file beside the store, read without DuckDB.

Opening the DuckDB file costs tens of milliseconds, and reading a long run's
checkpoints more; a resume needs only the state they fold to. So when an
execution ends, after its journal is folded in, the agent's latest run and its
state are written to ``<agent key>.state`` in the journal directory, framed like
a journal record (length and CRC32, see :mod:`jupyter_agent.store.duckdb.journal`).

The file is a cache, never the authority. It is trusted only while it cannot
disagree with the store:

* its frame is whole and its CRC matches (a torn or damaged file is ignored);
* the DuckDB file and its write-ahead log have the sizes and modification
  times they had when the state was written (any write since, a fold, a
  delete, a rewind, makes it stale);
* no journal is waiting to be folded, of any run (a later execution of this
  agent, live or crashed, even a new run of it, has records the file has not
  seen; a journal names its run, not its agent, so any one makes it stale).

Otherwise the reader goes to DuckDB and its journals as before. Written to a
temporary name and renamed into place, unsynced: a machine crash can only lose
the cache, never make it lie (the checks above still hold after one).

Two more files are kept the same way, under the same checks, so that a cell reads
nothing of DuckDB before its first model request while they are current:

* ``<agent key>.timeline``: what the agent's timeline shows at once (its runs, their
  last checkpoints, the selected history's tail and totals), written by a timeline's
  read of the store;
* ``store.summary`` (:data:`SUMMARY`): the store's id, which agents have runs, the
  context windows learnt, and when that was true, written as a connection that
  changed nothing closes: a new agent learns it has no run yet from it, and a
  kernel started since then that no notebook was moved since.

Each is stamped while DuckDB is held open by the writer (no other process can
write it then) or after the writes it reflects, so a stamp that still matches
means DuckDB holds what the file says.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..rows import Record
from . import journal

SUFFIX = ".state"
TIMELINE = ".timeline"
SUMMARY = "store.summary"
_TABLE = "state"


def path_of(directory: Path, key: str) -> Path:
    return directory / (key + SUFFIX)


def stamp(db_path: Path) -> list[int] | None:
    """Size and modification time of the DuckDB file and of its write-ahead log.

    The log's too: a fold's rows may sit in it, the file itself untouched,
    until DuckDB checkpoints them.
    """
    try:
        st = os.stat(db_path)
    except FileNotFoundError:
        return None
    try:
        wal = os.stat(str(db_path) + ".wal")
    except FileNotFoundError:
        return [st.st_size, st.st_mtime_ns]
    return [st.st_size, st.st_mtime_ns, wal.st_size, wal.st_mtime_ns]


def write(directory: Path, key: str, db_path: Path, run_id: str, body: bytes) -> None:
    """Save ``body`` (the run's state) as of the DuckDB file now; best effort."""
    _put(directory / (key + SUFFIX), {"run_id": run_id, "db": stamp(db_path)}, body)


def write_as_of(path: Path, db: list[int] | None, body: bytes, **row: object) -> None:
    """Save ``body`` at ``path``, true of the DuckDB file whose :func:`stamp` was ``db``."""
    _put(path, {**row, "db": db}, body)


def read_current(path: Path, db_path: Path) -> tuple[dict, bytes] | None:
    """(header row, body) of a file :func:`write_as_of` wrote, if whole and still current."""
    found = _get(path, db_path)
    return None if found is None else (found.row, found.payload)


def _put(path: Path, row: dict, body: bytes) -> None:
    if row["db"] is None or not path.parent.is_dir():
        return
    frame = journal.encode(Record(_TABLE, row, body))
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, frame)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def drop(directory: Path, run_ids: set[str]) -> None:
    """Delete the state files of deleted runs: what they hold must leave the disk with them.

    Every timeline file and the summary too: they name other runs, and are rebuilt
    by the next read of the store."""
    if not directory.is_dir():
        return
    for path in [*directory.glob("*" + TIMELINE), directory / SUMMARY]:
        with contextlib.suppress(OSError):
            path.unlink()
    for path in directory.glob("*" + SUFFIX):
        try:
            head = path.read_bytes()
        except OSError:
            continue
        records, _ = journal.decode_all(head)
        if not records or records[0].row.get("run_id") in run_ids:
            with contextlib.suppress(OSError):
                path.unlink()


def read(directory: Path, key: str, db_path: Path) -> tuple[str, bytes] | None:
    """(run id, body) if the saved state is whole and still agrees with the store, else None."""
    found = _get(path_of(directory, key), db_path)
    run_id = str(found.row.get("run_id", "")) if found is not None else ""
    return (run_id, found.payload) if found is not None and run_id else None


def _get(path: Path, db_path: Path) -> Record | None:
    """The file's one record, if whole, ours alone, and true of the store as it is now."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None  # not ours alone: never trusted (its body is unpickled nowhere, still)
        data = os.pread(fd, st.st_size, 0)
    finally:
        os.close(fd)
    records, end = journal.decode_all(data)
    if len(records) != 1 or end != len(data) or records[0].table != _TABLE:
        return None
    if records[0].row.get("db") != stamp(db_path):
        return None
    if any(name.endswith((journal.SUFFIX, ".tmp")) for name in os.listdir(path.parent)):
        return None  # a journal, or one being born
    return records[0]
