"""One writer per agent, and liveness, on PostgreSQL: advisory locks at keys only owners know.

A process holds its agents' and runs' locks on one connection per database
(:class:`Locks`). PostgreSQL releases them when that connection ends, so a
process that dies on any host frees its agents and runs, and ``pg_locks``
shows them to every host: a run is live while its writer holds the run's key.

Advisory keys are one space shared by every role of the database, and every key
held is visible to every role in ``pg_locks``. So a lock's key is never computed
from names (a notebook, an agent, a run id: another member knows them all). It is
a random number kept in a row of the lock's owner (:class:`Slot`: the owner's
``agent_locks`` row of an agent, the ``lock_key`` of a run's row), which row
security lets only the owner read or write, and taking the lock *rotates* it: a
new random key is held, then written to the row in place of the old one, whose
lock was free or held by another role's session. A key seen in ``pg_locks`` is
worthless once released, and a key another member holds is left behind at the
next take, never waited for. A key counts as held (a live run, a busy agent) only
when a session of the owner's own role holds it (:data:`HELD_BY_ME`), and that
session is described by the name it gave itself, which only the owner's logins
can set: another member can neither block an owner's agent, nor make a finished
run look live, nor put words in the "running elsewhere" message.

Why not the alternatives: keys derived from a per-member secret would still be
fixed, so one seen in ``pg_locks`` could be held for ever after; row locks
(``SELECT ... FOR UPDATE``) on the owner's rows would be out of others' reach too,
but a row lock lasts as long as its transaction, so a run of hours would keep a
transaction open on the team's server for hours (holding back vacuum for everyone,
ended by ``idle_in_transaction_session_timeout``), and the locks one connection
holds could not be released one at a time.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from secrets import randbits

import psycopg

from .admin import SCHEMA, connect, problem

#: Advisory locks held in this database by the sessions of the querying role.
_HELD = (
    "SELECT {cols} FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
_KEY = "(l.classid::bigint << 32) | l.objid::bigint"
#: Keys held by sessions of this session's own role: what liveness counts.
HELD_BY_ME = _HELD.format(cols=_KEY) + " AND a.usename = session_user"
#: How often a take is retried after losing a race with another process of the owner.
_TRIES = 8


def random_key() -> int:
    """A signed 64-bit advisory-lock key nobody can derive from names."""
    return randbits(64) - (1 << 63)


@dataclass(frozen=True)
class Slot:
    """Where the current key of one lock is kept: the row of ``table`` matching ``where``.

    ``create``: make the row when there is none (an agent's); otherwise the row is
    written later with the key taken (a run's, by its writer's first record).
    """

    table: str
    where: tuple[tuple[str, str], ...]
    create: bool = False

    def match(self) -> tuple[str, list[str]]:
        return " AND ".join(f"{c} = %s" for c, _ in self.where), [v for _, v in self.where]


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
        self.held: dict[Slot, list[int]] = {}  # slot -> [thread id, depth, key]

    def _connection(self) -> psycopg.Connection:
        if self.con is None or self.con.closed or self.con.broken:
            self.held.clear()  # a lost connection took its locks with it
            # Locks are taken to write: the tables are created if need be.
            self.con = connect(self.url, "locks", self.busy_timeout, create=True)
        return self.con

    def acquire(self, slot: Slot, *, reentrant: bool) -> tuple[int | None, str | None]:
        """Take the lock of ``slot``: (its key, None), or (None, "here" or the holder)."""
        me = threading.get_ident()
        with self.mutex:
            held = self.held.get(slot)
            if held is not None:
                if reentrant and held[0] == me:
                    held[1] += 1
                    return held[2], None
                return None, "here"
            try:
                con = self._connection()
                for _ in range(_TRIES):
                    key, holder = self._take(con, slot)
                    if key is not None:
                        self.held[slot] = [me, 1, key]
                    if key is not None or holder is not None:
                        return key, holder
            except psycopg.Error as exc:
                raise problem(self.url, exc, "take a lock") from exc
            return None, "another process"

    def _take(self, con: psycopg.Connection, slot: Slot) -> tuple[int | None, str | None]:
        """One try at rotating ``slot``'s key: (new key, None), (None, holder) when a session
        of this role holds the current one, (None, None) when another process of this role
        rotated it meanwhile (look again)."""
        match, args = slot.match()
        row = con.execute(
            f"SELECT lock_key FROM {SCHEMA}.{slot.table} WHERE {match}", args
        ).fetchone()
        old = None if row is None else int(row[0])
        had_old = old is not None and _try(con, old)
        if old is not None and not had_old:
            holder = self._holder(con, old)
            if holder is not None:
                return None, holder
        new = random_key()
        while not _try(con, new):
            new = random_key()
        try:
            if old is None and slot.create:
                swapped = con.execute(
                    f"INSERT INTO {SCHEMA}.{slot.table} ({', '.join(c for c, _ in slot.where)}, "
                    f"lock_key) VALUES ({', '.join(['%s'] * (len(args) + 1))}) "
                    "ON CONFLICT DO NOTHING",
                    [*args, new],
                ).rowcount
            elif old is None:
                swapped = 1  # the row is written later, with this key
            else:
                swapped = con.execute(
                    f"UPDATE {SCHEMA}.{slot.table} SET lock_key = %s WHERE {match} "
                    "AND lock_key = %s",
                    [new, *args, old],
                ).rowcount
        except BaseException:
            _unlock(con, new)
            raise
        finally:
            if had_old:
                assert old is not None
                _unlock(con, old)
        if not swapped:
            _unlock(con, new)
            return None, None
        return new, None

    def release(self, slot: Slot) -> None:
        with self.mutex:
            held = self.held.get(slot)
            if held is None:
                return
            held[1] -= 1
            if held[1] > 0:
                return
            del self.held[slot]
            if self.con is not None and not self.con.closed:
                _unlock(self.con, held[2])

    def close_if_idle(self) -> None:
        """End the connection if it holds no lock (it reopens when one is taken)."""
        with self.mutex:
            if not self.held and self.con is not None:
                with contextlib.suppress(psycopg.Error):
                    self.con.close()
                self.con = None

    @staticmethod
    def _holder(con: psycopg.Connection, key: int) -> str | None:
        """The session of this role holding ``key``, as it describes itself; None if none does.

        Only the owner's logins can name a session of the owner's role: a session of
        another role holding the key is no holder at all (the key is left behind)."""
        row = con.execute(
            _HELD.format(cols="a.application_name") + f" AND a.usename = session_user "
            f"AND {_KEY} = %s",
            [key],
        ).fetchone()
        if row is None:
            return None
        return (row[0] or "").removeprefix("jupyter-agent locks ") or "another process"


def _try(con: psycopg.Connection, key: int) -> bool:
    row = con.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
    return bool(row and row[0])


def _unlock(con: psycopg.Connection, key: int) -> None:
    with contextlib.suppress(psycopg.Error):
        con.execute("SELECT pg_advisory_unlock(%s)", [key])


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
