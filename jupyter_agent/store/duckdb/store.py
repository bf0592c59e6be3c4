"""The checkpoint store: a DuckDB file plus per-run journals beside it.

Writers never touch DuckDB while an agent runs: each run execution appends to
its own journal (see :mod:`jupyter_agent.store.duckdb.journal`), and values of
:data:`blobfiles.MIN_BYTES` or more are files beside the store, journaled by
reference (see :mod:`jupyter_agent.store.duckdb.blobfiles`). DuckDB is opened only for short
moments — to fold finished executions' journals in and to answer queries — and
every open retries with backoff while another process holds the file, so no
checkpoint waits on another process. Readers never write a running agent's
journal into DuckDB: they show it in a transaction they roll back, which keeps
each open short however many agents run.

Every row is insert-only and keyed (runs by id, checkpoints by run and step,
blobs by content hash), so folding a journal in twice is harmless. Checkpoint
payloads are JSON (``payload_format`` 'json'); the store unpickles nothing but
the dill payloads of an older release, once, when it migrates them. Blobs
(namespace values) are unpickled by the kernel, after :meth:`check_trusted`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import duckdb

from ...core.redaction import contains_secret, redact, secrets_in_environment
from ...errors import AgentBusy, Conflict, StoreBusy, StoreError, StoreWarning
from .. import rows as store_rows
from ..api import (
    CHECKPOINT_COLUMNS,
    RUN_COLUMNS,
    TIMELINE_LIMIT,
    AgentDetail,
    AgentSummary,
    CheckpointRow,
    RunDetail,
    RunRow,
    RunStats,
    StoreInfo,
    delete_agent_runs,
    history_chain,
)
from ..rows import (
    checkpoint_from_row,
    json_payload,
    malformed,
    parse_version,
    run_from_row,
    stats_from_row,
)
from . import blobfiles, journal
from .journal import JournalWriter, Record

#: 2: checkpoint payloads are JSON, tagged by ``payload_format`` (1 pickled them with dill).
SCHEMA_VERSION = 2

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    notebook VARCHAR NOT NULL,
    agent VARCHAR NOT NULL,
    cell_id VARCHAR,
    prompt VARCHAR NOT NULL,
    prompt_hash VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    parent_run VARCHAR,
    parent_step INTEGER,
    created_at DOUBLE NOT NULL,
    info VARCHAR
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id VARCHAR NOT NULL,
    step INTEGER NOT NULL,
    kind VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    summary VARCHAR NOT NULL,
    created_at DOUBLE NOT NULL,
    duration_ms DOUBLE NOT NULL,
    tokens INTEGER NOT NULL,
    size INTEGER NOT NULL,
    info VARCHAR,
    payload BLOB,
    payload_format VARCHAR DEFAULT 'json',
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS blobs (hash VARCHAR PRIMARY KEY, size BIGINT NOT NULL, data BLOB);
CREATE TABLE IF NOT EXISTS journal_progress (journal VARCHAR PRIMARY KEY, merged_to BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS notebook_moves (old VARCHAR NOT NULL, new VARCHAR NOT NULL, moved_at DOUBLE NOT NULL);
"""


__all__ = [
    "AgentBusy",
    "CheckpointRow",
    "DuckDBStore",
    "RunRow",
    "Store",
    "StoreBusy",
    "StoreError",
    "StoreWarning",
]

_TABLE_COLUMNS = {
    "runs": RUN_COLUMNS,
    "checkpoints": [*CHECKPOINT_COLUMNS, "payload", "payload_format"],
}
#: Serializes schema migrations within this process; DuckDB's file lock does so across.
_migrate_lock = threading.Lock()
#: DuckDB block size for new store files (see :meth:`Store._open`).
BLOCK_SIZE = 64 * 1024


def default_store_path() -> Path:
    """``JUPYTER_AGENT_STORE`` if set, else ``<jupyter data dir>/jupyter_agent/agents.duckdb``."""
    env = os.environ.get("JUPYTER_AGENT_STORE")
    if env:
        return Path(env).expanduser().absolute()
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "jupyter_agent" / "agents.duckdb"


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


_T = TypeVar("_T")
_umask_lock = threading.Lock()
_umask_users = 0
_umask_saved = 0
#: Serializes folding within this process; DuckDB's file lock does so across processes.
_merge_locks: dict[Path, threading.Lock] = {}


@contextlib.contextmanager
def _private_files(directory: Path) -> Iterator[None]:
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


