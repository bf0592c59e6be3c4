"""The checkpoint store on PostgreSQL, for teams and for agents on several hosts.

Selected by a ``postgresql://`` URL in ``JUPYTER_AGENT_STORE`` (or
``%config AgentMagics.store``), see :func:`jupyter_agent.store_api.open_store`.
It answers the same verbs as :class:`jupyter_agent.store.Store`, with three
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
from collections.abc import Iterator
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from .journal import Record
from .redaction import secrets_in_environment
from .store import (
    CHECKPOINT_COLUMNS,
    RUN_COLUMNS,
    SCHEMA_VERSION,
    AgentBusy,
    CheckpointRow,
    RunRow,
    RunWriter,
    StoreBusy,
    StoreError,
    _checkpoint_row,
    _malformed,
    _run_row,
    _version,
    apply_moves,
    moved_path,
    process_started_at,
)

SCHEMA = "jupyter_agent"

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


#: Owner-scoped views that let SQL written for the DuckDB store (the server's
#: metadata queries) run unchanged: temporary relations shadow the tables.
_VIEWS = f"""
SET search_path TO {SCHEMA};
CREATE TEMP VIEW runs AS SELECT {", ".join(RUN_COLUMNS)} FROM {SCHEMA}.runs
    WHERE owner = current_setting('jupyter_agent.owner');
CREATE TEMP VIEW checkpoints AS SELECT {", ".join(CHECKPOINT_COLUMNS)}, payload
    FROM {SCHEMA}.checkpoints WHERE owner = current_setting('jupyter_agent.owner');
CREATE TEMP VIEW notebook_moves AS SELECT old, new, moved_at FROM {SCHEMA}.notebook_moves
    WHERE owner = current_setting('jupyter_agent.owner');
