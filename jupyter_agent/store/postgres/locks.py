"""One writer per agent, and liveness, on PostgreSQL: session advisory locks.

A process holds its agents' and runs' locks on one connection per database
(:class:`Locks`). PostgreSQL releases them when that connection ends, so a
process that dies on any host frees its agents and runs, and ``pg_locks``
shows them to every host: a run is live while its writer holds the run's key.

Advisory keys are one space shared by every role of the database, so a member
could otherwise hold another's keys. An agent's key therefore includes the
database role the server says this session is (``session_user``, not the owner
name the client claims), so one member's processes never compute another's keys;
a run's key is random, kept in the owner's row (see
:class:`~jupyter_agent.store.postgres.writer.PostgresRunWriter`), so its id, which
travels in URLs and logs, does not give it away; and a key
counts as held by an agent or run only when a session of the owner's own role
holds it (:data:`HELD_BY_ME`), so a key someone else holds (seen in ``pg_locks``)
never makes a run look live, and the holder is named by its role, not by the
text it chose for itself.
"""

from __future__ import annotations

import contextlib
import threading

import psycopg

from .admin import connect, lock_key, problem

#: Advisory locks held in this database by the sessions of the querying role.
_HELD = (
    "SELECT {cols} FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
_KEY = "(l.classid::bigint << 32) | l.objid::bigint"
#: Keys held by sessions of this session's own role: what liveness counts.
HELD_BY_ME = _HELD.format(cols=_KEY) + " AND a.usename = session_user"


class Locks:
    """The process's session advisory locks on one database, held by one connection.

    PostgreSQL releases them when that connection ends, so a process that dies on
    any host frees its agents and runs; ``pg_locks`` shows them to every host.
    Threads of this process are told apart here, as the server cannot.
    """

    def __init__(self, url: str, busy_timeout: float) -> None:
        self.url = url
        self.busy_timeout = busy_timeout
        # Concurrency: its place in the lock order is in the docstring of jupyter_agent.loop.
        self.mutex = threading.Lock()
        self.con: psycopg.Connection | None = None
        self.held: dict[int, list[int]] = {}  # key -> [thread id, depth]
        self.role: str | None = None  # the server's session_user for this connection

    def _connection(self) -> psycopg.Connection:
        if self.con is None or self.con.closed or self.con.broken:
            self.held.clear()  # a lost connection took its locks with it
            self.con = connect(self.url, "locks", self.busy_timeout)
            row = self.con.execute("SELECT session_user").fetchone()
            self.role = str(row[0]) if row else ""
        return self.con

    def key(self, kind: str, *parts: str) -> int:
        """The key of ``kind`` (``agent``, ``run``) for ``parts``, in this role's own keys.

        The role is the server's ``session_user``, so it cannot be claimed by a client."""
        with self.mutex:
            if self.role is None or self.con is None or self.con.broken:
                try:
                    self._connection()
                except psycopg.Error as exc:
                    raise problem(self.url, exc, "take a lock") from exc
            return lock_key(kind, self.role or "", *parts)

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
                ok = con.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
                if not (ok and ok[0]):
                    return self._holder(con, key)
            except psycopg.Error as exc:
                raise problem(self.url, exc, "take a lock") from exc
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
        """Who holds ``key``: a process of this role as it describes itself, else the role.

        A session of another role chose its own description: it is named by its role."""
        row = con.execute(
            _HELD.format(cols="a.application_name, a.usename, a.usename = session_user")
            + f" AND {_KEY} = %s",
            [key],
        ).fetchone()
        if row is not None and not row[2]:
            return (
                f"a session of the database role {row[1]!r}, not one of yours; the database "
                "admin can end it with pg_terminate_backend"
            )
        name = (row[0] if row else "") or ""
        return name.removeprefix("jupyter-agent locks ") or "another process"


_lock_sessions: dict[str, Locks] = {}
# Concurrency: its place in the lock order is in the docstring of jupyter_agent.loop.
_lock_sessions_lock = threading.Lock()


def locks_of(url: str, busy_timeout: float) -> Locks:
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
            _lock_sessions[url] = Locks(url, busy_timeout)
        return _lock_sessions[url]
