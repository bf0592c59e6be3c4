"""The checkpoint store on PostgreSQL, for teams and for agents on several hosts.

Selected by a ``postgresql://`` URL in ``JUPYTER_AGENT_STORE`` (or
``%config AgentMagics.store``), see :func:`jupyter_agent.store.open.open_store`.
The verbs are :class:`jupyter_agent.store.sql.SQLStore`'s, in PostgreSQL's
dialect, with three differences that follow from a shared server:

* Writes go straight to the database, one transaction per checkpoint (with the
  blobs it refers to): there is no journal to fold
  (:mod:`jupyter_agent.store.postgres.writer`).
* Liveness and one writer per agent are PostgreSQL session advisory locks, held
  by one connection per process: they are seen from every host (``pg_locks``),
  and a process that dies, wherever it ran, releases them with its connection
  (:mod:`jupyter_agent.store.postgres.locks`).
* Every row carries its owner (``$JUPYTERHUB_USER``, else the login name). A
  user lists and resumes only their own agents, and a payload or blob written by
  someone else is never handed out for unpickling. See docs/store-postgres.md
  for the permissions model (one database per team, a role per member, and the
  row-level security that makes the owner column binding), and
  :mod:`jupyter_agent.store.postgres.admin` for its SQL.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import psycopg

from ...config import SYNC
from ...core.redaction import secrets_in_environment
from ...errors import AgentBusy, StoreError
from ..api import Capability
from ..dialect import Dialect, Query, first, pinned
from ..sql import SQLStore
from .admin import SCHEMA, connect, current_owner, display_url, ensure_schema, problem
from .locks import HELD_BY_ME, Slot, locks_of
from .writer import PostgresRunWriter


@functools.lru_cache(maxsize=256)
def _placeholders(text: str) -> str:
    return text.replace("%", "%%").replace("?", "%s")


class PostgresDialect(Dialect):
    """PostgreSQL's SQL: ``%s`` parameters, ``jsonb`` operators, tables in their own schema."""

    tables = f"{SCHEMA}."
    parsed_of = "{column}::jsonb"
    value_of = "({parsed} -> '{key}')"
    number_of = (
        "(CASE WHEN jsonb_typeof({parsed} #> '{{{listed}}}') = 'number' "
        "THEN ({parsed} #>> '{{{listed}}}')::numeric END)"
    )
    strings_of = "jsonb_array_elements_text({value})"
    is_array_of = "jsonb_typeof({value}) = 'array'"

    def sql(self, text: str) -> str:
        return _placeholders(text)


class _Query:
    """A psycopg connection as the SQL core's :class:`~jupyter_agent.store.dialect.Query`."""

    def __init__(self, con: psycopg.Connection, store: PostgresStore) -> None:
        self.con = con
        self.store = store

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        """Rows of a query; none from a store not created yet."""
        try:
            return self.con.execute(self.store.dialect.sql(sql), list(args)).fetchall()
        except psycopg.errors.UndefinedTable:
            if self.store.exists():
                raise
            return []

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self.con.execute(self.store.dialect.sql(sql), list(args)).rowcount

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self.con.transaction():
            yield


#: Reader connections a thread keeps open, to the databases it read most recently.
READERS_KEPT = 4
_local = threading.local()


