"""The checkpoint store: a DuckDB file plus per-run journals beside it.

Writers never touch DuckDB while an agent runs: each run execution appends to
its own journal (see :mod:`jupyter_agent.journal`). DuckDB is opened only for
short moments — to fold journals in and to answer queries — and every open
retries with backoff while another process holds the file, so no lock error
ever reaches a user and no checkpoint waits on another process.

Every row is insert-only and keyed (runs by id, checkpoints by run and step,
blobs by content hash), so folding a journal in twice is harmless. The store
itself never unpickles a payload: that is left to the caller that owns the data
(the kernel), never the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import duckdb

from . import journal
from .journal import JournalWriter, Record

SCHEMA_VERSION = 1

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
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS blobs (hash VARCHAR PRIMARY KEY, size BIGINT NOT NULL, data BLOB);
CREATE TABLE IF NOT EXISTS journal_progress (journal VARCHAR PRIMARY KEY, merged_to BIGINT NOT NULL);
"""


class StoreError(Exception):
    """The store cannot be used; the message says why and what to do."""


class StoreBusy(StoreError):
    """Another process held the store for longer than the wait allows."""


@dataclass
class RunRow:
    run_id: str
    notebook: str
    agent: str
    cell_id: str | None
    prompt: str
    prompt_hash: str
    model: str
    parent_run: str | None
    parent_step: int | None
    created_at: float
    info: dict = field(default_factory=dict)


@dataclass
class CheckpointRow:
    run_id: str
    step: int
    kind: str
    status: str
    summary: str
    created_at: float
    duration_ms: float
    tokens: int
    size: int
    info: dict = field(default_factory=dict)


RUN_COLUMNS = [f.name for f in fields(RunRow)]
CHECKPOINT_COLUMNS = [f.name for f in fields(CheckpointRow)]


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