"""

_RUN_SELECT = ", ".join(RUN_COLUMNS)
_CP_SELECT = ", ".join(CHECKPOINT_COLUMNS)
_MAX_STEP = 2**31 - 1


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


def _connect(url: str, purpose: str, busy_timeout: float) -> psycopg.Connection:
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
        _ensure_schema(url, con)
    except BaseException:
        con.close()
        raise
    return con


def _ensure_schema(url: str, con: psycopg.Connection) -> None:
    """Create the tables once per database and process; refuse a newer schema untouched."""
    if url in _ready:
        return
    with _ready_lock:
        if url in _ready:
            return
        try:
            row = None
            if con.execute("SELECT to_regclass(%s)", [f"{SCHEMA}.meta"]).fetchone()[0]:
                row = con.execute(
                    f"SELECT value FROM {SCHEMA}.meta WHERE key = 'schema_version'"
                ).fetchone()
            if row is not None and _version(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"The agent store {display_url(url)} was written by a newer jupyter-agent "
                    f"(schema {row[0]}, this one reads {SCHEMA_VERSION}). Upgrade jupyter-agent; "
                    "the store was not modified."
                )
            if row is None:  # only then: a member's role need not be able to create tables
                with con.transaction():
                    con.execute("SELECT pg_advisory_xact_lock(%s)", [_DDL_KEY])
                    con.execute(_DDL)
                    con.execute(
                        f"INSERT INTO {SCHEMA}.meta VALUES ('schema_version', %s) "
                        "ON CONFLICT DO NOTHING",
                        [str(SCHEMA_VERSION)],
                    )
        except psycopg.Error as exc:
            raise _problem(url, exc, "create its tables") from exc
        _ready.add(url)


class _DuckCompat:
    """A DuckDB-style connection over PostgreSQL for SQL written against the DuckDB store.

    Callers that predate the store protocol (the server's metadata queries, the
    timeline's step counts, :func:`~jupyter_agent.store.apply_moves`) run their
    SQL through :meth:`PostgresStore.connect`; the few DuckDB idioms they use are
    rewritten, and owner-scoped temporary views stand in for the tables.
    """

    def __init__(self, con: psycopg.Connection) -> None:
        self.con = con

    def execute(self, sql: str, params: list | tuple | None = None) -> psycopg.Cursor:
        return self.con.execute(_translate(sql), params or None)


_QUALIFY = re.compile(
    r"^SELECT (?P<cols>.+?) FROM (?P<body>.+?) QUALIFY (?P<window>.+\)) "
    r"(?P<op><=|>=|=|<|>) (?P<rhs>\S+)(?P<tail>.*)$",
    re.S,
)


@lru_cache(maxsize=256)
def _translate(sql: str) -> str:
    """DuckDB SQL of the kinds the DuckDB store's callers send, as PostgreSQL SQL."""
    out = sql.replace("%", "%%").replace("(SELECT UNNEST(?))", "(SELECT UNNEST(?::text[]))")
    out = re.sub(r"\blist\(", "array_agg(", out)
    out = re.sub(r"\barg_max\((\w+), (\w+)\)", r"(array_agg(\1 ORDER BY \2 DESC))[1]", out)
    out = re.sub(r"\bINSERT OR IGNORE INTO\b", "INSERT INTO", out)
    match = _QUALIFY.match(out)
    if match:
        g = match.groupdict()
        out = (
            f"SELECT {g['cols']} FROM (SELECT {g['cols']}, {g['window']} AS _qualify "
            f"FROM {g['body']}) _q WHERE _qualify {g['op']} {g['rhs']}{g['tail']}"
        )
    return out.replace("?", "%s")


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


_lock_sessions: dict[str, _Locks] = {}
_lock_sessions_lock = threading.Lock()


def _locks(url: str, busy_timeout: float) -> _Locks:
    with _lock_sessions_lock:
        if url not in _lock_sessions:
            _lock_sessions[url] = _Locks(url, busy_timeout)
        return _lock_sessions[url]


class _Location:
    """What callers written for the DuckDB store ask of ``store.path``."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def exists(self) -> bool:
        return self.store.exists()

    def __str__(self) -> str:
        return display_url(self.store.url)

    __fspath__ = __str__


class _NoJournals:
    """``store.journal_dir`` of a store that has no journals."""

    def is_dir(self) -> bool:
        return False

    def glob(self, pattern: str) -> list:
        return []


# -- the store --------------------------------------------------------------------------


class PostgresStore:
    """Checkpoints of every agent of a team, in one PostgreSQL database."""

    def __init__(self, url: str, *, busy_timeout: float = 30.0, owner: str | None = None) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise StoreError(f"{url!r} is not a postgresql:// URL.")
        self.url = url
        self.busy_timeout = busy_timeout
        self.owner = owner or current_owner()
        self.path = _Location(self)
        self.journal_dir = _NoJournals()

    def __repr__(self) -> str:
        return f"PostgresStore({display_url(self.url)!r}, owner={self.owner!r})"

    # -- connections -------------------------------------------------------------------

    def _cached(self, kind: str) -> psycopg.Connection:
        cache: dict = _local.__dict__.setdefault("cons", {})
        key = (self.url, kind, self.owner if kind == "compat" else "")
        con = cache.get(key)
        if con is None or con.closed or con.broken:
            con = _connect(self.url, kind, self.busy_timeout)
            if kind == "compat":
                con.execute("SELECT set_config('jupyter_agent.owner', %s, false)", [self.owner])
                con.execute(_VIEWS)
            cache[key] = con
        return con

    @contextlib.contextmanager
    def _db(self, doing: str, kind: str = "reader") -> Iterator[psycopg.Connection]:
        con = self._cached(kind)
        try:
            yield con
        except psycopg.errors.ProgrammingError:
            raise  # a bad query is the caller's bug
        except psycopg.Error as exc:
            if con.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    con.rollback()
            raise _problem(self.url, exc, doing) from exc

    def _all(self, sql: str, args: list) -> list[tuple]:
        with self._db("be read") as con:
            return con.execute(sql, args).fetchall()

    def _one(self, sql: str, args: list) -> tuple | None:
        with self._db("be read") as con:
            return con.execute(sql, args).fetchone()

    @contextlib.contextmanager
    def connect(self, *, merge: bool = True) -> Iterator[_DuckCompat]:
        """A connection for SQL written against the DuckDB store, scoped to this owner."""
        with self._db("answer a query", "compat") as con:
            yield _DuckCompat(con)

    def exists(self) -> bool:
        """Whether the database holds the agent tables (connecting creates them)."""
        with self._db("be read") as con:
            return bool(con.execute("SELECT to_regclass(%s)", [f"{SCHEMA}.runs"]).fetchone()[0])

    def flush(self) -> None:
        """Nothing to fold: every checkpoint is in the database once written."""
        with self._db("be read"):
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
            raise AgentBusy(
                f"Agent {agent!r} is running elsewhere ({holder}). Wait for it, or stop it "
                "there, before running it here."
            )
        try:
            yield
        finally:
            locks.release(key)

    # -- reading -----------------------------------------------------------------------

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

    def runs(self, notebook: str | None = None, agent: str | None = None) -> list[RunRow]:
        where, args = ["owner = %s"], [self.owner]
        for column, value in (("notebook", notebook), ("agent", agent)):
            if value is not None:
                where.append(f"{column} = %s")
                args.append(value)
        rows = self._all(
            f"SELECT {_RUN_SELECT} FROM {SCHEMA}.runs WHERE {' AND '.join(where)} "
            "ORDER BY created_at, run_id",
            args,
        )
        return [_run_row(r) for r in rows]

    def run(self, run_id: str) -> RunRow | None:
        row = self._one(
            f"SELECT {_RUN_SELECT} FROM {SCHEMA}.runs WHERE run_id = %s AND owner = %s",
            [run_id, self.owner],
        )
        return _run_row(row) if row else None

    def checkpoints(self, run_id: str) -> list[CheckpointRow]:
        rows = self._all(
            f"SELECT {_CP_SELECT} FROM {SCHEMA}.checkpoints WHERE run_id = %s AND owner = %s "
            "ORDER BY step",
            [run_id, self.owner],
        )
        return [_checkpoint_row(r) for r in rows]

    def latest_checkpoints(self, run_ids: list[str]) -> dict[str, CheckpointRow]:
        """The last checkpoint of each run, in one query."""
        if not run_ids:
            return {}
        rows = self._all(
            f"SELECT DISTINCT ON (run_id) {_CP_SELECT} FROM {SCHEMA}.checkpoints "
            "WHERE run_id = ANY(%s) AND owner = %s ORDER BY run_id, step DESC",
            [list(run_ids), self.owner],
        )
        return {r[0]: _checkpoint_row(r) for r in rows}

    def payloads(self, chain: list[tuple[str, int | None]]) -> list[tuple[CheckpointRow, bytes]]:
        """Checkpoints with payloads along a chain of (run_id, up-to-step) segments, one query.

        Refused when a checkpoint was written by another owner (unpickling runs
        code) or when the history has a hole.
        """
        if not chain:
            return []
        rows = self._all(
            f"SELECT s.i, c.owner, {', '.join('c.' + c for c in CHECKPOINT_COLUMNS)}, "
            "CASE WHEN c.owner = %s THEN c.payload END "
            "FROM unnest(%s::text[], %s::int[]) WITH ORDINALITY AS s(run_id, upto, i) "
            f"JOIN {SCHEMA}.checkpoints c ON c.run_id = s.run_id AND c.step <= s.upto "
            "ORDER BY s.i, c.step",
            [
                self.owner,
                [r for r, _ in chain],
                [_MAX_STEP if u is None else u for _, u in chain],
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
            first = 0 if i == 0 else (steps[0] if steps else 0)
            missing = next((e for e, s in enumerate(steps, first) if s != e), None)
            if missing is not None:
                raise StoreError(
                    f"Checkpoint {missing} of run {run_id} is missing from the store, so this run "
                    "cannot be resumed or restored faithfully. Run the cell with --restart to "
                    "start over; the other runs are unaffected."
                )
            out.extend((_checkpoint_row(r[:-1]), bytes(r[-1] or b"")) for r in seg)
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

    def sizes(self) -> dict[str, int]:
        """Bytes the agent tables take in the database (with indexes and TOAST)."""
        row = self._one(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r'",
            [SCHEMA],
        )
        return {"postgres": int(row[0]), "duckdb": 0, "journals": 0}

    # -- deleting ----------------------------------------------------------------------

    def delete_runs(self, run_ids: list[str]) -> int:
        """Delete this owner's runs, their checkpoints, and blobs nothing refers to any more."""
        if not run_ids:
            return 0
        busy = self.live_runs() & set(run_ids)
        if busy:
            raise StoreError(f"Run {sorted(busy)[0]} is running; stop it before deleting it.")
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

    # -- notebook moves ----------------------------------------------------------------

    def move_notebook(self, old: str, new: str, moved_at: float | None = None) -> int:
        """Record that this owner's notebook or folder at ``old`` now lives at ``new``."""
        with self._db("record a notebook move", "compat") as con, con.transaction():
            con.execute(
                f"INSERT INTO {SCHEMA}.notebook_moves VALUES (%s, %s, %s, %s)",
                [self.owner, old, new, time.time() if moved_at is None else moved_at],
            )
            return apply_moves(_DuckCompat(con))

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
        with self._db("remember a context window") as con:
            con.execute(
                f"INSERT INTO {SCHEMA}.meta VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [f"context_window:{model}", str(tokens)],
            )


class PostgresRunWriter(RunWriter):
    """Writes one run execution's records straight to PostgreSQL, secrets redacted.

    Redaction is :class:`~jupyter_agent.store.RunWriter`'s. Blobs wait for the
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
            self._con: psycopg.Connection | None = _connect(store.url, "writer", store.busy_timeout)
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

    def _append(self, record: Record) -> None:
        if _malformed(record) or record.table not in ("runs", "blobs", "checkpoints"):
            raise StoreError(
                f"Cannot write a {record.table} record with a missing or mistyped column "
                f"({sorted(record.row) if isinstance(record.row, dict) else record.row!r}); "
                "nothing was stored."
            )
        if self._con is None:
            raise StoreError(f"The writer of run {self.run_id} is closed.")
        row = {k: _text(v) for k, v in record.row.items()}
        if record.table == "blobs":
            self._blobs.append([row["hash"], self.store.owner, row["size"], record.payload])
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
                with self._con.transaction():
                    self._put_blobs()
                    self._con.execute(
                        f"INSERT INTO {SCHEMA}.checkpoints ({_CP_SELECT}, owner, payload) "
                        f"VALUES ({', '.join(['%s'] * (len(CHECKPOINT_COLUMNS) + 2))}) "
                        "ON CONFLICT DO NOTHING",
                        [*values, self.store.owner, record.payload],
                    )
                self._blobs.clear()
        except psycopg.Error as exc:
            raise _problem(self.store.url, exc, "store a checkpoint") from exc
        self.bytes_written += len(record.payload) + sum(len(str(v)) for v in row.values())

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