class PostgresStore(SQLStore):
    """Checkpoints of every agent of a team, in one PostgreSQL database.

    Implements :class:`jupyter_agent.store.api.Store`; every query is scoped to
    :attr:`owner`.
    """

    dialect: ClassVar[Dialect] = PostgresDialect()
    capabilities = frozenset({Capability.OWNERS})

    def __init__(self, url: str, *, busy_timeout: float = 30.0, owner: str | None = None) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise StoreError(f"{url!r} is not a postgresql:// URL.")
        self.url = url
        self.busy_timeout = busy_timeout
        self.owner: str = owner or current_owner()
        self.location = display_url(url)
        #: How many connections this store opened for reads (what :meth:`session` shares).
        self.opens = 0
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"PostgresStore({self.location!r}, owner={self.owner!r})"

    # -- connections -------------------------------------------------------------------

    def _reader(self) -> psycopg.Connection:
        """This thread's connection: the session's, else one kept per thread and database."""
        pinned_con = getattr(self._local, "con", None)
        if pinned_con is not None and not (pinned_con.closed or pinned_con.broken):
            return pinned_con
        cache: dict = _local.__dict__.setdefault("cons", {})
        # Per owner too: a connection is checked once for the owner it reads for.
        key = (self.url, self.owner)
        con = cache.pop(key, None)
        if con is None or con.closed or con.broken:
            con = connect(self.url, "reader", self.busy_timeout)
            self.opens += 1
            try:
                self._check_role(con)
            except BaseException:
                con.close()
                raise
        cache[key] = con  # the most recently used last
        while len(cache) > READERS_KEPT:  # a thread reading many databases keeps a few
            with contextlib.suppress(psycopg.Error):
                cache.pop(next(iter(cache))).close()
        return con

    def _check_role(self, con: psycopg.Connection) -> None:
        """Refuse an owner that row security will never show: say why, not an empty store.

        Under the documented row-level security a role sees only rows whose owner is its
        own name; a JupyterHub user named otherwise would read nothing, silently."""
        try:
            row = con.execute(
                "SELECT session_user, c.relrowsecurity AND NOT r.rolsuper AND NOT r.rolbypassrls "
                "AND c.relowner <> r.oid FROM pg_class c JOIN pg_roles r ON r.rolname = session_user "
                "WHERE c.oid = to_regclass(%s)",
                [f"{SCHEMA}.runs"],
            ).fetchone()
        except psycopg.Error as exc:
            raise problem(self.url, exc, "be read") from exc
        if row is not None and row[1] and row[0] != self.owner:
            raise StoreError(
                f"The agent store {self.location} applies row-level security: the database "
                f"role {row[0]!r} reads and writes only rows owned by {row[0]!r}, but this "
                f"store's owner is {self.owner!r} ($JUPYTERHUB_USER, else the login name), so "
                "nothing could be read or written. Log in as the role named after the user, "
                "or set JUPYTERHUB_USER to the role's name."
            )

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Serve this thread's reads from one connection until it exits. Re-entrant.

        Nothing is held in the database meanwhile (each statement commits), so
        other processes never wait on a session.
        """
        if getattr(self._local, "con", None) is not None:
            yield
            return
        with pinned(self._local, "con", self._reader()):
            yield

    @contextlib.contextmanager
    def _db(self, doing: str, *, create: bool = False) -> Iterator[psycopg.Connection]:
        con = self._reader()
        try:
            if create:
                ensure_schema(self.url, con, create=True)
            yield con
        except psycopg.errors.ProgrammingError:
            raise  # a bad query is the caller's bug (or a store not created yet, see _Query)
        except psycopg.Error as exc:
            if con.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    con.rollback()
            raise problem(self.url, exc, doing) from exc

    @contextlib.contextmanager
    def _reads(self, *, fold: bool = True) -> Iterator[Query]:
        with self._db("be read") as con:
            yield _Query(con, self)

    @contextlib.contextmanager
    def _writes(self, doing: str, *, fold: bool = True) -> Iterator[Query]:
        with self._db(doing, create=True) as con:
            yield _Query(con, self)

    def exists(self) -> bool:
        """Whether the database holds the agent tables (reading never creates them)."""
        with self._db("be read") as con:
            found = con.execute("SELECT to_regclass(%s)", [f"{SCHEMA}.runs"]).fetchone()
        return bool(found and found[0])

    def flush(self) -> None:
        """Nothing to fold (a checkpoint is in the database once written); creates the tables."""
        with self._db("create its tables", create=True):
            pass

    # -- writing -----------------------------------------------------------------------

    def writer(
        self, run_id: str, secrets: list[str] | None = None, *, durability: str = SYNC
    ) -> PostgresRunWriter:
        """A writer for one execution of ``run_id``; the run is live while it is open.

        ``durability`` ``sync`` waits for each commit to reach the server's disk;
        ``process`` does not (a dead kernel loses nothing, a crashed server the last
        moments' checkpoints)."""
        return PostgresRunWriter(
            self.url,
            self.busy_timeout,
            self.owner,
            run_id,
            secrets_in_environment() if secrets is None else secrets,
            sync=durability == SYNC,
        )

    @contextlib.contextmanager
    def agent_lock(self, notebook: str, agent: str) -> Iterator[None]:
        """Be the only writer of this owner's agent ``agent`` of ``notebook``, on any host.

        Its key is kept in the owner's ``agent_locks`` row, out of other members' reach
        (see :mod:`jupyter_agent.store.postgres.locks`)."""
        locks = locks_of(self.url, self.busy_timeout)
        slot = Slot(
            "agent_locks",
            (("owner", self.owner), ("notebook", notebook), ("agent", agent)),
            create=True,
        )
        _, holder = locks.acquire(slot, reentrant=True)
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
            locks.release(slot)

    def delete_agent(self, notebook: str, agent: str, *, keep_latest: bool = False) -> list[str]:
        """Delete as every backend does, then the lock rows of this notebook's agents left
        without a run (the agent's own, its children's).

        Only once the agent's lock is released, and only rows whose key no session of
        this owner holds: an agent being started (its lock taken, its run not written
        yet) keeps its row. A take that read a row this removes fails to rotate its
        key (the row is gone) and tries again on a new row, so no two sessions ever
        hold an agent at once."""
        deleted = super().delete_agent(notebook, agent, keep_latest=keep_latest)
        t = self.dialect.tables
        runs = (
            f"{t}runs r WHERE r.owner = l.owner AND r.notebook = l.notebook AND r.agent = l.agent"
        )
        where, args = self._where(
            "l.notebook = ?",
            f"NOT EXISTS (SELECT 1 FROM {runs})",
            f"l.lock_key NOT IN ({HELD_BY_ME})",
            args=[notebook],
            alias="l.",
        )
        with self._writes("forget the locks of deleted agents") as q:
            q.run(f"DELETE FROM {t}agent_locks l {where}", args)
        return deleted

    # -- what the database says --------------------------------------------------------

    def check_trusted(self) -> None:
        """Nothing to check for the whole store: each payload and blob read checks its owner."""

    def live_runs(self) -> set[str]:
        """Runs of this owner whose writer holds its lock, on any host.

        Only a session of this role counts: another member holding the key fakes nothing."""
        where, args = self._where(f"lock_key IN ({HELD_BY_ME})")
        with self._reads() as q:
            return {r[0] for r in q.all(f"SELECT run_id FROM {SCHEMA}.runs {where}", args)}

    def _collect(self, run_ids: list[str], keep: set[str]) -> None:
        """Nothing: the database holds everything of a run, values included."""

    # -- what was learnt about models: each member's own -----------------------------------

    def learnt_window(self, model: str) -> int | None:
        """The context window ``model``'s endpoint last reported to this owner.

        Per owner, not team-wide: what one member's endpoint (or one member) says
        never makes another's agents compact."""
        where, args = self._where("model = ?", args=[model])
        with self._reads() as q:
            row = first(q, f"SELECT tokens FROM {SCHEMA}.learnt_windows {where}", args)
        return int(row[0]) if row else None

    def remember_window(self, model: str, tokens: int) -> None:
        """Remember ``model``'s context window for this owner's later runs."""
        with self._writes("remember a context window") as q:
            q.run(
                f"INSERT INTO {SCHEMA}.learnt_windows (owner, model, tokens) VALUES (?, ?, ?) "
                "ON CONFLICT (owner, model) DO UPDATE SET tokens = excluded.tokens",
                [self.owner, model, int(tokens)],
            )

    def sizes(self) -> dict[str, int]:
        """Bytes the agent tables take in the database (with indexes and TOAST)."""
        with self._reads() as q:
            row = first(
                q,
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = ? AND c.relkind = 'r'",
                [SCHEMA],
            )
        return {"postgres": int(row[0]) if row else 0}