class DuckDBStore:
    """Checkpoints of every agent, kept in one DuckDB file and its journals.

    Implements :class:`jupyter_agent.store.api.Store`.
    """

    #: A reader folds a live journal only once this much is new in it (see :meth:`_merge`).
    LIVE_FOLD_BYTES = 8 << 20
    #: Seconds a folded journal is kept (``*.folded``) for readers that cannot open DuckDB.
    FOLDED_KEEP = 120.0

    def __init__(self, path: str | os.PathLike | None = None, *, busy_timeout: float = 30.0):
        self.path = Path(path) if path is not None else default_store_path()
        self.journal_dir = self.path.with_name(self.path.name + ".journal")
        #: Large values, as content-addressed files (see :mod:`jupyter_agent.store.duckdb.blobfiles`).
        self.blob_dir = self.path.with_name(self.path.name + ".blobs")
        self.busy_timeout = busy_timeout
        self.location = str(self.path)
        self._v1 = False
        #: How many times DuckDB was opened (what :meth:`session` saves shows here).
        self.opens = 0
        #: How many times the schema was checked: once per file identity (see :meth:`_open`).
        self.schema_checks = 0
        #: The files' identity (and read-only-ness) when last checked or left by this object.
        self._checked: tuple | None = None
        self._local = threading.local()

    # -- writing -----------------------------------------------------------------

    def writer(self, run_id: str, secrets: list[str] | None = None) -> RunWriter:
        """A journal for one execution of ``run_id``; close it to fold it into DuckDB.

        ``secrets`` (default: the secret-looking environment values) are redacted
        from everything written, whatever the caller passes in.
        """
        self._ensure_dir()
        try:
            jw = JournalWriter(self.journal_dir, run_id)
        except OSError as exc:
            raise StoreError(
                f"Cannot write checkpoints under {self.journal_dir}: {exc.strerror or exc}."
            ) from exc
        return RunWriter(self, jw, secrets_in_environment() if secrets is None else secrets)

    @contextlib.contextmanager
    def agent_lock(self, notebook: str, agent: str) -> Iterator[None]:
        """Be the only writer of the agent ``agent`` of ``notebook`` while this is held.

        Taken before the agent's latest run is read, and held until its execution
        ends, so deciding what to run and running it are one atomic step across
        processes. Re-entrant within a thread; another thread or process gets
        :class:`AgentBusy` at once, naming the holder's pid. A process that dies
        releases it (a ``flock`` on a per-agent file in the journal directory; a
        database backend would use an advisory lock on the same key).
        """
        self._ensure_dir()
        key = hashlib.sha256(f"{notebook}\0{agent}".encode()).hexdigest()[:32]
        held = contextlib.ExitStack()
        try:
            held.enter_context(journal.owner_lock(self.journal_dir / (key + journal.LOCK_SUFFIX)))
        except journal.LockHeld as exc:
            raise (
                AgentBusy.here(agent) if exc.here else AgentBusy.elsewhere(agent, exc.pid)
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise StoreError(
                    f"Cannot take the lock of agent {agent!r} under {self.journal_dir}: "
                    f"{exc.strerror or exc}."
                ) from exc
            # A store this process cannot write: it cannot be a second writer either
            # (its journal cannot be created), and restoring from it must still work.
        with held:
            yield

    def _ensure_dir(self) -> None:
        parent = self.path.parent
        try:
            if not parent.exists():
                parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"Cannot create the agent store directory {parent}: {exc.strerror or exc}. "
                "Set JUPYTER_AGENT_STORE (or %config AgentMagics.store) to a writable path."
            ) from exc

    # -- DuckDB access -------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(
        self, *, merge: bool = True, live: bool = True
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open DuckDB briefly (waiting while another process holds it), fold journals in.

        Finished runs' journals are folded for good. With ``live`` (what readers
        ask for), the new records of running agents' journals are shown too, but
        only inside a transaction that is rolled back when the connection closes:
        a reader never writes another kernel's live journal into DuckDB (see
        :meth:`_merge`). Callers that write (``live=False``) see only what is stored.

        A store this process cannot write (a read-only disk or file) is opened
        read-only and nothing is folded: it can still be listed and restored from.
        A failing query is the caller's bug and is raised as it is, unless the
        error says the store itself is damaged, full or read-only.

        Inside :meth:`session` the session's connection is used again (its
        journals were folded when it opened).
        """
        shared = getattr(self._local, "con", None)
        if shared is not None:
            with self._mapped():
                yield shared
            return
        self._ensure_dir()
        with _private_files(self.path.parent):
            con, read_only = self._open()
            shown = False
            try:
                with self._mapped():
                    if merge and not read_only:
                        pending = self._merge(con)
                        apply_moves(con)  # runs folded in after a notebook move follow it
                        self._private_wal()
                        if live and pending:
                            shown = self._show_live(con, pending)
                    yield con
            finally:
                if shown:
                    with contextlib.suppress(duckdb.Error):
                        con.execute("ROLLBACK")
                self._private_wal()
                con.close()
                # What this connection wrote is not a reason to check the schema again.
                self._checked = (self._identity(), read_only)

    @contextlib.contextmanager
    def waiting(self, seconds: float) -> Iterator[None]:
        """Wait at most ``seconds`` for the DuckDB file in this thread, not ``busy_timeout``.

        For a reader that has something else to show meanwhile (see :mod:`jupyter_agent.store.duckdb.stale`).
        """
        before = getattr(self._local, "wait", None)
        self._local.wait = seconds
        try:
            yield
        finally:
            self._local.wait = before

    def file_state(self) -> tuple:
        """What changes whenever DuckDB writes the store (see :mod:`jupyter_agent.store.duckdb.stale`)."""
        return self._identity()

    def _identity(self) -> tuple:
        """The store file's and its WAL's inode, mtime and size (None where absent)."""
        out: list = []
        for path in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                st = os.stat(path)
                out.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[None]:
        """Raise a DuckDB error that says the store is damaged, full or read-only as such."""
        try:
            yield
        except duckdb.Error as exc:
            problem = self._problem(exc, opening=False)
            if problem is None:
                raise
            raise problem from exc

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Serve this thread's reads from one connection (journals folded once, at the start).

        For a batch of reads that belong together, such as everything a resume
        reads before its first model request. It holds the DuckDB file, so no
        model call or user wait may happen inside. Re-entrant.
        """
        if getattr(self._local, "con", None) is not None or not self.exists():
            yield  # nothing to read yet: each read finds that out (and creates nothing)
            return
        with self._connect() as con:
            self._local.con = con
            try:
                yield
            finally:
                self._local.con = None

    def _writable(self) -> bool:
        """Whether this process may write the store (``os.access`` sees read-only mounts)."""
        target = self.path if self.path.exists() else self.path.parent
        return os.access(target, os.W_OK) and os.access(self.path.parent, os.W_OK)

    def _private_wal(self) -> None:
        """Keep a write-ahead log 0600 even where the umask was not tightened."""
        with contextlib.suppress(OSError):
            wal = self.path.with_name(self.path.name + ".wal")
            if os.stat(wal).st_mode & 0o077:
                os.chmod(wal, 0o600)

    def _unusable(self, exc: Exception) -> StoreError:
        problem = self._problem(exc, opening=True)
        assert problem is not None
        return problem

    def _problem(self, exc: Exception, *, opening: bool) -> StoreError | None:
        """What a DuckDB error says about the store, with the fix for that cause.

        None for an error that says nothing about the store (a bad query), which
        the caller raises as it is: only real damage gets the advice to start over.
        """
        text = str(exc)
        low = text.lower()
        wal = self.path.with_name(self.path.name + ".wal")
        if "no space left" in low or "disk full" in low or "disk quota" in low:
            return StoreError(
                f"The agent store {self.path} could not be updated: the disk is full ({text}). "
                "Nothing was lost: checkpoints stay in their journals and are folded in once "
                f"there is room. Free space on the disk holding {self.path.parent}, then run "
                "the cell again."
            )
        if "read-only" in low or "permission denied" in low:
            return StoreError(
                f"The agent store {self.path} cannot be written ({text}). Its runs can still be "
                "listed and restored; to run agents, make it writable or set "
                "JUPYTER_AGENT_STORE to a writable path."
            )
        if "wal" in low and ("does not match" in low or "replaying wal" in low):
            return StoreError(
                f"The write-ahead log {wal} does not belong to the agent store {self.path} "
                f"({text}); it was probably copied or restored apart from the store. Both were "
                f"left untouched. Move {wal} aside and run again: the store opens as it was at "
                "its last checkpoint, and only changes held in that log are lost."
            )
        corrupt = isinstance(exc, duckdb.SerializationException | duckdb.InternalException) or any(
            word in low
            for word in ("corrupt", "checksum", "not a valid duckdb", "could not read enough bytes")
        )  # the last: a file cut short (truncated), which no retry mends
        if corrupt:
            return StoreError(
                f"The agent store {self.path} is damaged ({text}). It was left untouched: "
                "move it aside (or set JUPYTER_AGENT_STORE to another file) to start a new "
                "store; journals of running agents are kept."
            )
        if opening or isinstance(exc, duckdb.IOException):
            return StoreError(
                f"The agent store {self.path} cannot be used ({text}). Check that the path "
                "names a file in a directory you can write, or set JUPYTER_AGENT_STORE to "
                "another path."
            )
        return None

    def _open(self) -> tuple[duckdb.DuckDBPyConnection, bool]:
        """Open DuckDB; check its schema unless the files are as this object last left them.

        The check (a newer version's store is refused, an older one migrated) costs
        about as much as the open; a file replaced or changed by another process
        (its inode, mtime or size, or its WAL's, differ) is checked again.
        """
        created = not self.path.exists()
        before = None if created else self._identity()
        read_only = not created and not self._writable()
        wait = getattr(self._local, "wait", None)
        timeout = self.busy_timeout if wait is None else wait
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                # Small blocks for new files: DuckDB gives every table and index
                # blocks of its own, and at the default 256 KiB that fixed floor
                # dwarfs the checkpoints of a short run.
                config = {"default_block_size": str(BLOCK_SIZE)} if created else {}
                # read_only only when set: a connection whose configuration differs
                # from one open in this process (another thread) is refused.
                extra = {"read_only": True} if read_only else {}
                con = duckdb.connect(str(self.path), config=config, **extra)
                self.opens += 1
                break
            except duckdb.Error as exc:
                low = str(exc).lower()
                if not read_only and not created and ("read-only" in low or "denied" in low):
                    read_only = True  # not writable after all: serve reads
                    continue
                # Another thread here is creating the file with its block size: that
                # connection closes in moments, like another process's lock.
                if not _is_lock_error(exc) and "different configuration" not in low:
                    raise self._unusable(exc) from exc
                created = created and not self.path.exists()
                if time.monotonic() > deadline:
                    raise StoreBusy(
                        f"The agent store {self.path} stayed busy for {timeout:.1f} s "
                        "(another process holds it). Nothing was lost: checkpoints stay in "
                        "their journals and are folded in on the next read."
                    ) from exc
                time.sleep(delay)
                # Short steps: holds are short, and a long sleep misses the gaps between them.
                delay = min(delay * 2, 0.05)
        try:
            if created:
                os.chmod(self.path, 0o600)
            if self._checked != (before, read_only):
                self._check_schema(con, read_only)
        except duckdb.Error as exc:
            con.close()
            raise self._unusable(exc) from exc
        except BaseException:
            con.close()
            raise
        return con, read_only

    def _check_schema(self, con: duckdb.DuckDBPyConnection, read_only: bool = False) -> None:
        self.schema_checks += 1
        # Read the version before creating anything: a store written by a newer
        # version must be left exactly as it is.
        has_meta = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'"
        ).fetchone()
        row = None
        if has_meta and has_meta[0]:
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and parse_version(row[0], SCHEMA_VERSION) > SCHEMA_VERSION:
            raise StoreError(
                f"The agent store {self.path} was written by a newer jupyter-agent (schema "
                f"{row[0]}, this one reads {SCHEMA_VERSION}). Upgrade jupyter-agent; the store "
                "was not modified."
            )
        version = SCHEMA_VERSION if row is None else parse_version(row[0], SCHEMA_VERSION)
        # A v1 file this process cannot upgrade is read as it is, its payloads converted.
        self._v1 = version < 2
        if read_only:
            return
        con.execute(_DDL)
        if row is None:
            con.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
            )
        elif version < SCHEMA_VERSION:
            self._migrate(con)

    def _migrate(self, con: duckdb.DuckDBPyConnection) -> None:
        """Upgrade a schema 1 store in place: dill payloads become JSON.

        A copy of the file is kept first (named in a :class:`StoreWarning`). The
        old payloads are unpickled here, once, so only a store this user alone
        could have written is migrated.
        """
        with _migrate_lock:
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None or parse_version(row[0], SCHEMA_VERSION) >= SCHEMA_VERSION:
                self._v1 = False
                return  # another thread here did it meanwhile
            self.check_trusted()
            con.execute("CHECKPOINT")  # the file holds everything: the copy is complete
            backup = self.path.with_name(f"{self.path.name}.v{row[0]}.bak")
            n = 1
            while backup.exists():
                n += 1
                backup = self.path.with_name(f"{self.path.name}.v{row[0]}.{n}.bak")
            try:
                shutil.copyfile(self.path, backup)
                os.chmod(backup, 0o600)
            except OSError as exc:
                raise StoreError(
                    f"The agent store {self.path} must be upgraded, but a copy of it could not "
                    f"be made first ({exc.strerror or exc}); it was not modified. Free space "
                    f"beside it, then run again."
                ) from exc
            from ...core.state import dill_to_json

            con.execute("BEGIN")
            columns = {
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'checkpoints'"
                ).fetchall()
            }
            if "payload_format" not in columns:
                con.execute("ALTER TABLE checkpoints ADD COLUMN payload_format VARCHAR")
            con.execute(
                "UPDATE checkpoints SET payload_format = 'dill' WHERE payload_format IS NULL"
            )
            keys = con.execute(
                "SELECT run_id, step FROM checkpoints WHERE payload_format = 'dill'"
            ).fetchall()
            converted = 0
            for run_id, step in keys:
                (data,) = con.execute(
                    "SELECT payload FROM checkpoints WHERE run_id = ? AND step = ?", [run_id, step]
                ).fetchone()
                try:
                    payload = dill_to_json(bytes(data or b""))
                except Exception:  # unreadable: left tagged dill, refused when loaded
                    continue
                con.execute(
                    "UPDATE checkpoints SET payload = ?, payload_format = 'json' "
                    "WHERE run_id = ? AND step = ?",
                    [payload, run_id, step],
                )
                converted += 1
            con.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)]
            )
            con.execute("COMMIT")
            self._v1 = False
        _warn(
            f"The agent store {self.path} was upgraded from schema {row[0]} to "
            f"{SCHEMA_VERSION} ({converted} of {len(keys)} checkpoints re-encoded as JSON). "
            f"A copy of the store as it was is kept as {backup}; delete it once you no "
            "longer need older jupyter-agent versions.",
            backup,
        )

    def _merge(self, con: duckdb.DuckDBPyConnection) -> list[tuple[journal.JournalFile, bytes]]:
        """Fold finished runs' journals into DuckDB and delete them; return live ones' news.

        A journal whose owner has died is folded and deleted, but only once
        everything in it is in DuckDB: one with damaged frames is kept (renamed
        ``*.damaged``) and reported, and one with records this version does not
        know stays for a newer version.

        A live journal is the running kernel's to fold, when its execution ends:
        folding it on every read made each reader write to DuckDB (a commit, a
        write-ahead log, a checkpoint on close) and hold the file that much
        longer, for every running agent. Its records past the last fold are
        returned (closed journal, bytes) for :meth:`_show_live`, which shows them
        without storing them. Only a live journal that grew past
        ``LIVE_FOLD_BYTES`` since its last fold is folded by a reader, from
        where that fold stopped, so showing a long run stays cheap.
        """
        pending: list[tuple[journal.JournalFile, bytes]] = []
        lock = _merge_locks.setdefault(Path(os.path.abspath(self.path)), threading.Lock())
        with lock:
            try:
                exposed = _exposure(os.stat(self.journal_dir))
            except FileNotFoundError:
                return pending
            if exposed:
                _warn(
                    f"The journal directory {self.journal_dir} {exposed}, so none of its "
                    "journals was folded into the agent store: another user could have planted "
                    "one whose checkpoints run code when loaded. If it is yours, make it "
                    f"private (chmod go-w {self.journal_dir}); journals written by others stay "
                    f"out even then. {_INSPECT}",
                    self.journal_dir,
                )
                return pending
            skipped: list[tuple[Path, OSError]] = []
            journals = journal.scan(self.journal_dir, skipped)
            for path, exc in skipped:
                _warn(f"{path} was skipped: {exc.strerror or exc}. Move it out of the way.", path)
            for jf in journals:
                try:
                    untrusted = _exposure(jf)
                    if untrusted:
                        _warn(
                            f"The checkpoint journal {jf.path} {untrusted}, so it was not folded "
                            "into the agent store (loading a checkpoint can run code). The "
                            "journal directory was open to other users at some time: anything "
                            f"written while it was exposed may be hostile. {_INSPECT}",
                            jf.path,
                        )
                        continue
                    news = self._merge_one(con, jf)
                    if news:
                        pending.append((jf, news))
                except OSError as exc:  # unreadable: the rest of the store stays usable
                    with contextlib.suppress(duckdb.Error):
                        con.execute("ROLLBACK")
                    _warn(f"{jf.path} was skipped: {exc.strerror or exc}.", jf.path)
                except BaseException:
                    with contextlib.suppress(duckdb.Error):
                        con.execute("ROLLBACK")
                    raise
                finally:
                    jf.close()
            self._drop_folded()
        return pending

    def _drop_folded(self, run_ids: set[str] | None = None) -> None:
        """Delete folded journals kept past :attr:`FOLDED_KEEP` (or all of ``run_ids``)."""
        cutoff = time.time() - self.FOLDED_KEEP
        for path in self.journal_dir.glob("*" + journal.FOLDED_SUFFIX):
            with contextlib.suppress(OSError):
                doomed = (
                    path.name.split(".", 1)[0] in run_ids
                    if run_ids is not None
                    else os.stat(path).st_ctime < cutoff  # the rename set it
                )
                if doomed:
                    path.unlink()

    def _merge_one(self, con: duckdb.DuckDBPyConnection, jf: journal.JournalFile) -> bytes:
        """Fold one journal; for a live one below the size to fold, return its news instead."""
        row = con.execute(
            "SELECT merged_to FROM journal_progress WHERE journal = ?", [jf.path.name]
        ).fetchone()
        start = row[0] if row else 0
        data = jf.read(start)
        if jf.live and len(data) < self.LIVE_FOLD_BYTES:
            return data
        found = journal.decode(data)
        unknown = None
        damaged = list(found.damaged)
        con.execute("BEGIN")
        rows = _RowBatch(con)
        ends = [*found.offsets[1:], found.end][: len(found.offsets)]
        try:
            for offset, end, rec in zip(found.offsets, ends, found.records, strict=True):
                if malformed(rec):
                    damaged.append((offset, end))  # a CRC-valid record that is not a row
                elif not _insert(con, rec, rows) and unknown is None:
                    unknown = offset
            rows.flush()
        except _DATA_ERRORS as exc:  # a record DuckDB refuses: set the whole journal aside
            con.execute("ROLLBACK")
            self._quarantine(jf, f"a record could not be stored ({exc})")
            return b""
        damaged.sort()
        folded = len(found.records) - (len(damaged) - len(found.damaged))
        keep = not jf.live and (unknown is not None or bool(damaged))
        if jf.live or unknown is not None:
            # Never move past a record this version could not store.
            end = start + (found.end if unknown is None else unknown)
            con.execute(
                "INSERT OR REPLACE INTO journal_progress VALUES (?, ?)", [jf.path.name, end]
            )
        else:
            con.execute("DELETE FROM journal_progress WHERE journal = ?", [jf.path.name])
        due = journal.crash_due("merge.live" if jf.live else "merge.dead")
        if due == "before":
            journal.crash()
        con.execute("COMMIT")
        if due == "after":
            journal.crash()
        if damaged:
            self._report_damage(jf, damaged, folded, start, moved=not jf.live)
        if jf.live or keep:
            return b""
        # Its owner is gone and everything readable is in DuckDB; a torn tail is
        # an unacknowledged write and is dropped with the file. It is kept a while
        # under another name, for readers waiting for DuckDB (see :mod:`.stale`).
        try:
            jf.path.rename(jf.path.with_name(jf.path.name + journal.FOLDED_SUFFIX))
        except OSError:
            jf.path.unlink(missing_ok=True)
        return b""

    def _show_live(
        self, con: duckdb.DuckDBPyConnection, pending: list[tuple[journal.JournalFile, bytes]]
    ) -> bool:
        """Insert live journals' runs and checkpoints in a transaction the caller rolls back.

        Readers see a running agent's progress as if it were folded, and the
        DuckDB file is not written (nothing is committed). Blob records are left
        out: only the kernel that owns a run reads its values, after it was folded.
        Damaged or unknown records are skipped here; the fold reports them.
        """
        con.execute("BEGIN")
        try:
            rows = _RowBatch(con)
            for _jf, data in pending:
                for rec in journal.decode(data).records:
                    if rec.table != "blobs" and not malformed(rec):
                        _insert(con, rec, rows)
            rows.flush()
            apply_moves(con)
        except duckdb.Error:  # what the fold would refuse: show what is stored
            con.execute("ROLLBACK")
            return False
        return True

    def _report_damage(
        self,
        jf: journal.JournalFile,
        damaged: list[tuple[int, int]],
        folded: int,
        start: int,
        *,
        moved: bool,
    ) -> None:
        where = ", ".join(f"bytes {start + a}-{start + b}" for a, b in damaged)
        kept = self._set_aside(jf) if moved else jf.path
        _warn(
            f"The checkpoint journal {jf.path.name} of run {jf.run_id} has damaged data "
            f"({where}); {folded} intact record(s) were folded into the store "
            f"and the file was kept as {kept} for inspection. A run missing a checkpoint "
            "cannot be resumed; the others are unaffected.",
            kept,
        )

    def _quarantine(self, jf: journal.JournalFile, why: str) -> None:
        """Fold nothing of a journal DuckDB refuses; keep it for inspection once its run ended."""
        kept = jf.path if jf.live else self._set_aside(jf)
        _warn(
            f"The checkpoint journal {jf.path.name} of run {jf.run_id} was not folded into the "
            f"store: {why}. It was kept as {kept} for inspection; the other runs are "
            f"unaffected. {_INSPECT}",
            kept,
        )

    @staticmethod
    def _set_aside(jf: journal.JournalFile) -> Path:
        kept = jf.path.with_name(jf.path.name + journal.DAMAGED_SUFFIX)
        with contextlib.suppress(OSError):
            jf.path.rename(kept)
        return kept

    def flush(self) -> None:
        """Fold finished runs' journals into DuckDB now (running ones are their kernel's)."""
        with self._connect(live=False):
            pass

    # -- reading -----------------------------------------------------------------

    def check_trusted(self) -> None:
        """Refuse to hand out pickled data from files another user wrote or could write.

        Payloads and blobs are unpickled by the kernel, and unpickling runs code:
        a store owned by someone else, or writable by others, could make this
        kernel run their code. Metadata reads (what the server does) need no check.
        """
        for path in (self.path, self.journal_dir, self.blob_dir):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            exposed = _exposure(st)
            if exposed is None:
                continue
            fix = (
                "Use a store of your own (JUPYTER_AGENT_STORE)."
                if st.st_uid != os.getuid()
                else f"If it is yours, make it private (chmod go-w {path}) and run the cell again."
            )
            raise StoreError(
                f"The agent store {path} {exposed}; its checkpoints are not loaded, because "
                f"loading a checkpoint can run code. {fix}"
            )

    def live_runs(self) -> set[str]:
        return journal.live_run_ids(self.journal_dir)

    def runs(self, notebook: str | None = None, agent: str | None = None) -> list[RunRow]:
        if not self.exists():  # reading never creates the store
            return []
        where, args = _filters(notebook=notebook, agent=agent)
        with self._connect() as con:
            rows = con.execute(
                f"SELECT {', '.join(RUN_COLUMNS)} FROM runs {where} ORDER BY created_at", args
            ).fetchall()
        return [run_from_row(r) for r in rows]

    def run(self, run_id: str) -> RunRow | None:
        if not self.exists():
            return None
        with self._connect() as con:
            row = con.execute(
                f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE run_id = ?", [run_id]
            ).fetchone()
        return run_from_row(row) if row else None

    def checkpoints(self, run_id: str, kind: str | None = None) -> list[CheckpointRow]:
        if not self.exists():
            return []
        with self._connect() as con:
            rows = con.execute(
                f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM checkpoints WHERE run_id = ? "
                "AND (? IS NULL OR kind = ?) ORDER BY step",
                [run_id, kind, kind],
            ).fetchall()
        return [checkpoint_from_row(r) for r in rows]

    def latest_checkpoints(self, run_ids: list[str]) -> dict[str, CheckpointRow]:
        """The last checkpoint of each run, in one query."""
        if not run_ids or not self.exists():
            return {}
        with self._connect() as con:
            rows = con.execute(
                f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM checkpoints "
                "WHERE run_id IN (SELECT UNNEST(?)) "
                "QUALIFY ROW_NUMBER() OVER (PARTITION BY run_id ORDER BY step DESC) = 1",
                [run_ids],
            ).fetchall()
        return {r[0]: checkpoint_from_row(r) for r in rows}

    def model_steps(self, run_ids: list[str]) -> dict[str, list[int]]:
        if not run_ids or not self.exists():
            return {}
        with self._connect() as con:
            return _model_steps(con, run_ids)

    def history_tail(
        self, chain: list[tuple[str, int | None]], limit: int
    ) -> tuple[list[CheckpointRow], dict]:
        """The last ``limit`` checkpoints (metadata only) of the history along ``chain``'s
        (run_id, up-to-step) segments, oldest first, and totals over all of it.

        What a timeline shows of a long run without reading its every row. Totals:
        ``checkpoints``, ``tokens``, ``prompt_tokens``, ``completion_tokens``,
        ``saved_tokens`` (of resumes), ``size``, and ``plan``: the latest plan, or None.
        """
        segments = (
            "SELECT UNNEST(?) AS seg_run, UNNEST(?) AS upto, UNNEST(?) AS pos",
            [[r for r, _ in chain], [2**31 - 1 if u is None else u for _, u in chain],
             list(range(len(chain)))],
        )  # fmt: skip
        history = (
            f"WITH seg AS ({segments[0]}), h AS (SELECT c.*, seg.pos FROM checkpoints c "
            "JOIN seg ON c.run_id = seg.seg_run AND c.step <= seg.upto) "
        )
        plan = "json_extract(info, '$.plan')"

        def total(path: str, where: str = "") -> str:
            """The sum of a number in ``info``, parsed only in rows whose text names it."""
            key = path.rsplit(".", 1)[-1]
            cast = f"TRY_CAST(json_extract_string(info, '{path}') AS BIGINT)"
            return f"sum({cast}) FILTER (WHERE info LIKE '%\"{key}\"%'{where})"

        saved = total("$.saved_tokens", " AND kind = 'resume'")
        with self._connect() as con:
            rows = con.execute(
                f"{history} SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM h "
                "ORDER BY pos DESC, step DESC LIMIT ?",
                [*segments[1], max(limit, 0)],
            ).fetchall()
            totals = con.execute(
                f"{history} SELECT count(*), sum(tokens), {total('$.usage.prompt_tokens')}, "
                f"{total('$.usage.completion_tokens')}, "
                f"{saved}, sum(size), "
                f"arg_max({plan}, pos * 4294967296 + step) FILTER (WHERE info LIKE '%\"plan\"%' "
                f"AND CAST({plan} AS VARCHAR) NOT IN ('null', '\"\"', '[]', '{{}}')) FROM h",
                segments[1],
            ).fetchone()
        assert totals is not None
        keys = ("checkpoints", "tokens", "prompt_tokens", "completion_tokens", "saved_tokens")
        out: dict = {k: int(v or 0) for k, v in zip((*keys, "size"), totals[:6], strict=True)}
        out["plan"] = json.loads(totals[6]) if totals[6] is not None else None
        return [checkpoint_from_row(r) for r in reversed(rows)], out

    # -- summaries ------------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.exists() or self.journal_dir.is_dir()

    def _sampled(self, read: Callable[[duckdb.DuckDBPyConnection], _T]) -> tuple[_T, set[str]]:
        """``read`` on one connection, with the runs live before or after it.

        A run that started or stopped during the read is live in one of the samples.
        """
        live = self.live_runs()
        with self._connect() as con:
            result = read(con)
        return result, live | self.live_runs()

    def run_stats(self, run_ids: list[str]) -> dict[str, RunStats]:
        if not run_ids or not self.exists():
            return {}

        def read(con: duckdb.DuckDBPyConnection) -> dict[str, RunStats]:
            return _stats(con, _runs(con, "WHERE run_id IN (SELECT UNNEST(?))", [run_ids]))

        with self._connect() as con:
            return read(con)

    def agent_summaries(
        self, notebook: str, *, timeline: int = TIMELINE_LIMIT
    ) -> list[AgentSummary]:
        if not self.exists():
            return []

        def read(con: duckdb.DuckDBPyConnection) -> tuple:
            runs = _runs(con, "WHERE notebook = ? ORDER BY created_at", [notebook])
            latest = store_rows.latest_runs(runs)
            return (
                runs,
                latest,
                _timelines(con, list(latest.values()), timeline),
                _stats(con, list(latest.values()), runs),
            )

        (runs, _latest, timelines, stats), live = self._sampled(read)
        return store_rows.agent_summaries(runs, timelines, stats, live)

    def agent_detail(
        self, notebook: str, agent: str, *, timeline: int = TIMELINE_LIMIT
    ) -> AgentDetail | None:
        if not self.exists():
            return None

        def read(con: duckdb.DuckDBPyConnection) -> tuple:
            runs = _runs(
                con, "WHERE notebook = ? AND agent = ? ORDER BY created_at", [notebook, agent]
            )
            if not runs:
                return runs, {}, {}
            return runs, _timelines(con, runs[-1:], timeline), _stats(con, runs)

        (runs, timelines, stats), live = self._sampled(read)
        return store_rows.agent_detail(agent, runs, timelines, stats, live)

    def run_detail(self, run_id: str) -> RunDetail | None:
        if not self.exists():
            return None

        def read(con: duckdb.DuckDBPyConnection) -> tuple:
            runs = _runs(con, "WHERE run_id = ?", [run_id])
            if not runs:
                return None, [], {}
            return runs[0], _checkpoints(con, run_id), _stats(con, runs)

        (run, checkpoints, stats), live = self._sampled(read)
        if run is None:
            return None
        return RunDetail(store_rows.summary(run, stats, live), checkpoints)

    def forks(self, run_ids: list[str]) -> list[RunRow]:
        if not run_ids or not self.exists():
            return []
        with self._connect() as con:
            return _runs(
                con,
                "WHERE parent_run IN (SELECT UNNEST(?)) AND run_id NOT IN (SELECT UNNEST(?)) "
                "ORDER BY created_at",
                [run_ids, run_ids],
            )

    def info(self) -> StoreInfo:
        if not self.exists():
            return StoreInfo(self.location, False, None, SCHEMA_VERSION, 0, 0)
        with self._connect() as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            runs = con.execute("SELECT count(*) FROM runs").fetchone()
            checkpoints = con.execute("SELECT count(*) FROM checkpoints").fetchone()
        return StoreInfo(
            self.location,
            True,
            parse_version(row[0], SCHEMA_VERSION) if row else None,
            SCHEMA_VERSION,
            runs[0] if runs else 0,
            checkpoints[0] if checkpoints else 0,
        )

    def payloads(
        self, chain: list[tuple[str, int | None]], since: int = 0
    ) -> list[tuple[CheckpointRow, bytes]]:
        """Checkpoints with their JSON payloads along (run_id, up-to-step) segments.

        No trust check: nothing here is unpickled (but a read-only store of the
        previous release, whose dill payloads are converted as they are read).

        A history with a hole in it (a checkpoint lost to a damaged journal)
        would fold into a conversation that never happened, so it is refused.
        """
        out: list[tuple[CheckpointRow, bytes]] = []
        if not self.exists():
            return out
        with self._connect() as con:
            fmt = "'dill'" if self._v1 else "coalesce(payload_format, 'dill')"
            for i, (run_id, upto) in enumerate(chain):
                rows = con.execute(
                    f"SELECT {', '.join(CHECKPOINT_COLUMNS)}, {fmt}, payload FROM checkpoints "
                    "WHERE run_id = ? AND step BETWEEN ? AND ? ORDER BY step",
                    [run_id, since, upto if upto is not None else 2**31 - 1],
                ).fetchall()
                steps = [r[1] for r in rows]
                first = since if i == 0 else (steps[0] if steps else 0)
                missing = store_rows.first_missing(steps, first)
                if missing is not None:
                    raise StoreError(
                        f"Checkpoint {missing} of run {run_id} is missing from the store (lost "
                        "to a damaged journal, which was kept beside the store for inspection), "
                        "so this run cannot be resumed or restored faithfully. Run the cell with "
                        "--restart to start over; the other runs are unaffected."
                    )
                out.extend(
                    (checkpoint_from_row(r[:-2]), json_payload(r[-2], r[-1], self.check_trusted))
                    for r in rows
                )
        return out

    def blobs(self, hashes: list[str]) -> dict[str, bytes]:
        if not hashes or not self.exists():
            return {}
        self.check_trusted()
        with self._connect() as con:
            rows = con.execute(
                "SELECT hash, size, data FROM blobs WHERE hash IN (SELECT UNNEST(?))", [hashes]
            ).fetchall()
        out = {h: bytes(d) for h, _, d in rows if d is not None}
        for h, size, data in rows:  # outside the connection: other processes need not wait
            if data is None:
                try:
                    value = blobfiles.read(self.blob_dir, h, size)
                except blobfiles.Untrusted as exc:
                    raise StoreError(
                        f"The stored value {exc.strerror}; it is not loaded, because loading "
                        "a value can run code. Use a store of your own (JUPYTER_AGENT_STORE)."
                    ) from None
                if value is not None:
                    out[h] = value
        return out

    def sizes(self) -> dict[str, int]:
        """Bytes on disk of the DuckDB file, of the journals and of the blob files."""
        db = self.path.stat().st_size if self.path.exists() else 0
        jn = (
            sum(p.stat().st_size for p in self.journal_dir.glob("*"))
            if self.journal_dir.is_dir()
            else 0
        )
        bf = (
            sum(p.stat().st_size for p in self.blob_dir.glob("*/*"))
            if self.blob_dir.is_dir()
            else 0
        )
        return {"duckdb": db, "journals": jn, "blobs": bf}

    # -- deleting ----------------------------------------------------------------

    def delete_runs(self, run_ids: list[str]) -> int:
        if not run_ids:
            return 0
        busy = self.live_runs() & set(run_ids)
        if busy:
            raise Conflict(f"Run {sorted(busy)[0]} is running; stop it before deleting it.")
        # Blobs a running agent wrote for a checkpoint it has not journaled yet stay.
        pending = self._live_blob_hashes()
        with self._connect(live=False) as con:
            con.execute("BEGIN")
            con.execute("DELETE FROM checkpoints WHERE run_id IN (SELECT UNNEST(?))", [run_ids])
            con.execute("DELETE FROM runs WHERE run_id IN (SELECT UNNEST(?))", [run_ids])
            con.execute(
                "DELETE FROM blobs WHERE hash NOT IN (SELECT DISTINCT UNNEST(CAST(json_extract("
                "info, '$.blobs') AS VARCHAR[])) FROM checkpoints WHERE info IS NOT NULL) "
                "AND hash NOT IN (SELECT UNNEST(?))",
                [sorted(pending)],
            )
            con.execute("COMMIT")
            kept = {
                h for (h,) in con.execute("SELECT hash FROM blobs WHERE data IS NULL").fetchall()
            }
        # Files younger than the grace period stay too: their writer may not have journaled them.
        blobfiles.collect(self.blob_dir, kept | pending)
        self._drop_folded(set(run_ids))  # a stale answer must not show them again
        return len(run_ids)

    def _live_blob_hashes(self) -> set[str]:
        """Hashes of the blobs running agents' journals hold (reading no payload)."""
        found: set[str] = set()
        for jf in journal.scan(self.journal_dir):
            try:
                if jf.live:
                    found.update(
                        str(r.row.get("hash"))
                        for r in journal.decode(jf.read()).records
                        if r.table == "blobs"
                    )
            finally:
                jf.close()
        return found

    def delete_agent(self, notebook: str, agent: str, *, keep_latest: bool = False) -> list[str]:
        return delete_agent_runs(self, notebook, agent, keep_latest=keep_latest)

    # -- notebook moves ------------------------------------------------------------

    def move_notebook(self, old: str, new: str, moved_at: float | None = None) -> int:
        """Record that the notebook or folder at ``old`` now lives at ``new``.

        Runs stored under ``old`` (or below it, for a folder) move along; runs
        folded in later from journals written before the move follow them when
        :func:`apply_moves` runs. Returns how many runs moved.
        """
        with self._connect(live=False) as con:
            con.execute("BEGIN")
            con.execute(
                "INSERT INTO notebook_moves VALUES (?, ?, ?)",
                [old, new, time.time() if moved_at is None else moved_at],
            )
            moved = apply_moves(con)
            con.execute("COMMIT")
        return moved

    def resolve_notebook(self, path: str, since: float | None = None) -> str:
        """Where the notebook known as ``path`` since ``since`` lives now.

        A kernel learns its notebook's path when it starts and is not told about
        renames, so the default ``since`` is this process's start time.
        """
        if not self.path.exists():  # no store, so no move recorded in it
            return path
        cutoff = process_started_at() if since is None else since
        with self._connect(merge=False) as con:
            moves = con.execute(
                "SELECT old, new FROM notebook_moves WHERE moved_at > ? ORDER BY moved_at",
                [cutoff],
            ).fetchall()
        for old, new in moves:
            path = moved_path(path, old, new)
        return path

    # -- what was learnt about models --------------------------------------------------

    def learnt_window(self, model: str) -> int | None:
        """The context window ``model``'s endpoint last reported, if it ever refused one."""
        if not self.path.exists():
            return None
        with self._connect(merge=False) as con:
            row = con.execute(
                "SELECT value FROM meta WHERE key = ?", [f"context_window:{model}"]
            ).fetchone()
        return int(row[0]) if row and str(row[0]).isdigit() else None

    def remember_window(self, model: str, tokens: int) -> None:
        """Remember ``model``'s context window for later runs (see :mod:`context`)."""
        with self._connect(merge=False) as con:
            con.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [f"context_window:{model}", str(tokens)],
            )