class Store:
    """Checkpoints of every agent, kept in one DuckDB file and its journals."""

    def __init__(self, path: str | os.PathLike | None = None, *, busy_timeout: float = 30.0):
        self.path = Path(path) if path is not None else default_store_path()
        self.journal_dir = self.path.with_name(self.path.name + ".journal")
        self.busy_timeout = busy_timeout

    # -- writing -----------------------------------------------------------------

    def writer(self, run_id: str) -> RunWriter:
        """A journal for one execution of ``run_id``; close it to fold it into DuckDB."""
        self._ensure_dir()
        try:
            return RunWriter(self, JournalWriter(self.journal_dir, run_id))
        except OSError as exc:
            raise StoreError(
                f"Cannot write checkpoints under {self.journal_dir}: {exc.strerror or exc}."
            ) from exc

    def _ensure_dir(self) -> None:
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    # -- DuckDB access -------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self, *, merge: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open DuckDB briefly (waiting while another process holds it), fold journals in."""
        self._ensure_dir()
        con = self._open()
        try:
            if merge:
                self._merge(con)
            yield con
        finally:
            con.close()

    def _open(self) -> duckdb.DuckDBPyConnection:
        created = not self.path.exists()
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.005
        while True:
            try:
                con = duckdb.connect(str(self.path))
                break
            except duckdb.Error as exc:
                if not _is_lock_error(exc):
                    raise StoreError(
                        f"The agent store {self.path} cannot be opened ({exc}). It was left "
                        "untouched: move it aside (or set JUPYTER_AGENT_STORE to another file) "
                        "to start a new store; journals of running agents are kept."
                    ) from exc
                if time.monotonic() > deadline:
                    raise StoreBusy(
                        f"The agent store {self.path} stayed busy for {self.busy_timeout:.0f} s "
                        "(another process holds it). Nothing was lost: checkpoints stay in "
                        "their journals and are folded in on the next read."
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        if created:
            os.chmod(self.path, 0o600)
        try:
            self._check_schema(con)
        except BaseException:
            con.close()
            raise
        return con

    def _check_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute(_DDL)
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"The agent store {self.path} was written by a newer jupyter-agent (schema "
                f"{row[0]}, this one reads {SCHEMA_VERSION}). Upgrade jupyter-agent; the store "
                "was not modified."
            )

    def _merge(self, con: duckdb.DuckDBPyConnection) -> None:
        """Fold every journal into DuckDB; delete the ones whose owner has died.

        Live journals are folded from where the last merge stopped, so a reader
        polling a long run does work proportional to what is new, not to the run.
        """
        for jf in journal.scan(self.journal_dir):
            try:
                row = con.execute(
                    "SELECT merged_to FROM journal_progress WHERE journal = ?", [jf.path.name]
                ).fetchone()
                records, end = journal.decode_all(jf.data, row[0] if row else 0)
                con.execute("BEGIN")
                for rec in records:
                    _insert(con, rec)
                if jf.lock_fd is None:
                    con.execute(
                        "INSERT OR REPLACE INTO journal_progress VALUES (?, ?)", [jf.path.name, end]
                    )
                else:
                    con.execute("DELETE FROM journal_progress WHERE journal = ?", [jf.path.name])
                con.execute("COMMIT")
                if jf.lock_fd is not None:
                    # Its owner is gone and everything readable is in DuckDB; a torn
                    # tail is an unacknowledged write and is dropped with the file.
                    jf.path.unlink(missing_ok=True)
            finally:
                if jf.lock_fd is not None:
                    os.close(jf.lock_fd)

    def flush(self) -> None:
        """Fold all journals into DuckDB now."""
        with self.connect():
            pass

    # -- reading -----------------------------------------------------------------

    def live_runs(self) -> set[str]:
        return journal.live_run_ids(self.journal_dir)

    def runs(self, notebook: str | None = None, agent: str | None = None) -> list[RunRow]:
        where, args = _filters(notebook=notebook, agent=agent)
        with self.connect() as con:
            rows = con.execute(
                f"SELECT {', '.join(RUN_COLUMNS)} FROM runs {where} ORDER BY created_at", args
            ).fetchall()
        return [_run_row(r) for r in rows]

    def run(self, run_id: str) -> RunRow | None:
        with self.connect() as con:
            row = con.execute(
                f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE run_id = ?", [run_id]
            ).fetchone()
        return _run_row(row) if row else None

    def checkpoints(self, run_id: str) -> list[CheckpointRow]:
        with self.connect() as con:
            rows = con.execute(
                f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM checkpoints WHERE run_id = ? "
                "ORDER BY step",
                [run_id],
            ).fetchall()
        return [_checkpoint_row(r) for r in rows]

    def latest_checkpoints(self, run_ids: list[str]) -> dict[str, CheckpointRow]:
        """The last checkpoint of each run, in one query."""
        if not run_ids:
            return {}
        with self.connect() as con:
            rows = con.execute(
                f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM checkpoints "
                "WHERE run_id IN (SELECT UNNEST(?)) "
                "QUALIFY ROW_NUMBER() OVER (PARTITION BY run_id ORDER BY step DESC) = 1",
                [run_ids],
            ).fetchall()
        return {r[0]: _checkpoint_row(r) for r in rows}

    def payloads(self, chain: list[tuple[str, int | None]]) -> list[tuple[CheckpointRow, bytes]]:
        """Checkpoints with payloads along a chain of (run_id, up-to-step) segments."""
        out: list[tuple[CheckpointRow, bytes]] = []
        with self.connect() as con:
            for run_id, upto in chain:
                rows = con.execute(
                    f"SELECT {', '.join(CHECKPOINT_COLUMNS)}, payload FROM checkpoints "
                    "WHERE run_id = ? AND step <= ? ORDER BY step",
                    [run_id, upto if upto is not None else 2**31 - 1],
                ).fetchall()
                out.extend((_checkpoint_row(r[:-1]), bytes(r[-1] or b"")) for r in rows)
        return out

    def blobs(self, hashes: list[str]) -> dict[str, bytes]:
        if not hashes:
            return {}
        with self.connect() as con:
            rows = con.execute(
                "SELECT hash, data FROM blobs WHERE hash IN (SELECT UNNEST(?))", [hashes]
            ).fetchall()
        return {h: bytes(d) for h, d in rows}

    def sizes(self) -> dict[str, int]:
        """Bytes on disk of the DuckDB file and of the journals."""
        db = self.path.stat().st_size if self.path.exists() else 0
        jn = (
            sum(p.stat().st_size for p in self.journal_dir.glob("*"))
            if self.journal_dir.is_dir()
            else 0
        )
        return {"duckdb": db, "journals": jn}

    # -- deleting ----------------------------------------------------------------

    def delete_runs(self, run_ids: list[str]) -> int:
        """Delete runs, their checkpoints, and blobs no checkpoint refers to any more."""
        if not run_ids:
            return 0
        busy = self.live_runs() & set(run_ids)
        if busy:
            raise StoreError(f"Run {sorted(busy)[0]} is running; stop it before deleting it.")
        with self.connect() as con:
            con.execute("BEGIN")
            con.execute("DELETE FROM checkpoints WHERE run_id IN (SELECT UNNEST(?))", [run_ids])
            con.execute("DELETE FROM runs WHERE run_id IN (SELECT UNNEST(?))", [run_ids])
            con.execute(
                "DELETE FROM blobs WHERE hash NOT IN (SELECT DISTINCT UNNEST(CAST(json_extract("
                "info, '$.blobs') AS VARCHAR[])) FROM checkpoints WHERE info IS NOT NULL)"
            )
            con.execute("COMMIT")
        return len(run_ids)


