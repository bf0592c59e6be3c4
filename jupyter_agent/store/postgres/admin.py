"""The team database: its tables and their upgrade, the admin's SQL, and connections to it.

Every connection checks the schema once per database and process
(:func:`ensure_schema`): a newer release's tables are refused untouched
(:func:`jupyter_agent.store.schema.checked_version`), an older schema is upgraded
in place, and missing tables are created only by a writer (reading never
creates the store, and a member's role need not be able to create tables).
:data:`ROW_SECURITY_SQL` and :func:`grants_sql` are for the team's admin (see
docs/store-postgres.md). A database error is worded once, here
(:func:`problem`), with the fix for its cause.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

import psycopg

from ...errors import StoreBusy, StoreError, StoreUnavailable
from ..schema import SCHEMA_VERSION, STORE_ID, checked_version, new_store_id

SCHEMA = "jupyter_agent"
_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS {SCHEMA}.runs (
    run_id TEXT NOT NULL,
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
    lock_key BIGINT NOT NULL,
    PRIMARY KEY (run_id, owner)
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
    PRIMARY KEY (run_id, step, owner)
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
#: Schema 3: what an endpoint taught one member about a model's context window is that
#: member's (another's 60-token window must not make everyone compact at every step).
_WINDOWS_DDL = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.learnt_windows (
    owner TEXT NOT NULL,
    model TEXT NOT NULL,
    tokens BIGINT NOT NULL,
    PRIMARY KEY (owner, model)
);
"""
#: Schema 4: the current advisory-lock key of each owner's agent, random and rotated at each
#: take, out of other members' reach under row security (see
#: :mod:`jupyter_agent.store.postgres.locks`).
_LOCKS_DDL = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.agent_locks (
    owner TEXT NOT NULL,
    notebook TEXT NOT NULL,
    agent TEXT NOT NULL,
    lock_key BIGINT NOT NULL,
    PRIMARY KEY (owner, notebook, agent)
);
"""
#: The team-wide ``meta`` (the schema version) is written only by the tables' owner, the
#: admin: a member who could set it would lock the whole team out. Members may read it.
#: Run when the tables are created or upgraded and after every grant, so no grant (to a
#: role or to PUBLIC) leaves members a way to write it; row security backs this up.
_META_READ_ONLY = f"""
ALTER TABLE {SCHEMA}.meta ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS readable ON {SCHEMA}.meta;
CREATE POLICY readable ON {SCHEMA}.meta FOR SELECT USING (true);
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT DISTINCT a.grantee FROM pg_class c, aclexplode(c.relacl) a
      WHERE c.oid = '{SCHEMA}.meta'::regclass AND a.grantee <> c.relowner
        AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE') LOOP
    EXECUTE 'REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {SCHEMA}.meta FROM '
      || CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE r.grantee::regrole::text END;
  END LOOP;
END $$;
"""
#: Tables each member writes rows of their own in, under :data:`ROW_SECURITY_SQL`.
MEMBER_TABLES = (
    "runs",
    "checkpoints",
    "blobs",
    "notebook_moves",
    "learnt_windows",
    "agent_locks",
)


#: Row-level security that makes the owner column binding: each member's role
#: (named after their JupyterHub or login name) sees and writes only its rows.
#: Applied by the team's admin (see docs/store-postgres.md), not by the store.
def own_rows_sql(table: str) -> str:
    """Row-level security on ``table``: a role sees and writes only rows it owns."""
    return (
        f"ALTER TABLE {SCHEMA}.{table} ENABLE ROW LEVEL SECURITY;\n"
        f"DROP POLICY IF EXISTS own_rows ON {SCHEMA}.{table};\n"
        f"CREATE POLICY own_rows ON {SCHEMA}.{table} USING (owner = current_user) "
        "WITH CHECK (owner = current_user);"
    )


ROW_SECURITY_SQL = "\n".join(own_rows_sql(t) for t in MEMBER_TABLES)


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
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {SCHEMA} TO {team};\n"
        + _META_READ_ONLY
        # The store's id, for a store made before store ids (the tables' creator made it).
        + f"INSERT INTO {SCHEMA}.meta VALUES ('{STORE_ID}', "
        "md5(random()::text || clock_timestamp()::text)) ON CONFLICT DO NOTHING;\n"
    )


def current_owner() -> str:
    """Whose rows these are: the JupyterHub user, else the login name."""
    return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()


def lock_key(*parts: str) -> int:
    """A signed 64-bit advisory-lock key for ``parts``: the schema's, across processes.

    Never a member's agent or run: names are known to the whole team, so those keys
    are random and kept in the owner's rows (see :mod:`jupyter_agent.store.postgres.locks`)."""
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


# -- connections ------------------------------------------------------------------------

_ready: set[str] = set()
# Concurrency: its place in the lock order is in the docstring of jupyter_agent.loop.
_ready_lock = threading.Lock()
_DDL_KEY = lock_key("schema")


def _app_name(purpose: str) -> str:
    # Shown in pg_stat_activity: how another host names the holder of an agent.
    return f"jupyter-agent {purpose} pid {os.getpid()} on {socket.gethostname()}"[:63]


def problem(url: str, exc: psycopg.Error, doing: str) -> StoreError:
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
    # A refused or lost connection (or a server shutting down) passes: say so, as temporary.
    unavailable = isinstance(exc, psycopg.OperationalError)
    return (StoreUnavailable if unavailable else StoreError)(
        f"The agent store {where} could not {doing}: {text}. Check that the database server "
        "runs and that JUPYTER_AGENT_STORE (or %config AgentMagics.store) names it; passwords "
        "belong in ~/.pgpass or PGPASSWORD. The agent stopped at its last saved checkpoint."
    )