class RunWriter:
    """Appends one run execution's records to its journal, with secrets redacted.

    Redaction here is the last line of defence: prompts, summaries, tool code
    and error texts in rows are scrubbed, and a checkpoint payload that still
    holds a secret is re-encoded redacted. Blobs are screened earlier, by
    :mod:`~jupyter_agent.namespace.tracking`, which skips values holding a secret.
    """

    def __init__(self, store: Store, jw: JournalWriter, secrets: list[str] | None = None) -> None:
        self.store = store
        self._journal = jw
        self.secrets = list(secrets or [])
        self.bytes_written = 0

    def put_run(self, run: RunRow) -> None:
        row = redact({c: getattr(run, c) for c in RUN_COLUMNS}, self.secrets)
        row["info"] = json.dumps(row["info"])
        self._append(Record("runs", row), durable=False)  # with the first checkpoint

    def prepare_blob(self, digest: str, data: bytes) -> None:
        """Write a large value's file now (thread-safe); :meth:`put_blob` then only journals it."""
        if len(data) >= blobfiles.MIN_BYTES and blobfiles.usable_name(digest):
            self._write_file(digest, data)

    def put_blob(self, digest: str, data: bytes) -> None:
        """Journal a value; a large one is written to its file first and journaled by reference."""
        if len(data) < blobfiles.MIN_BYTES or not blobfiles.usable_name(digest):
            # Durable with the checkpoint that refers to it, written next.
            self._append(Record("blobs", {"hash": digest, "size": len(data)}, data), durable=False)
            return
        self._write_file(digest, data)  # a file prepared already is only touched
        self.bytes_written += len(data)
        record = Record("blobs", {"hash": digest, "size": len(data), "file": True})
        self._append(record, durable=False)

    def _write_file(self, digest: str, data: bytes) -> None:
        try:
            blobfiles.write(self.store.blob_dir, digest, data)
        except OSError as exc:
            raise StoreError(
                f"Cannot write a value under {self.store.blob_dir}: {exc.strerror or exc}. "
                "The agent stopped at its last saved checkpoint; free space or fix "
                "permissions, then re-run the cell to resume."
            ) from exc

    def put_checkpoint(self, cp: CheckpointRow, payload: bytes, *, durable: bool = True) -> None:
        row = redact({c: getattr(cp, c) for c in CHECKPOINT_COLUMNS}, self.secrets)
        row["info"] = json.dumps(row["info"])
        row["payload_format"] = "json"
        if self.secrets and contains_secret(payload, self.secrets):
            from ...core.state import redact_payload

            payload = redact_payload(payload, self.secrets)
        self._append(Record("checkpoints", row, payload), durable=durable)

    def _append(self, record: Record, *, durable: bool = True) -> None:
        try:
            self.bytes_written += self._journal.append(record, durable=durable)
        except OSError as exc:
            raise StoreError(
                f"Cannot write a checkpoint to {self._journal.path}: {exc.strerror or exc}. "
                "The agent stopped at its last saved checkpoint; free space or fix "
                "permissions, then re-run the cell to resume."
            ) from exc
        except ValueError as exc:  # a record too large to frame
            raise StoreError(f"Cannot write a checkpoint: {exc}.") from exc

    def close(self, *, merge: bool = True) -> None:
        """Release the journal and fold it into DuckDB (best effort: a busy store merges later)."""
        self._journal.close()
        if merge:
            with contextlib.suppress(StoreError):
                self.store.flush()


