"""The DuckDB file: opened briefly, its schema checked, its errors worded.

DuckDB lets one process hold the file and excludes every other, so the store
opens it only for short moments and every open retries with backoff while
another process holds it (:meth:`DuckDBFile._open`): no checkpoint waits on
another process, and a reader waits at most ``busy_timeout``. Each open checks
the schema unless the file is as this object last left it: a newer release's
store is refused untouched, an older one is upgraded in place after a copy is
kept. A DuckDB error that says the store is damaged, full or read-only is
reworded with the fix for that cause; any other is the caller's bug and raised
as it is.

The files are private to the user: created 0600 in a 0700 directory, the
write-ahead log included (see :func:`.paths.private_files`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import StoreBusy, StoreError
from ..dialect import pinned
from ..schema import SCHEMA_VERSION, STORE_ID, checked_version, new_store_id, parse_version
from .paths import default_store_path, exposure, warn

if TYPE_CHECKING:
    import duckdb
else:
    from .lazy import duckdb  # imported at the first connection

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

#: Serializes schema creation and migrations within this process (two threads creating
#: the tables of a new file at once conflict); DuckDB's file lock does so across.
# Concurrency: its place in the lock order is in the docstring of jupyter_agent.loop.
_migrate_lock = threading.Lock()
#: DuckDB block size for new store files (see :meth:`DuckDBFile._open`).
BLOCK_SIZE = 64 * 1024
#: How to look into a suspicious journal without loading (unpickling) anything.
INSPECT = "Inspect a journal without loading it with: python -m jupyter_agent.journal FILE."


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


class DuckDBQuery:
    """A DuckDB connection as the SQL core's :class:`~jupyter_agent.store.dialect.Query`."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        return self.con.execute(sql, list(args)).fetchall()

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        row = self.con.execute(sql, list(args)).fetchone()
        return int(row[0]) if row else 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN")
        try:
            yield
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")


class DuckDBFile:
    """A store's DuckDB file and the files beside it, and how it is opened."""

    def __init__(self, path: str | os.PathLike | None = None, *, busy_timeout: float = 30.0):
        self.path = Path(path) if path is not None else default_store_path()
        self.journal_dir = self.path.with_name(self.path.name + ".journal")
        #: Large values, as content-addressed files (see :mod:`jupyter_agent.store.duckdb.blobfiles`).
        self.blob_dir = self.path.with_name(self.path.name + ".blobs")
        self.busy_timeout = busy_timeout
        self.location = str(self.path)
        #: A schema 1 file this process cannot upgrade: read as it is, its payloads converted.
        self._v1 = False
        #: How many times DuckDB was opened (what ``DuckDBStore.session`` saves shows here).
        self.opens = 0
        #: How many times the schema was checked: once per file identity (see :meth:`_open`).
        self.schema_checks = 0
        #: The files' identity (and read-only-ness) when last checked or left by this object.
        self._checked: tuple | None = None
        self._local = threading.local()

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

    def waiting(self, seconds: float) -> contextlib.AbstractContextManager[None]:
        """Wait at most ``seconds`` for the DuckDB file in this thread, not ``busy_timeout``.

        For a reader that has something else to show meanwhile (see :mod:`jupyter_agent.store.duckdb.stale`).
        """
        return pinned(self._local, "wait", seconds)

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
                config: dict[str, str | bool | int | float | list[str]] = (
                    {"default_block_size": str(BLOCK_SIZE)} if created else {}
                )
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
        version = checked_version(str(self.path), None if row is None else row[0])
        # A v1 file this process cannot upgrade is read as it is, its payloads converted.
        self._v1 = version is not None and version < 2
        if read_only:
            return
        with _migrate_lock:
            con.execute(_DDL)
            if version is None:
                con.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    [str(SCHEMA_VERSION)],
                )
        if version is not None and version < 2:
            self._migrate(con)
        elif version is not None and version < SCHEMA_VERSION:
            # Schemas 3 and 4 changed team stores only: the number.
            con.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version' AND value = ?",
                [str(SCHEMA_VERSION), str(version)],
            )
        with _migrate_lock:
            # The file is its one user's: one made before store ids gets its id here,
            # after an upgrade's copy, which is the file exactly as it was.
            con.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", [STORE_ID, new_store_id()])

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
                found = con.execute(
                    "SELECT payload FROM checkpoints WHERE run_id = ? AND step = ?", [run_id, step]
                ).fetchone()
                try:
                    payload = dill_to_json(bytes((found[0] if found else None) or b""))
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
        warn(
            f"The agent store {self.path} was upgraded from schema {row[0]} to "
            f"{SCHEMA_VERSION} ({converted} of {len(keys)} checkpoints re-encoded as JSON). "
            f"A copy of the store as it was is kept as {backup}; delete it once you no "
            "longer need older jupyter-agent versions.",
            backup,
        )

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
            exposed = exposure(st)
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