def connect(
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
        raise problem(url, exc, "be reached") from exc
    try:
        ensure_schema(url, con, create=create)
    except BaseException:
        con.close()
        raise
    return con


def _stored_version(url: str, con: psycopg.Connection) -> int | None:
    """The database's schema version (None: no tables yet), refused if newer than this reads."""
    found = con.execute("SELECT to_regclass(%s)", [f"{SCHEMA}.meta"]).fetchone()
    if not (found and found[0]):
        return None
    row = con.execute(f"SELECT value FROM {SCHEMA}.meta WHERE key = 'schema_version'").fetchone()
    return checked_version(display_url(url), None if row is None else row[0])


def ensure_schema(url: str, con: psycopg.Connection, *, create: bool) -> bool:
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
            version = _stored_version(url, con)
            if version is None:
                if not create:
                    return False
                with con.transaction():
                    con.execute("SELECT pg_advisory_xact_lock(%s)", [_DDL_KEY])
                    con.execute(_DDL + _WINDOWS_DDL + _LOCKS_DDL + _META_READ_ONLY)
                    con.execute(
                        f"INSERT INTO {SCHEMA}.meta VALUES ('schema_version', %s) "
                        "ON CONFLICT DO NOTHING",
                        [str(SCHEMA_VERSION)],
                    )
                    _add_store_id(con)
            elif version < SCHEMA_VERSION:
                _migrate(url, con)
        except psycopg.Error as exc:
            raise problem(url, exc, "create or upgrade its tables") from exc
        _ready.add(url)
        return True


def _migrate(url: str, con: psycopg.Connection) -> None:
    """Upgrade an older store in place, one schema step after the other, in one transaction.

    Needs the table owner's rights (the admin's): a member's process refuses to
    work on an older schema until the admin has opened the store once.
    """
    with con.transaction():
        con.execute("SELECT pg_advisory_xact_lock(%s)", [_DDL_KEY])
        version = _stored_version(url, con)
        if version is None or version >= SCHEMA_VERSION:
            return  # another process did it meanwhile
        if version < 2:
            _to_2(con)
        if version < 3:
            _to_3(con)
        _to_4(con)
        _add_store_id(con)
        con.execute(
            f"UPDATE {SCHEMA}.meta SET value = %s WHERE key = 'schema_version'",
            [str(SCHEMA_VERSION)],
        )


def _to_4(con: psycopg.Connection) -> None:
    """The owner in every key, and agents' lock keys in rows of their owners.

    A member's rows never collide with another's of the same run id: the keys only
    widen, so every stored row keeps its place. The new ``agent_locks`` table gets the
    grants and the row security ``runs`` has, so members keep working after the upgrade.
    """
    con.execute(
        f"ALTER TABLE {SCHEMA}.runs DROP CONSTRAINT IF EXISTS runs_pkey, "
        "ADD PRIMARY KEY (run_id, owner);\n"
        f"ALTER TABLE {SCHEMA}.checkpoints DROP CONSTRAINT IF EXISTS checkpoints_pkey, "
        "ADD PRIMARY KEY (run_id, step, owner);"
    )
    con.execute(_LOCKS_DDL)
    _secured_like_runs(con, "agent_locks")


def _secured_like_runs(con: psycopg.Connection, table: str) -> None:
    """Give a table new in an upgrade the grants and the row security ``runs`` has."""
    con.execute(f"""
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT a.grantee, a.privilege_type FROM pg_class c, aclexplode(c.relacl) a
      WHERE c.oid = '{SCHEMA}.runs'::regclass AND a.grantee <> c.relowner
        AND a.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE') LOOP
    EXECUTE 'GRANT ' || r.privilege_type || ' ON {SCHEMA}.{table} TO '
      || CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE r.grantee::regrole::text END;
  END LOOP;
END $$;""")
    secured = con.execute(
        "SELECT relrowsecurity FROM pg_class WHERE oid = %s::regclass", [f"{SCHEMA}.runs"]
    ).fetchone()
    if secured and secured[0]:
        con.execute(own_rows_sql(table))


def _add_store_id(con: psycopg.Connection) -> None:
    """The store's id, made by whoever creates or upgrades the tables (members cannot write
    ``meta``); a store made before store ids gets one from :func:`grants_sql`."""
    con.execute(
        f"INSERT INTO {SCHEMA}.meta VALUES (%s, %s) ON CONFLICT DO NOTHING",
        [STORE_ID, new_store_id()],
    )


def _to_3(con: psycopg.Connection) -> None:
    """Learnt windows per owner, and ``meta`` for the admin only.

    The team-wide windows of schema 2 are dropped (any member could have written
    them; each member learns theirs again). The new table gets the grants and the
    row security the ``runs`` table has, so members keep working after the upgrade.
    """
    con.execute(_WINDOWS_DDL)
    con.execute(f"DELETE FROM {SCHEMA}.meta WHERE key LIKE 'context_window:%'")
    _secured_like_runs(con, "learnt_windows")
    con.execute(_META_READ_ONLY)


def _to_2(con: psycopg.Connection) -> None:
    """Tag a schema 1 store's checkpoint payloads ``dill``.

    Nothing is unpickled here (the rows belong to many owners): each owner's old
    payloads are converted to JSON as that owner reads them
    (:func:`~jupyter_agent.store.rows.json_payload`).
    """
    con.execute(f"ALTER TABLE {SCHEMA}.checkpoints ADD COLUMN IF NOT EXISTS payload_format TEXT")
    con.execute(
        f"UPDATE {SCHEMA}.checkpoints SET payload_format = 'dill' WHERE payload_format IS NULL"
    )
    con.execute(f"ALTER TABLE {SCHEMA}.checkpoints ALTER COLUMN payload_format SET DEFAULT 'json'")