class _RowBatch:
    """Collects small rows and inserts them many to a statement.

    One ``INSERT`` per row costs DuckDB ~2 ms; a multi-row ``VALUES`` list makes
    folding a 1,500-checkpoint journal ~20x faster.
    """

    SIZE = 100

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.pending: dict[str, list[list]] = {}

    def add(self, table: str, values: list) -> None:
        rows = self.pending.setdefault(table, [])
        rows.append(values)
        if len(rows) >= self.SIZE:
            self._insert(table, rows)
            rows.clear()

    def flush(self) -> None:
        for table, rows in self.pending.items():
            if rows:
                self._insert(table, rows)
        self.pending.clear()

    def _insert(self, table: str, rows: list[list]) -> None:
        cols = _TABLE_COLUMNS[table]
        one = "(" + ", ".join("?" for _ in cols) + ")"
        self.con.execute(
            f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) VALUES "
            + ", ".join(one for _ in rows),
            [v for row in rows for v in row],
        )


#: How to look into a suspicious journal without loading (unpickling) anything.
_INSPECT = "Inspect a journal without loading it with: python -m jupyter_agent.journal FILE."

#: DuckDB errors that mean one record's values cannot be stored, not a broken store.
_DATA_ERRORS = (
    duckdb.ConstraintException,
    duckdb.ConversionException,
    duckdb.InvalidInputException,
    duckdb.TypeMismatchException,
    duckdb.NotImplementedException,
)