class RunWriter:
    """Appends one run execution's records to its journal."""

    def __init__(self, store: Store, jw: JournalWriter) -> None:
        self.store = store
        self._journal = jw
        self.bytes_written = 0

    def put_run(self, run: RunRow) -> None:
        row = {c: getattr(run, c) for c in RUN_COLUMNS}
        row["info"] = json.dumps(run.info)
        self._append(Record("runs", row))

    def put_blob(self, digest: str, data: bytes) -> None:
        self._append(Record("blobs", {"hash": digest, "size": len(data)}, data))

    def put_checkpoint(self, cp: CheckpointRow, payload: bytes) -> None:
        row = {c: getattr(cp, c) for c in CHECKPOINT_COLUMNS}
        row["info"] = json.dumps(cp.info)
        self._append(Record("checkpoints", row, payload))

    def _append(self, record: Record) -> None:
        try:
            self.bytes_written += self._journal.append(record)
        except OSError as exc:
            raise StoreError(
                f"Cannot write a checkpoint to {self._journal.path}: {exc.strerror or exc}. "
                "The agent stopped at its last saved checkpoint; free space or fix "
                "permissions, then re-run the cell to resume."
            ) from exc

    def close(self, *, merge: bool = True) -> None:
        """Release the journal and fold it into DuckDB (best effort: a busy store merges later)."""
        self._journal.close()
        if merge:
            with contextlib.suppress(StoreError):
                self.store.flush()


def _insert(con: duckdb.DuckDBPyConnection, rec: Record) -> None:
    if rec.table == "runs":
        cols = RUN_COLUMNS
        values = [rec.row.get(c) for c in cols]
    elif rec.table == "checkpoints":
        cols = [*CHECKPOINT_COLUMNS, "payload"]
        values = [rec.row.get(c) for c in CHECKPOINT_COLUMNS] + [rec.payload]
    elif rec.table == "blobs":
        cols = ["hash", "size", "data"]
        values = [rec.row["hash"], rec.row["size"], rec.payload]
    else:  # a record kind from a newer version: keep the journal readable, skip it
        return
    marks = ", ".join("?" for _ in cols)
    con.execute(f"INSERT OR IGNORE INTO {rec.table} ({', '.join(cols)}) VALUES ({marks})", values)


def _filters(**kw: str | None) -> tuple[str, list]:
    parts = [(f"{k} = ?", v) for k, v in kw.items() if v is not None]
    if not parts:
        return "", []
    return "WHERE " + " AND ".join(p for p, _ in parts), [v for _, v in parts]


def _run_row(r: tuple) -> RunRow:
    d = dict(zip(RUN_COLUMNS, r, strict=True))
    d["info"] = json.loads(d["info"]) if d["info"] else {}
    return RunRow(**d)


def _checkpoint_row(r: tuple) -> CheckpointRow:
    d = dict(zip(CHECKPOINT_COLUMNS, r, strict=True))
    d["info"] = json.loads(d["info"]) if d["info"] else {}
    return CheckpointRow(**d)
