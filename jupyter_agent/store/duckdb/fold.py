"""Folding journals into the DuckDB file, and showing running agents' journals to readers.

Writers never touch DuckDB while an agent runs: each run execution appends to
its own journal (:mod:`jupyter_agent.store.duckdb.journal`). Every connection
the store opens first folds finished runs' journals in for good
(:meth:`JournalFolding._merge`); a live journal is its kernel's to fold, and
readers only show its records, in a transaction they roll back
(:meth:`JournalFolding._show_live`), which keeps each open short however many
agents run. Rows are insert-only and keyed, so folding a journal twice is
harmless.

A journal is folded only if nobody else could have written it, and only once
everything readable in it is stored: damaged frames and records this version
does not know are reported and the file kept for inspection.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..api import CHECKPOINT_COLUMNS, RUN_COLUMNS
from ..dialect import first, move_runs, pinned
from ..faults import crash, crash_due
from ..rows import Record, malformed
from . import journal
from .files import INSPECT, DuckDBFile, DuckDBQuery
from .paths import exposure, private_files, warn

if TYPE_CHECKING:
    import duckdb
else:
    from .lazy import duckdb  # imported at the first connection

_TABLE_COLUMNS = {
    "runs": RUN_COLUMNS,
    "checkpoints": [*CHECKPOINT_COLUMNS, "payload", "payload_format"],
}
#: Serializes folding within this process; DuckDB's file lock does so across processes.
# Concurrency: its place in the lock order is in the docstring of jupyter_agent.loop.
_merge_locks: dict[Path, threading.Lock] = {}


def _data_errors() -> tuple[type[Exception], ...]:
    """DuckDB errors that mean one record's values cannot be stored, not a broken store."""
    return (
        duckdb.ConstraintException,
        duckdb.ConversionException,
        duckdb.InvalidInputException,
        duckdb.TypeMismatchException,
        duckdb.NotImplementedException,
    )


class JournalFolding(DuckDBFile):
    """A DuckDB file that takes in the journals beside it whenever it is opened."""

    #: A reader folds a live journal only once this much is new in it (see :meth:`_merge`).
    LIVE_FOLD_BYTES = 8 << 20
    #: Seconds a folded journal is kept (``*.folded``) for readers that cannot open DuckDB.
    FOLDED_KEEP = 120.0

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

        Inside a session (see :meth:`DuckDBStore.session`) the session's connection
        is used again (its journals were folded when it opened); the first read of a
        session that needs DuckDB opens it, for the rest of the session.
        """
        shared = getattr(self._local, "con", None)
        session = getattr(self._local, "session", None)
        if shared is None and session is not None:
            self._local.session = None  # the open below is the session's own
            try:
                shared = session.enter_context(self._connect())
            finally:
                self._local.session = session
            session.enter_context(pinned(self._local, "con", shared))
        if shared is not None:
            with self._mapped():
                yield shared
            return
        self._ensure_dir()
        with private_files(self.path.parent):
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
                    if not (read_only or shown):
                        self._closing(con)
            finally:
                if shown:
                    with contextlib.suppress(duckdb.Error):
                        con.execute("ROLLBACK")
                self._private_wal()
                con.close()
                # What this connection wrote is not a reason to check the schema again.
                self._checked = (self._identity(), read_only)

    def _closing(self, con: duckdb.DuckDBPyConnection) -> None:
        """A connection that showed nothing uncommitted is about to close; the store's
        own may note what it holds (see ``DuckDBStore``)."""

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
                exposed = exposure(os.stat(self.journal_dir))
            except FileNotFoundError:
                return pending
            if exposed:
                warn(
                    f"The journal directory {self.journal_dir} {exposed}, so none of its "
                    "journals was folded into the agent store: another user could have planted "
                    "one whose checkpoints run code when loaded. If it is yours, make it "
                    f"private (chmod go-w {self.journal_dir}); journals written by others stay "
                    f"out even then. {INSPECT}",
                    self.journal_dir,
                )
                return pending
            skipped: list[tuple[Path, OSError]] = []
            journals = journal.scan(self.journal_dir, skipped)
            for path, exc in skipped:
                warn(f"{path} was skipped: {exc.strerror or exc}. Move it out of the way.", path)
            for jf in journals:
                try:
                    untrusted = exposure(jf)
                    if untrusted:
                        warn(
                            f"The checkpoint journal {jf.path} {untrusted}, so it was not folded "
                            "into the agent store (loading a checkpoint can run code). The "
                            "journal directory was open to other users at some time: anything "
                            f"written while it was exposed may be hostile. {INSPECT}",
                            jf.path,
                        )
                        continue
                    news = self._merge_one(con, jf)
                    if news:
                        pending.append((jf, news))
                except OSError as exc:  # unreadable: the rest of the store stays usable
                    with contextlib.suppress(duckdb.Error):
                        con.execute("ROLLBACK")
                    warn(f"{jf.path} was skipped: {exc.strerror or exc}.", jf.path)
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
        except _data_errors() as exc:  # a record DuckDB refuses: set the whole journal aside
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
        due = crash_due("merge.live" if jf.live else "merge.dead")
        if due == "before":
            crash()
        con.execute("COMMIT")
        if due == "after":
            crash()
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
        warn(
            f"The checkpoint journal {jf.path.name} of run {jf.run_id} has damaged data "
            f"({where}); {folded} intact record(s) were folded into the store "
            f"and the file was kept as {kept} for inspection. A run missing a checkpoint "
            "cannot be resumed; the others are unaffected.",
            kept,
        )

    def _quarantine(self, jf: journal.JournalFile, why: str) -> None:
        """Fold nothing of a journal DuckDB refuses; keep it for inspection once its run ended."""
        kept = jf.path if jf.live else self._set_aside(jf)
        warn(
            f"The checkpoint journal {jf.path.name} of run {jf.run_id} was not folded into the "
            f"store: {why}. It was kept as {kept} for inspection; the other runs are "
            f"unaffected. {INSPECT}",
            kept,
        )

    @staticmethod
    def _set_aside(jf: journal.JournalFile) -> Path:
        kept = jf.path.with_name(jf.path.name + journal.DAMAGED_SUFFIX)
        with contextlib.suppress(OSError):
            jf.path.rename(kept)
        return kept

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


def apply_moves(con: duckdb.DuckDBPyConnection) -> int:
    """Move runs created before a recorded notebook move to the new path; return how many.

    Runs folded in from journals written before a move arrive after it; each
    fold (and each showing of live journals) makes them follow.
    """
    q = DuckDBQuery(con)
    pending = first(
        q,
        "SELECT count(*) FROM runs r JOIN notebook_moves m ON r.created_at < m.moved_at "
        "AND (r.notebook = m.old OR starts_with(r.notebook, rtrim(m.old, '/') || '/'))",
    )
    if not pending or not pending[0]:
        return 0
    moves = q.all("SELECT old, new, moved_at FROM notebook_moves ORDER BY moved_at")
    return sum(move_runs(q, old, new, moved_at) for old, new, moved_at in moves)