def _exposure(st: os.stat_result | journal.JournalFile) -> str | None:
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


def _warn(message: str, path: Path) -> None:
    """A :class:`StoreWarning` attributed to ``path``, so the notice points at what to inspect.

    Shown once per message in a process (a polling reader would repeat it every poll).
    """
    warnings.warn_explicit(StoreWarning(message), StoreWarning, str(path), 0, registry=_warned)


def _insert(con: duckdb.DuckDBPyConnection, rec: Record, rows: _RowBatch) -> bool:
    """Store one journal record; False for a record kind this version does not know."""
    if rec.table == "runs":
        rows.add("runs", [rec.row.get(c) for c in RUN_COLUMNS])
        return True
    if rec.table == "checkpoints":
        payload, fmt = rec.payload, rec.row.get("payload_format") or "dill"
        if fmt == "dill":  # a journal of the previous release: re-encode it once, here
            from ...core.state import dill_to_json

            with contextlib.suppress(Exception):  # unreadable: kept tagged, refused on load
                payload, fmt = dill_to_json(payload or b""), "json"
        rows.add("checkpoints", [rec.row.get(c) for c in CHECKPOINT_COLUMNS] + [payload, fmt])
        return True
    if rec.table == "blobs":
        # INSERT OR IGNORE costs DuckDB ~10x the plain insert for a large value (4 s
        # for 64 MiB); merges are serialized, so looking first is as safe.
        # A value kept in a file (``file``) is stored as a reference: data NULL.
        if con.execute("SELECT 1 FROM blobs WHERE hash = ?", [rec.row["hash"]]).fetchone():
            return True
        data = None if rec.row.get("file") is True else rec.payload
        con.execute(
            "INSERT INTO blobs (hash, size, data) VALUES (?, ?, ?)",
            [rec.row["hash"], rec.row["size"], data],
        )
        return True
    return False  # a record kind from a newer version: left in its journal for that version


