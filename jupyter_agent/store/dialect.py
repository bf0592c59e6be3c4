"""What the SQL of every backend is written against: a dialect, a connection, shared clauses.

The verbs (:mod:`jupyter_agent.store.sql`) are written once with ``?``
placeholders; a :class:`Dialect` says what one engine says differently (how the
driver takes parameters, how a JSON column is picked apart, where the tables
live), and a :class:`Query` is one connection's statements. A few clauses both
the verbs and a backend's own code run live here too: an owner's rows
(:func:`scoped`) and a notebook move (:func:`move_runs`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar, Protocol

from .api import CHECKPOINT_COLUMNS, RUN_COLUMNS

#: The largest step a history segment without an end reaches.
MAX_STEP = 2**31 - 1
RUN_SELECT = ", ".join(RUN_COLUMNS)
CHECKPOINT_SELECT = ", ".join(CHECKPOINT_COLUMNS)


class Dialect:
    """How one engine says what the verbs ask: parameters, JSON, where the tables are.

    A dialect is SQL fragments with ``{named}`` holes, filled in by the methods
    the verbs call; only the placeholders (:meth:`sql`) may need code.
    """

    #: Prefix of the store's table names (a schema, when the store shares a database).
    tables: ClassVar[str] = ""
    #: The JSON text ``{column}`` in the form the fragments below take (parsed once a row).
    parsed_of: ClassVar[str]
    #: The JSON value of ``{key}`` in ``{parsed}``; NULL where it is absent.
    value_of: ClassVar[str]
    #: The number at a path of keys in ``{parsed}`` (``{dotted}``: the keys joined by dots,
    #: ``{listed}``: by commas); NULL where there is none.
    number_of: ClassVar[str]
    #: The same for a number with a fraction (dollars); :attr:`number_of` where that keeps it.
    amount_of: ClassVar[str | None] = None
    #: A set-returning expression of the strings in the JSON array ``{value}``.
    strings_of: ClassVar[str]
    #: Whether the JSON ``{value}`` is an array (before :attr:`strings_of` may read it).
    is_array_of: ClassVar[str]
    #: An aggregate: the value of ``{expr}`` at a group's highest step, of the rows ``{only}``.
    last_of: ClassVar[str] = "(array_agg({expr} ORDER BY step DESC){only})[1]"

    def sql(self, text: str) -> str:
        """``text``, written with ``?`` placeholders, as the driver takes it."""
        return text

    def parsed(self, column: str) -> str:
        return self.parsed_of.format(column=column)

    def json_value(self, parsed: str, key: str) -> str:
        return self.value_of.format(parsed=parsed, key=key)

    def json_number(self, parsed: str, *keys: str) -> str:
        return self.number_of.format(parsed=parsed, dotted=".".join(keys), listed=",".join(keys))

    def json_amount(self, parsed: str, *keys: str) -> str:
        """:meth:`json_number` for a number with a fraction (a cost in dollars)."""
        form = self.amount_of or self.number_of
        return form.format(parsed=parsed, dotted=".".join(keys), listed=",".join(keys))

    def json_strings(self, parsed: str, key: str) -> tuple[str, str]:
        """The strings of the array at ``key`` (set-returning), and the condition a row must
        meet before that is evaluated."""
        value = self.json_value(parsed, key)
        return self.strings_of.format(value=value), self.is_array_of.format(value=value)

    def last(self, expr: str, where: str | None = None) -> str:
        """The aggregate of ``expr`` at a group's highest step (of the rows meeting ``where``)."""
        return self.last_of.format(expr=expr, only=f" FILTER (WHERE {where})" if where else "")


class Query(Protocol):
    """One connection's statements, in this module's SQL; errors worded by the backend."""

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        """Every row of a query."""

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        """A statement that changes rows; how many it changed."""

    def transaction(self) -> AbstractContextManager[None]:
        """The statements inside are one transaction, rolled back if one fails."""


class Nothing:
    """The :class:`Query` of a store that does not exist yet: every read finds nothing."""

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        return []

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        return 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        yield


@contextmanager
def pinned(local: threading.local, name: str, value: object) -> Iterator[None]:
    """``local.<name>`` is ``value`` in this thread while this is held, then what it was.

    How a backend serves a thread's reads from one connection (``session``), or
    changes how long they wait, without passing it to every verb.
    """
    before = getattr(local, name, None)
    setattr(local, name, value)
    try:
        yield
    finally:
        setattr(local, name, before)


def first(q: Query, sql: str, args: Sequence[Any] = ()) -> tuple | None:
    """The first row of a query, or None."""
    rows = q.all(sql, args)
    return rows[0] if rows else None


def scoped(
    owner: str | None, *conditions: str, args: Sequence[Any] = (), alias: str = ""
) -> tuple[str, list]:
    """A ``WHERE`` clause of ``conditions`` (and ``owner``'s rows only, if given), with its
    arguments: the owner's first, then ``args``."""
    parts = ([f"{alias}owner = ?"] if owner is not None else []) + list(conditions)
    head = [owner] if owner is not None else []
    return ("WHERE " + " AND ".join(parts) if parts else ""), [*head, *args]


def move_runs(
    q: Query, old: str, new: str, before: float, *, tables: str = "", owner: str | None = None
) -> int:
    """Move the runs created before ``before`` of the notebook or folder ``old`` to ``new``;
    how many moved. :func:`moved_path` is the same rule for one path."""
    prefix = old.rstrip("/") + "/"
    where, args = scoped(
        owner,
        "created_at < ?",
        "(notebook = ? OR left(notebook, ?) = ?)",
        args=[before, old, len(prefix), prefix],
    )
    return q.run(
        f"UPDATE {tables}runs SET notebook = CASE WHEN notebook = ? THEN ? "
        f"ELSE ? || substr(notebook, ?) END {where}",
        [old, new, new.rstrip("/"), len(prefix), *args],
    )


def moved_path(path: str, old: str, new: str) -> str:
    """``path`` after moving ``old`` (a notebook or a folder) to ``new``."""
    if path == old:
        return new
    if path.startswith(old.rstrip("/") + "/"):
        return new.rstrip("/") + path[len(old.rstrip("/")) :]
    return path
