"""The checkpoint store on PostgreSQL, for teams and for agents on several hosts.

Selected by a ``postgresql://`` URL in ``JUPYTER_AGENT_STORE`` (or
``%config AgentMagics.store``), see :func:`jupyter_agent.store.api.open_store`.
It answers the same verbs as :class:`jupyter_agent.store.duckdb.store.Store`, with three
differences that follow from a shared server:

* Writes go straight to the database, one transaction per checkpoint (with the
  blobs it refers to): there is no journal to fold.
* Liveness and one writer per agent are PostgreSQL session advisory locks, held
  by one connection per process: they are seen from every host (``pg_locks``),
  and a process that dies, wherever it ran, releases them with its connection.
* Every row carries its owner (``$JUPYTERHUB_USER``, else the login name). A
  user lists and resumes only their own agents, and a payload or blob written by
  someone else is never handed out for unpickling. See docs/store-postgres.md
  for the permissions model (one database per team, a role per member, and the
  row-level security that makes the owner column binding).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg

from ...core.redaction import secrets_in_environment
from ...errors import Conflict
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
from ..duckdb import journal
from ..duckdb.journal import Record
from ..duckdb.store import (
    AgentBusy,
    RunWriter,
    StoreBusy,
    StoreError,
    moved_path,
    process_started_at,
)
from ..rows import checkpoint_from_row, json_payload, parse_version, run_from_row

SCHEMA = "jupyter_agent"
#: 2: checkpoint payloads are JSON, tagged by ``payload_format`` (1 pickled them with dill).
SCHEMA_VERSION = 2

_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS {SCHEMA}.runs (
    run_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    notebook TEXT NOT NULL,
    agent TEXT NOT NULL,
    cell_id TEXT,
    prompt TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    model TEXT NOT NULL,
    parent_run TEXT,
    parent_step INTEGER,
    created_at DOUBLE PRECISION NOT NULL,
    info TEXT,
    lock_key BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_owner ON {SCHEMA}.runs (owner, notebook, agent, created_at);
CREATE INDEX IF NOT EXISTS runs_by_lock ON {SCHEMA}.runs (lock_key);
CREATE TABLE IF NOT EXISTS {SCHEMA}.checkpoints (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    summary TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    duration_ms DOUBLE PRECISION NOT NULL,
    tokens INTEGER NOT NULL,
    size INTEGER NOT NULL,
    info TEXT,
    payload BYTEA,
    payload_format TEXT DEFAULT 'json',
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.blobs (
    hash TEXT NOT NULL,
    owner TEXT NOT NULL,
    size BIGINT NOT NULL,
    data BYTEA,
    PRIMARY KEY (hash, owner)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.notebook_moves (
    owner TEXT NOT NULL,
    old TEXT NOT NULL,
    new TEXT NOT NULL,
    moved_at DOUBLE PRECISION NOT NULL
);
"""

#: Row-level security that makes the owner column binding: each member's role
#: (named after their JupyterHub or login name) sees and writes only its rows.
#: Applied by the team's admin (see docs/store-postgres.md), not by the store.
ROW_SECURITY_SQL = "\n".join(
    f"ALTER TABLE {SCHEMA}.{t} ENABLE ROW LEVEL SECURITY;\n"
    f"DROP POLICY IF EXISTS own_rows ON {SCHEMA}.{t};\n"
    f"CREATE POLICY own_rows ON {SCHEMA}.{t} USING (owner = current_user) "
    "WITH CHECK (owner = current_user);"
    for t in ("runs", "checkpoints", "blobs", "notebook_moves")
)