def _filters(**kw: str | None) -> tuple[str, list]:
    parts = [(f"{k} = ?", v) for k, v in kw.items() if v is not None]
    if not parts:
        return "", []
    return "WHERE " + " AND ".join(p for p, _ in parts), [v for _, v in parts]


def _runs(con: duckdb.DuckDBPyConnection, where: str, args: list) -> list[RunRow]:
    rows = con.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs {where}", args).fetchall()
    return [run_from_row(r) for r in rows]


def _checkpoints(con: duckdb.DuckDBPyConnection, run_id: str) -> list[CheckpointRow]:
    rows = con.execute(
        f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM checkpoints WHERE run_id = ? ORDER BY step",
        [run_id],
    ).fetchall()
    return [checkpoint_from_row(r) for r in rows]


def _timelines(
    con: duckdb.DuckDBPyConnection, runs: list[RunRow], limit: int
) -> dict[str, list[CheckpointRow]]:
    """Each run's last ``limit`` checkpoints, oldest first."""
    rows = con.execute(
        f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM checkpoints "
        "WHERE run_id IN (SELECT UNNEST(?)) "
        "QUALIFY ROW_NUMBER() OVER (PARTITION BY run_id ORDER BY step DESC) <= ? "
        "ORDER BY run_id, step",
        [[r.run_id for r in runs], limit],
    ).fetchall()
    out: dict[str, list[CheckpointRow]] = {}
    for r in rows:
        out.setdefault(r[0], []).append(checkpoint_from_row(r))
    return out


def _model_steps(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> dict[str, list[int]]:
    rows = con.execute(
        "SELECT run_id, list(step ORDER BY step) FROM checkpoints "
        "WHERE kind = 'model' AND run_id IN (SELECT UNNEST(?)) GROUP BY run_id",
        [run_ids],
    ).fetchall()
    return {r: list(seqs) for r, seqs in rows}


def _stats(
    con: duckdb.DuckDBPyConnection, runs: list[RunRow], known: list[RunRow] | None = None
) -> dict[str, RunStats]:
    """Aggregates of ``runs``; ``known`` are rows already read (ancestors are read as needed)."""
    if not runs:
        return {}
    family = {r.run_id: r for r in [*(known or []), *runs]}
    missing = {r.parent_run for r in family.values() if r.parent_run} - set(family)
    while missing:  # a fork's ancestors, a generation at a time
        found = _runs(con, "WHERE run_id IN (SELECT UNNEST(?))", [sorted(missing)])
        family.update((r.run_id, r) for r in found)
        missing = {r.parent_run for r in found if r.parent_run} - set(family)
    chains = {r.run_id: history_chain(r, family) for r in runs}
    needed = sorted({seg for segments in chains.values() for seg, _ in segments})
    model_steps = _model_steps(con, needed)
    rows = con.execute(
        "SELECT run_id, count(*), sum(tokens), "
        "sum(TRY_CAST(json_extract_string(info, '$.usage.prompt_tokens') AS BIGINT)), "
        "sum(TRY_CAST(json_extract_string(info, '$.usage.completion_tokens') AS BIGINT)), "
        "sum(size), max(created_at), arg_max(step, step), arg_max(status, step), "
        "arg_max(info, step), arg_max(json_extract(info, '$.plan'), step) FILTER "
        "(WHERE json_extract(info, '$.plan') IS NOT NULL) "
        "FROM checkpoints WHERE run_id IN (SELECT UNNEST(?)) GROUP BY run_id",
        [list(chains)],
    ).fetchall()
    return {r[0]: stats_from_row(r, chains[r[0]], model_steps) for r in rows}


def moved_path(path: str, old: str, new: str) -> str:
    """``path`` after moving ``old`` (a notebook or a folder) to ``new``."""
    if path == old:
        return new
    if path.startswith(old.rstrip("/") + "/"):
        return new.rstrip("/") + path[len(old.rstrip("/")) :]
    return path


def apply_moves(con: duckdb.DuckDBPyConnection) -> int:
    """Move runs created before a recorded notebook move to the new path; return how many."""
    pending = con.execute(
        "SELECT count(*) FROM runs r JOIN notebook_moves m ON r.created_at < m.moved_at "
        "AND (r.notebook = m.old OR starts_with(r.notebook, rtrim(m.old, '/') || '/'))"
    ).fetchone()
    if not pending or not pending[0]:
        return 0
    moved = 0
    for old, new, moved_at in con.execute(
        "SELECT old, new, moved_at FROM notebook_moves ORDER BY moved_at"
    ).fetchall():
        rows = con.execute(
            "SELECT run_id, notebook FROM runs WHERE created_at < ? "
            "AND (notebook = ? OR starts_with(notebook, ?))",
            [moved_at, old, old.rstrip("/") + "/"],
        ).fetchall()
        for run_id, notebook in rows:
            con.execute(
                "UPDATE runs SET notebook = ? WHERE run_id = ?",
                [moved_path(notebook, old, new), run_id],
            )
        moved += len(rows)
    return moved


_IMPORTED_AT = time.time()


def process_started_at() -> float:
    """When this process started (Linux ``/proc``; elsewhere, when this module was imported)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


#: The name the kernel and tests have always used for the DuckDB backend.
Store = DuckDBStore