def grants_sql(team: str) -> str:
    """SQL giving the group role ``team`` (created if missing) what its members need.

    Members are login roles ``IN ROLE team``; none of them needs to create
    tables once the admin has opened the store once (see docs/store-postgres.md).
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", team):
        raise ValueError(f"{team!r} is not a plain role name (lower case, digits, _).")
    return (
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{team}') THEN "
        f"CREATE ROLE {team} NOLOGIN; END IF; END $$;\n"
        f"GRANT USAGE ON SCHEMA {SCHEMA} TO {team};\n"
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {SCHEMA} TO {team};"
    )


_RUN_SELECT = ", ".join(RUN_COLUMNS)
_CP_SELECT = ", ".join(CHECKPOINT_COLUMNS)
_MAX_STEP = 2**31 - 1
_T = TypeVar("_T")


def current_owner() -> str:
    """Whose rows these are: the JupyterHub user, else the login name."""
    return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()


def lock_key(*parts: str) -> int:
    """A signed 64-bit advisory-lock key for ``parts`` (a run, or an owner's agent)."""
    digest = hashlib.sha256("\0".join(("jupyter-agent", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def display_url(url: str) -> str:
    """``url`` without its password, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _text(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL; DuckDB's could, so it is replaced, not refused."""
    return value.replace("\0", "\ufffd") if isinstance(value, str) else value


# -- connections ------------------------------------------------------------------------

_local = threading.local()
_ready: set[str] = set()
_ready_lock = threading.Lock()
_DDL_KEY = lock_key("schema")


def _app_name(purpose: str) -> str:
    # Shown in pg_stat_activity: how another host names the holder of an agent.
    return f"jupyter-agent {purpose} pid {os.getpid()} on {socket.gethostname()}"[:63]


def _problem(url: str, exc: psycopg.Error, doing: str) -> StoreError:
    """One short message for a database error, with the fix for its cause."""
    where = display_url(url)
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return StoreError(
            f"The agent store {where} refused to {doing}: {text}. Ask the team's database admin "
            "for the rights described in docs/store-postgres.md."
        )
    if isinstance(exc, psycopg.errors.DiskFull):
        return StoreError(
            f"The agent store {where} could not {doing}: the database server's disk is full. "
            "The agent stopped at its last saved checkpoint; run the cell again once there is room."
        )
    if isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
        return StoreBusy(f"The agent store {where} stayed busy ({text}); try again.")
    return StoreError(
        f"The agent store {where} could not {doing}: {text}. Check that the database server "
        "runs and that JUPYTER_AGENT_STORE (or %config AgentMagics.store) names it; passwords "
        "belong in ~/.pgpass or PGPASSWORD. The agent stopped at its last saved checkpoint."
    )


def _connect(
    url: str, purpose: str, busy_timeout: float, *, create: bool = False
) -> psycopg.Connection:
    """A new autocommit connection; its schema checked, and created when ``create``."""
    try:
        con = psycopg.connect(
            url,
            autocommit=True,
            application_name=_app_name(purpose),
            connect_timeout=max(1, int(busy_timeout)),
        )
    except psycopg.Error as exc:
        raise _problem(url, exc, "be reached") from exc
    try:
        _ensure_schema(url, con, create=create)
    except BaseException:
        con.close()
        raise
    return con


def _stored_version(con: psycopg.Connection) -> int | None:
    if not con.execute("SELECT to_regclass(%s)", [f"{SCHEMA}.meta"]).fetchone()[0]:
        return None
    row = con.execute(f"SELECT value FROM {SCHEMA}.meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else parse_version(row[0], SCHEMA_VERSION)


def _ensure_schema(url: str, con: psycopg.Connection, *, create: bool) -> bool:
    """Check the schema once per database and process; whether the tables exist.

    A newer schema is refused untouched; an older one is upgraded in place; a
    missing one is created only when ``create`` (reading never creates the store,
    and a member's role need not be able to create tables).
    """
    if url in _ready:
        return True
    with _ready_lock:
        if url in _ready:
            return True
        try:
            version = _stored_version(con)
            if version is not None and version > SCHEMA_VERSION:
                raise StoreError(
                    f"The agent store {display_url(url)} was written by a newer jupyter-agent "
                    f"(schema {version}, this one reads {SCHEMA_VERSION}). Upgrade "
                    "jupyter-agent; the store was not modified."
                )
            if version is None:
                if not create:
                    return False
                with con.transaction():
                    con.execute("SELECT pg_advisory_xact_lock(%s)", [_DDL_KEY])
                    con.execute(_DDL)
                    con.execute(
                        f"INSERT INTO {SCHEMA}.meta VALUES ('schema_version', %s) "
                        "ON CONFLICT DO NOTHING",
                        [str(SCHEMA_VERSION)],
                    )
            elif version < SCHEMA_VERSION:
                _migrate(con)
        except psycopg.Error as exc:
            raise _problem(url, exc, "create or upgrade its tables") from exc
        _ready.add(url)
        return True


def _migrate(con: psycopg.Connection) -> None:
    """Upgrade a schema 1 store: tag its checkpoints' payloads ``dill``.

    Nothing is unpickled here (the rows belong to many owners): each owner's old
    payloads are converted to JSON as that owner reads them
    (:func:`~jupyter_agent.store.rows.json_payload`). Needs the table owner's rights.
    """
    with con.transaction():
        con.execute("SELECT pg_advisory_xact_lock(%s)", [_DDL_KEY])
        version = _stored_version(con)
        if version is None or version >= SCHEMA_VERSION:
            return  # another process did it meanwhile
        con.execute(
            f"ALTER TABLE {SCHEMA}.checkpoints ADD COLUMN IF NOT EXISTS payload_format TEXT"
        )
        con.execute(
            f"UPDATE {SCHEMA}.checkpoints SET payload_format = 'dill' WHERE payload_format IS NULL"
        )
        con.execute(
            f"ALTER TABLE {SCHEMA}.checkpoints ALTER COLUMN payload_format SET DEFAULT 'json'"
        )
        con.execute(
            f"UPDATE {SCHEMA}.meta SET value = %s WHERE key = 'schema_version'",
            [str(SCHEMA_VERSION)],
        )


class _Locks:
    """The process's session advisory locks on one database, held by one connection.

    PostgreSQL releases them when that connection ends, so a process that dies on
    any host frees its agents and runs; ``pg_locks`` shows them to every host.
    Threads of this process are told apart here, as the server cannot.
    """

    def __init__(self, url: str, busy_timeout: float) -> None:
        self.url = url
        self.busy_timeout = busy_timeout
        self.mutex = threading.Lock()
        self.con: psycopg.Connection | None = None
        self.held: dict[int, list[int]] = {}  # key -> [thread id, depth]

    def _connection(self) -> psycopg.Connection:
        if self.con is None or self.con.closed or self.con.broken:
            self.held.clear()  # a lost connection took its locks with it
            self.con = _connect(self.url, "locks", self.busy_timeout)
        return self.con

    def acquire(self, key: int, *, reentrant: bool) -> str | None:
        """Take ``key``; None when taken, else "here" or the holder's description."""
        me = threading.get_ident()
        with self.mutex:
            held = self.held.get(key)
            if held is not None:
                if reentrant and held[0] == me:
                    held[1] += 1
                    return None
                return "here"
            try:
                con = self._connection()
                ok = con.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0]
                if not ok:
                    return self._holder(con, key)
            except psycopg.Error as exc:
                raise _problem(self.url, exc, "take a lock") from exc
            self.held[key] = [me, 1]
            return None

    def release(self, key: int) -> None:
        with self.mutex:
            held = self.held.get(key)
            if held is None:
                return
            held[1] -= 1
            if held[1] > 0:
                return
            del self.held[key]
            if self.con is not None and not self.con.closed:
                with contextlib.suppress(psycopg.Error):
                    self.con.execute("SELECT pg_advisory_unlock(%s)", [key])

    def close_if_idle(self) -> None:
        """End the connection if it holds no lock (it reopens when one is taken)."""
        with self.mutex:
            if not self.held and self.con is not None:
                with contextlib.suppress(psycopg.Error):
                    self.con.close()
                self.con = None

    @staticmethod
    def _holder(con: psycopg.Connection, key: int) -> str:
        row = con.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
            [key],
        ).fetchone()
        name = (row[0] if row else "") or ""
        return name.removeprefix("jupyter-agent locks ") or "another process"


#: Reader connections a thread keeps open, to the databases it read most recently.
READERS_KEPT = 4
_lock_sessions: dict[str, _Locks] = {}
_lock_sessions_lock = threading.Lock()


def _locks(url: str, busy_timeout: float) -> _Locks:
    """The lock session of ``url``; those of other databases holding nothing are closed.

    So a process that goes from store to store (a kernel re-pointed, a server
    reading many) keeps no idle connection behind, which would otherwise pile up
    until the server refuses clients.
    """
    with _lock_sessions_lock:
        for other, session in _lock_sessions.items():
            if other != url:
                session.close_if_idle()
        if url not in _lock_sessions:
            _lock_sessions[url] = _Locks(url, busy_timeout)
        return _lock_sessions[url]


# -- the store --------------------------------------------------------------------------


class PostgresStore:
    """Checkpoints of every agent of a team, in one PostgreSQL database.

    Implements :class:`jupyter_agent.store.api.Store`; every query is scoped to
    :attr:`owner`.
    """

    def __init__(self, url: str, *, busy_timeout: float = 30.0, owner: str | None = None) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise StoreError(f"{url!r} is not a postgresql:// URL.")
        self.url = url
        self.busy_timeout = busy_timeout
        self.owner = owner or current_owner()
        self.location = display_url(url)
        #: How many connections this store opened for reads (what :meth:`session` shares).
        self.opens = 0
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"PostgresStore({self.location!r}, owner={self.owner!r})"

    # -- connections -------------------------------------------------------------------

    def _reader(self) -> psycopg.Connection:
        """This thread's connection: the session's, else one kept per thread and database."""
        pinned = getattr(self._local, "con", None)
        if pinned is not None and not (pinned.closed or pinned.broken):
            return pinned
        cache: dict = _local.__dict__.setdefault("cons", {})
        con = cache.pop(self.url, None)
        if con is None or con.closed or con.broken:
            con = _connect(self.url, "reader", self.busy_timeout)
            self.opens += 1
        cache[self.url] = con  # the most recently used last
        while len(cache) > READERS_KEPT:  # a thread reading many databases keeps a few
            with contextlib.suppress(psycopg.Error):
                cache.pop(next(iter(cache))).close()
        return con

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Serve this thread's reads from one connection until it exits. Re-entrant.

        Nothing is held in the database meanwhile (each statement commits), so
        other processes never wait on a session.
        """
        if getattr(self._local, "con", None) is not None:
            yield
            return
        self._local.con = self._reader()
        try:
            yield
        finally:
            self._local.con = None

    @contextlib.contextmanager
    def _db(self, doing: str, *, create: bool = False) -> Iterator[psycopg.Connection]:
        con = self._reader()
        try:
            if create:
                _ensure_schema(self.url, con, create=True)
            yield con
        except psycopg.errors.ProgrammingError:
            raise  # a bad query is the caller's bug (or a store not created yet, see _all)
        except psycopg.Error as exc:
            if con.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    con.rollback()
            raise _problem(self.url, exc, doing) from exc

    def _all(self, sql: str, args: list) -> list[tuple]:
        """Rows of a read; none from a store not created yet."""
        try:
            with self._db("be read") as con:
                return con.execute(sql, args).fetchall()
        except psycopg.errors.UndefinedTable:
            if self.exists():
                raise
            return []

    def _one(self, sql: str, args: list) -> tuple | None:
        rows = self._all(sql, args)
        return rows[0] if rows else None

    def exists(self) -> bool:
        """Whether the database holds the agent tables (reading never creates them)."""
        with self._db("be read") as con:
            return bool(con.execute("SELECT to_regclass(%s)", [f"{SCHEMA}.runs"]).fetchone()[0])

    def flush(self) -> None:
        """Nothing to fold (a checkpoint is in the database once written); creates the tables."""
        with self._db("create its tables", create=True):
            pass

    # -- writing -----------------------------------------------------------------------

    def writer(self, run_id: str, secrets: list[str] | None = None) -> PostgresRunWriter:
        """A writer for one execution of ``run_id``; the run is live while it is open."""
        return PostgresRunWriter(
            self, run_id, secrets_in_environment() if secrets is None else secrets
        )

    @contextlib.contextmanager
    def agent_lock(self, notebook: str, agent: str) -> Iterator[None]:
        """Be the only writer of this owner's agent ``agent`` of ``notebook``, on any host."""
        key = lock_key("agent", self.owner, notebook, agent)
        locks = _locks(self.url, self.busy_timeout)
        holder = locks.acquire(key, reentrant=True)
        if holder == "here":
            raise AgentBusy.here(agent)
        if holder is not None:
            busy = AgentBusy(
                f"Agent {agent!r} is running elsewhere ({holder}). Wait for it, or stop it "
                "there, before running it here."
            )
            busy.where = f"elsewhere ({holder})"
            raise busy
        try:
            yield
        finally:
            locks.release(key)

    # -- reading rows --------------------------------------------------------------------

    def check_trusted(self) -> None:
        """Nothing to check for the whole store: each payload and blob read checks its owner."""

    def live_runs(self) -> set[str]:
        """Runs of this owner whose writer holds its lock, on any host."""
        rows = self._all(
            f"SELECT run_id FROM {SCHEMA}.runs WHERE owner = %s AND lock_key IN ("
            "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted AND objsubid = 1)",
            [self.owner],
        )
        return {r[0] for r in rows}

    def _runs(self, where: str, args: list) -> list[RunRow]:
        """This owner's runs matching ``where`` (SQL on the runs table), oldest first."""
        rows = self._all(
            f"SELECT {_RUN_SELECT} FROM {SCHEMA}.runs WHERE owner = %s AND {where} "
            "ORDER BY created_at, run_id",
            [self.owner, *args],
        )
        return [run_from_row(r) for r in rows]

    def runs(self, notebook: str | None = None, agent: str | None = None) -> list[RunRow]:
        where, args = ["TRUE"], []
        for column, value in (("notebook", notebook), ("agent", agent)):
            if value is not None:
                where.append(f"{column} = %s")
                args.append(value)
        return self._runs(" AND ".join(where), args)

    def run(self, run_id: str) -> RunRow | None:
        found = self._runs("run_id = %s", [run_id])
        return found[0] if found else None

    def checkpoints(self, run_id: str, kind: str | None = None) -> list[CheckpointRow]:
        rows = self._all(
            f"SELECT {_CP_SELECT} FROM {SCHEMA}.checkpoints WHERE run_id = %s AND owner = %s "
            "AND (%s::text IS NULL OR kind = %s) ORDER BY step",
            [run_id, self.owner, kind, kind],
        )
        return [checkpoint_from_row(r) for r in rows]

    def latest_checkpoints(self, run_ids: list[str]) -> dict[str, CheckpointRow]:
        """The last checkpoint of each run, in one query."""
        if not run_ids:
            return {}
        rows = self._all(
            f"SELECT DISTINCT ON (run_id) {_CP_SELECT} FROM {SCHEMA}.checkpoints "
            "WHERE run_id = ANY(%s) AND owner = %s ORDER BY run_id, step DESC",
            [list(run_ids), self.owner],
        )
        return {r[0]: checkpoint_from_row(r) for r in rows}

    def model_steps(self, run_ids: list[str]) -> dict[str, list[int]]:
        if not run_ids:
            return {}
        rows = self._all(
            f"SELECT run_id, array_agg(step ORDER BY step) FROM {SCHEMA}.checkpoints "
            "WHERE kind = 'model' AND run_id = ANY(%s) AND owner = %s GROUP BY run_id",
            [list(run_ids), self.owner],
        )
        return {r: list(steps) for r, steps in rows}

    def payloads(
        self, chain: list[tuple[str, int | None]], since: int = 0
    ) -> list[tuple[CheckpointRow, bytes]]:
        """Checkpoints with payloads along a chain of (run_id, up-to-step) segments, one query.

        Refused when a checkpoint was written by another owner (a payload of the
        previous release is unpickled to convert it) or when the history has a hole.
        """
        if not chain:
            return []
        rows = self._all(
            f"SELECT s.i, c.owner, {', '.join('c.' + c for c in CHECKPOINT_COLUMNS)}, "
            "c.payload_format, CASE WHEN c.owner = %s THEN c.payload END "
            "FROM unnest(%s::text[], %s::int[]) WITH ORDINALITY AS s(run_id, upto, i) "
            f"JOIN {SCHEMA}.checkpoints c ON c.run_id = s.run_id AND c.step <= s.upto "
            "AND c.step >= %s ORDER BY s.i, c.step",
            [
                self.owner,
                [r for r, _ in chain],
                [_MAX_STEP if u is None else u for _, u in chain],
                since,
            ],
        )
        foreign = next((r for r in rows if r[1] != self.owner), None)
        if foreign is not None:
            raise StoreError(
                f"Checkpoint {foreign[3]} of run {foreign[2]} was written by {foreign[1]!r}, not "
                f"{self.owner!r}; it is not loaded, because loading a checkpoint can run code. "
                "Run the cell with --restart to start a run of your own."
            )
        segments: list[list[tuple]] = [[] for _ in chain]
        for r in rows:
            segments[r[0] - 1].append(r[2:])
        out: list[tuple[CheckpointRow, bytes]] = []
        for i, ((run_id, _), seg) in enumerate(zip(chain, segments, strict=True)):
            steps = [r[1] for r in seg]
            missing = store_rows.first_missing(
                steps, since if i == 0 else (steps[0] if steps else 0)
            )
            if missing is not None:
                raise StoreError(
                    f"Checkpoint {missing} of run {run_id} is missing from the store, so this run "
                    "cannot be resumed or restored faithfully. Run the cell with --restart to "
                    "start over; the other runs are unaffected."
                )
            out.extend(
                (checkpoint_from_row(r[:-2]), json_payload(r[-2], r[-1], self.check_trusted))
                for r in seg
            )
        return out

    def blobs(self, hashes: list[str]) -> dict[str, bytes]:
        """Saved values by hash: only this owner's, since unpickling one runs code."""
        if not hashes:
            return {}
        rows = self._all(
            f"SELECT hash, owner, CASE WHEN owner = %s THEN data END FROM {SCHEMA}.blobs "
            "WHERE hash = ANY(%s)",
            [self.owner, list(hashes)],
        )
        own = {h: bytes(d or b"") for h, who, d in rows if who == self.owner}
        foreign = sorted({(h, who) for h, who, _ in rows if h not in own})
        if foreign:
            digest, who = foreign[0]
            raise StoreError(
                f"A saved value ({digest[:12]}) was written by {who!r}, not {self.owner!r}; it is "
                "not loaded, because loading a saved value can run code. Run the cell with "
                "--restart to recompute it in a run of your own."
            )
        return own

    # -- summaries -----------------------------------------------------------------------

    def _sampled(self, read: Callable[[], _T]) -> tuple[_T, set[str]]:
        """``read`` on one connection, with the runs live before or after it."""
        with self.session():
            live = self.live_runs()
            result = read()
            return result, live | self.live_runs()

    def _stats(self, runs: list[RunRow], known: list[RunRow] | None = None) -> dict[str, RunStats]:
        """Aggregates of ``runs``; ``known`` are rows already read (ancestors are read as needed)."""
        if not runs:
            return {}
        family = {r.run_id: r for r in [*(known or []), *runs]}
        missing = {r.parent_run for r in family.values() if r.parent_run} - set(family)
        if missing:  # a fork's ancestors, all generations in one query
            cols = ", ".join("r." + c for c in RUN_COLUMNS)
            rows = self._all(
                f"WITH RECURSIVE up AS (SELECT {_RUN_SELECT} FROM {SCHEMA}.runs "
                "WHERE run_id = ANY(%s) AND owner = %s UNION "
                f"SELECT {cols} FROM {SCHEMA}.runs r JOIN up ON r.run_id = up.parent_run "
                f"WHERE r.owner = %s) SELECT {_RUN_SELECT} FROM up",
                [sorted(missing), self.owner, self.owner],
            )
            family.update((r.run_id, r) for r in map(run_from_row, rows))
        chains = {r.run_id: history_chain(r, family) for r in runs}
        model_steps = self.model_steps(sorted({s for c in chains.values() for s, _ in c}))
        usage = "(CASE WHEN jsonb_typeof(i #> '{{usage,{0}}}') = 'number' THEN (i #>> '{{usage,{0}}}')::numeric END)"
        rows = self._all(
            f"SELECT run_id, count(*), sum(tokens), sum({usage.format('prompt_tokens')}), "
            f"sum({usage.format('completion_tokens')}), sum(size), max(created_at), max(step), "
            "(array_agg(status ORDER BY step DESC))[1], (array_agg(info ORDER BY step DESC))[1], "
            "((array_agg(i -> 'plan' ORDER BY step DESC) FILTER (WHERE i ? 'plan'))[1])::text "
            f"FROM (SELECT *, info::jsonb AS i FROM {SCHEMA}.checkpoints "
            "WHERE run_id = ANY(%s) AND owner = %s) c GROUP BY run_id",
            [list(chains), self.owner],
        )
        return {r[0]: store_rows.stats_from_row(r, chains[r[0]], model_steps) for r in rows}

    def _timelines(self, runs: list[RunRow], limit: int) -> dict[str, list[CheckpointRow]]:
        """Each run's last ``limit`` checkpoints, oldest first."""
        if not runs:
            return {}
        rows = self._all(
            f"SELECT {_CP_SELECT} FROM (SELECT {_CP_SELECT}, row_number() OVER "
            f"(PARTITION BY run_id ORDER BY step DESC) AS n FROM {SCHEMA}.checkpoints "
            "WHERE run_id = ANY(%s) AND owner = %s) t WHERE n <= %s ORDER BY run_id, step",
            [[r.run_id for r in runs], self.owner, limit],
        )
        out: dict[str, list[CheckpointRow]] = {}
        for r in rows:
            out.setdefault(r[0], []).append(checkpoint_from_row(r))
        return out

    def run_stats(self, run_ids: list[str]) -> dict[str, RunStats]:
        if not run_ids:
            return {}
        with self.session():
            return self._stats(self._runs("run_id = ANY(%s)", [list(run_ids)]))

    def agent_summaries(
        self, notebook: str, *, timeline: int = TIMELINE_LIMIT
    ) -> list[AgentSummary]:
        def read() -> tuple:
            runs = self._runs("notebook = %s", [notebook])
            latest = list(store_rows.latest_runs(runs).values())
            return runs, self._timelines(latest, timeline), self._stats(latest, runs)

        (runs, timelines, stats), live = self._sampled(read)
        return store_rows.agent_summaries(runs, timelines, stats, live)

    def agent_detail(
        self, notebook: str, agent: str, *, timeline: int = TIMELINE_LIMIT
    ) -> AgentDetail | None:
        def read() -> tuple:
            runs = self._runs("notebook = %s AND agent = %s", [notebook, agent])
            return runs, self._timelines(runs[-1:], timeline), self._stats(runs)

        (runs, timelines, stats), live = self._sampled(read)
        return store_rows.agent_detail(agent, runs, timelines, stats, live)

    def run_detail(self, run_id: str) -> RunDetail | None:
        def read() -> tuple:
            runs = self._runs("run_id = %s", [run_id])
            return runs, self.checkpoints(run_id) if runs else [], self._stats(runs)

        (runs, checkpoints, stats), live = self._sampled(read)
        if not runs:
            return None
        return RunDetail(store_rows.summary(runs[0], stats, live), checkpoints)

    def forks(self, run_ids: list[str]) -> list[RunRow]:
        if not run_ids:
            return []
        ids = list(run_ids)
        return self._runs("parent_run = ANY(%s) AND NOT run_id = ANY(%s)", [ids, ids])

    def info(self) -> StoreInfo:
        """Schema version and this owner's row counts."""
        if not self.exists():
            return StoreInfo(self.location, False, None, SCHEMA_VERSION, 0, 0)
        row = self._one(
            f"SELECT (SELECT value FROM {SCHEMA}.meta WHERE key = 'schema_version'), "
            f"(SELECT count(*) FROM {SCHEMA}.runs WHERE owner = %s), "
            f"(SELECT count(*) FROM {SCHEMA}.checkpoints WHERE owner = %s)",
            [self.owner, self.owner],
        )
        assert row is not None
        version = parse_version(row[0], SCHEMA_VERSION) if row[0] is not None else None
        return StoreInfo(self.location, True, version, SCHEMA_VERSION, row[1], row[2])

    def sizes(self) -> dict[str, int]:
        """Bytes the agent tables take in the database (with indexes and TOAST)."""
        row = self._one(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r'",
            [SCHEMA],
        )
        return {"postgres": int(row[0]) if row else 0, "duckdb": 0, "journals": 0}

    # -- deleting ----------------------------------------------------------------------

    def delete_runs(self, run_ids: list[str]) -> int:
        """Delete this owner's runs, their checkpoints, and blobs nothing refers to any more."""
        if not run_ids or not self.exists():
            return 0
        busy = self.live_runs() & set(run_ids)
        if busy:
            raise Conflict(f"Run {sorted(busy)[0]} is running; stop it before deleting it.")
        ids = list(run_ids)
        with self._db("delete runs") as con, con.transaction():
            con.execute(
                f"DELETE FROM {SCHEMA}.checkpoints WHERE run_id = ANY(%s) AND owner = %s",
                [ids, self.owner],
            )
            con.execute(
                f"DELETE FROM {SCHEMA}.runs WHERE run_id = ANY(%s) AND owner = %s",
                [ids, self.owner],
            )
            con.execute(
                f"DELETE FROM {SCHEMA}.blobs WHERE owner = %s AND hash NOT IN ("
                "SELECT jsonb_array_elements_text(info::jsonb -> 'blobs') "
                f"FROM {SCHEMA}.checkpoints WHERE owner = %s AND info LIKE '%%\"blobs\"%%' "
                "AND jsonb_typeof(info::jsonb -> 'blobs') = 'array')",
                [self.owner, self.owner],
            )
        return len(run_ids)

    def delete_agent(self, notebook: str, agent: str, *, keep_latest: bool = False) -> list[str]:
        return delete_agent_runs(self, notebook, agent, keep_latest=keep_latest)

    # -- notebook moves ----------------------------------------------------------------

    def move_notebook(self, old: str, new: str, moved_at: float | None = None) -> int:
        """Record that this owner's notebook or folder at ``old`` now lives at ``new``.

        Its runs created before the move follow it (a writer stores its run when
        it starts, so none arrives later, unlike a journal folded into DuckDB).
        """
        when = time.time() if moved_at is None else moved_at
        prefix, target = old.rstrip("/") + "/", new.rstrip("/")
        with self._db("record a notebook move", create=True) as con, con.transaction():
            con.execute(
                f"INSERT INTO {SCHEMA}.notebook_moves VALUES (%s, %s, %s, %s)",
                [self.owner, old, new, when],
            )
            cur = con.execute(
                f"UPDATE {SCHEMA}.runs SET notebook = CASE WHEN notebook = %s THEN %s "
                "ELSE %s || substr(notebook, %s) END "
                "WHERE owner = %s AND created_at < %s AND (notebook = %s OR left(notebook, %s) = %s)",
                [old, new, target, len(prefix), self.owner, when, old, len(prefix), prefix],
            )
            return cur.rowcount

    def resolve_notebook(self, path: str, since: float | None = None) -> str:
        """Where the notebook known as ``path`` since ``since`` lives now."""
        cutoff = process_started_at() if since is None else since
        moves = self._all(
            f"SELECT old, new FROM {SCHEMA}.notebook_moves WHERE owner = %s AND moved_at > %s "
            "ORDER BY moved_at",
            [self.owner, cutoff],
        )
        for old, new in moves:
            path = moved_path(path, old, new)
        return path

    # -- what was learnt about models --------------------------------------------------

    def learnt_window(self, model: str) -> int | None:
        """The context window ``model``'s endpoint last reported, if it ever refused one."""
        row = self._one(
            f"SELECT value FROM {SCHEMA}.meta WHERE key = %s", [f"context_window:{model}"]
        )
        return int(row[0]) if row and str(row[0]).isdigit() else None

    def remember_window(self, model: str, tokens: int) -> None:
        """Remember ``model``'s context window for later runs (see :mod:`context`)."""
        with self._db("remember a context window", create=True) as con:
            con.execute(
                f"INSERT INTO {SCHEMA}.meta VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [f"context_window:{model}", str(tokens)],
            )


class PostgresRunWriter(RunWriter):
    """Writes one run execution's records straight to PostgreSQL, secrets redacted.

    Redaction is :class:`~jupyter_agent.store.duckdb.store.RunWriter`'s. Blobs wait for the
    checkpoint that refers to them and go in its transaction, so a checkpoint is
    never stored without its values. The run counts as live while this is open.
    """

    def __init__(self, store: PostgresStore, run_id: str, secrets: list[str]) -> None:
        super().__init__(store, None, secrets)  # type: ignore[arg-type]  # no journal
        self.store: PostgresStore = store
        self.run_id = run_id
        self._key = lock_key("run", run_id)
        self._locks = _locks(store.url, store.busy_timeout)
        holder = self._locks.acquire(self._key, reentrant=False)
        if holder is not None:
            where = "in this process" if holder == "here" else f"elsewhere ({holder})"
            raise AgentBusy(f"Run {run_id} is already being written {where}.")
        try:
            self._con: psycopg.Connection | None = _connect(
                store.url, "writer", store.busy_timeout, create=True
            )
            if "synchronous_commit" not in store.url:
                # A commit need not wait for the server's disk: a dead kernel loses
                # nothing, and a crashed server only the last moments' checkpoints
                # (the run resumes before them). The URL can ask for it per commit.
                self._con.execute("SET synchronous_commit = off")
        except psycopg.Error as exc:
            self._locks.release(self._key)
            raise _problem(store.url, exc, "start writing checkpoints") from exc
        except BaseException:
            self._locks.release(self._key)
            raise
        self._blobs: list[list] = []

    def prepare_blob(self, digest: str, data: bytes) -> None:
        """Nothing to do ahead: the value goes into the database with its record."""

    def put_blob(self, digest: str, data: bytes) -> None:
        """Hold a value for its checkpoint's transaction; the database keeps large ones too.

        (The DuckDB writer puts large values in files beside its store; a shared
        server has no such directory, and every host must read them.)
        """
        self._append(Record("blobs", {"hash": digest, "size": len(data)}, data))

    def _append(self, record: Record, *, durable: bool = True) -> None:
        # Each record commits; the commit waits for the disk as the URL asks, ``durable`` or not.
        if store_rows.malformed(record) or record.table not in ("runs", "blobs", "checkpoints"):
            raise StoreError(
                f"Cannot write a {record.table} record with a missing or mistyped column "
                f"({sorted(record.row) if isinstance(record.row, dict) else record.row!r}); "
                "nothing was stored."
            )
        if self._con is None:
            raise StoreError(f"The writer of run {self.run_id} is closed.")
        row = {k: _text(v) for k, v in record.row.items()}
        # Fault injection, as the journal does (``$JUPYTER_AGENT_CRASH``): ``torn``
        # dies inside the checkpoint's transaction, before its commit.
        due = journal.crash_due(record.label)
        if due == "before" or (due == "torn" and record.table != "checkpoints"):
            journal.crash()
        if record.table == "blobs":
            self._blobs.append([row["hash"], self.store.owner, row["size"], record.payload])
            if due == "after":
                journal.crash()
            return
        try:
            if record.table == "runs":
                values = [row.get(c) for c in RUN_COLUMNS]
                self._con.execute(
                    f"INSERT INTO {SCHEMA}.runs ({_RUN_SELECT}, owner, lock_key) VALUES "
                    f"({', '.join(['%s'] * (len(RUN_COLUMNS) + 2))}) ON CONFLICT DO NOTHING",
                    [*values, self.store.owner, lock_key("run", row["run_id"])],
                )
            else:
                values = [row.get(c) for c in CHECKPOINT_COLUMNS]
                fmt = row.get("payload_format") or "json"
                with self._con.transaction():
                    self._put_blobs()
                    self._con.execute(
                        f"INSERT INTO {SCHEMA}.checkpoints "
                        f"({_CP_SELECT}, owner, payload_format, payload) "
                        f"VALUES ({', '.join(['%s'] * (len(CHECKPOINT_COLUMNS) + 3))}) "
                        "ON CONFLICT DO NOTHING",
                        [*values, self.store.owner, fmt, record.payload],
                    )
                    if due == "torn":
                        journal.crash()
                self._blobs.clear()
        except psycopg.Error as exc:
            raise _problem(self.store.url, exc, "store a checkpoint") from exc
        self.bytes_written += len(record.payload) + sum(len(str(v)) for v in row.values())
        if due == "after":
            journal.crash()

    def _put_blobs(self) -> None:
        assert self._con is not None
        if self._blobs:
            with self._con.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {SCHEMA}.blobs (hash, owner, size, data) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    self._blobs,
                )
            self.bytes_written += sum(b[2] for b in self._blobs)

    def close(self, *, merge: bool = True) -> None:
        """Store blobs no checkpoint took yet, and end the run's liveness."""
        con, self._con = self._con, None
        if con is None:
            return
        try:
            if self._blobs and not con.broken:
                self._con = con
                try:
                    with con.transaction():
                        self._put_blobs()
                except psycopg.Error as exc:
                    raise _problem(self.store.url, exc, "store a saved value") from exc
                finally:
                    self._con = None
                    self._blobs.clear()
        finally:
            con.close()
            self._locks.release(self._key)
