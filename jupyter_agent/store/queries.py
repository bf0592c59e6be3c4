"""What the verbs of :class:`~jupyter_agent.store.sql.SQLStore` are built on.

A backend gives a dialect, an owner (on a shared store) and its connections:
the hooks declared here, which :class:`SQLQueries` leaves abstract or gives a
default for. On them stand the few queries several verbs share: runs and
checkpoints matching conditions, each run's last checkpoints, and the
aggregates every listing shows (steps, tokens, cost, status), each one query on
a connection the verb opened. The verbs themselves are in :mod:`.sql`; a
backend subclasses :class:`~jupyter_agent.store.sql.SQLStore`, never this class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, TypeVar

from . import api
from . import rows as store_rows
from .api import Capability, CheckpointRow, RunRow, Store, history_chain
from .dialect import CHECKPOINT_SELECT, RUN_SELECT, Dialect, Query, scoped
from .rows import checkpoint_from_row, run_from_row

_T = TypeVar("_T")


class SQLQueries(Store, ABC):
    """A backend's hooks and the queries the verbs share (see the module docstring)."""

    dialect: ClassVar[Dialect]
    #: The optional features this backend has (see :class:`Capability`).
    capabilities: frozenset[Capability] = frozenset()
    #: Whose rows this store reads and writes; None for a store of one user.
    owner: str | None = None
    #: How a checkpoint can go missing from a history, for the message refusing it.
    lost_how: ClassVar[str] = ""
    location: str

    # -- what a backend provides -----------------------------------------------------

    @abstractmethod
    def _reads(self, *, fold: bool = True) -> AbstractContextManager[Query]:
        """A connection for reads (:class:`~jupyter_agent.store.dialect.Nothing` while there
        is no store: reads never create one). ``fold``: also show what the store holds but
        has not stored yet."""

    @abstractmethod
    def _writes(self, doing: str, *, fold: bool = True) -> AbstractContextManager[Query]:
        """A connection for writes, creating the store if need be; ``doing`` words its errors."""

    def _payload_format(self) -> str:
        """The SQL of a checkpoint's payload format (rows of schema 1 have none: dill)."""
        return "coalesce(payload_format, 'dill')"

    def _value_apart(self, digest: str, size: int) -> bytes | None:
        """A value whose row holds no data, kept elsewhere by the backend; None if it is not."""
        return None

    def _in_flight(self) -> set[str]:
        """Hashes of values a live writer wrote for a checkpoint not stored yet (kept by deletes)."""
        return set()

    @abstractmethod
    def _collect(self, run_ids: list[str], keep: set[str]) -> None:
        """After ``run_ids`` were deleted: drop what the backend keeps of them outside its
        tables, except the values ``keep``."""

    # -- helpers -----------------------------------------------------------------------

    def _where(
        self, *conditions: str, args: Sequence[Any] = (), alias: str = ""
    ) -> tuple[str, list]:
        return scoped(self.owner, *conditions, args=args, alias=alias)

    def _runs(self, q: Query, *conditions: str, args: Sequence[Any] = ()) -> list[RunRow]:
        """Runs matching ``conditions``, oldest first."""
        where, a = self._where(*conditions, args=args)
        rows = q.all(
            f"SELECT {RUN_SELECT} FROM {self.dialect.tables}runs {where} "
            "ORDER BY created_at, run_id",
            a,
        )
        return [run_from_row(r) for r in rows]

    def _checkpoints(self, q: Query, run_id: str, kind: str | None = None) -> list[CheckpointRow]:
        kinds = ["kind = ?"] if kind is not None else []
        where, a = self._where("run_id = ?", *kinds, args=[run_id, *([kind] if kinds else [])])
        rows = q.all(
            f"SELECT {CHECKPOINT_SELECT} FROM {self.dialect.tables}checkpoints {where} "
            "ORDER BY step",
            a,
        )
        return [checkpoint_from_row(r) for r in rows]

    def _timelines(
        self, q: Query, run_ids: list[str], limit: int
    ) -> dict[str, list[CheckpointRow]]:
        """Each run's last ``limit`` checkpoints, oldest first."""
        if not run_ids:
            return {}
        where, a = self._where("run_id = ANY(?)", args=[run_ids])
        rows = q.all(
            f"SELECT {CHECKPOINT_SELECT} FROM (SELECT {CHECKPOINT_SELECT}, row_number() OVER "
            f"(PARTITION BY run_id ORDER BY step DESC) AS n FROM {self.dialect.tables}checkpoints "
            f"{where}) t WHERE n <= ? ORDER BY run_id, step",
            [*a, limit],
        )
        out: dict[str, list[CheckpointRow]] = {}
        for r in rows:
            out.setdefault(r[0], []).append(checkpoint_from_row(r))
        return out

    def _model_steps(self, q: Query, run_ids: list[str]) -> dict[str, list[int]]:
        where, a = self._where("kind = 'model'", "run_id = ANY(?)", args=[run_ids])
        rows = q.all(
            f"SELECT run_id, array_agg(step ORDER BY step) FROM {self.dialect.tables}checkpoints "
            f"{where} GROUP BY run_id",
            a,
        )
        return {r: list(steps) for r, steps in rows}

    def _stats(
        self, q: Query, runs: list[RunRow], known: list[RunRow] | None = None
    ) -> dict[str, api.RunStats]:
        """Aggregates of ``runs``; ``known`` are rows already read (ancestors are read as needed)."""
        if not runs:
            return {}
        d, t = self.dialect, self.dialect.tables
        family = {r.run_id: r for r in [*(known or []), *runs]}
        missing = {r.parent_run for r in family.values() if r.parent_run} - set(family)
        if missing:  # a fork's ancestors, all generations in one query
            start, a = self._where("run_id = ANY(?)", args=[sorted(missing)])
            step, b = self._where(alias="r.")
            rows = q.all(
                f"WITH RECURSIVE up AS (SELECT {RUN_SELECT} FROM {t}runs {start} UNION "
                f"SELECT {', '.join('r.' + c for c in api.RUN_COLUMNS)} FROM {t}runs r "
                f"JOIN up ON r.run_id = up.parent_run {step}) SELECT {RUN_SELECT} FROM up",
                [*a, *b],
            )
            family.update((r.run_id, r) for r in map(run_from_row, rows))
        chains = {r.run_id: history_chain(r, family) for r in runs}
        model_steps = self._model_steps(q, sorted({s for c in chains.values() for s, _ in c}))
        plan = d.json_value("i", "plan")
        where, a = self._where("run_id = ANY(?)", args=[list(chains)])
        rows = q.all(
            f"SELECT run_id, count(*), sum(tokens), sum({d.json_number('i', 'usage', 'prompt_tokens')}), "
            f"sum({d.json_number('i', 'usage', 'completion_tokens')}), sum(size), max(created_at), "
            f"max(step), {d.last('status')}, {d.last('info')}, "
            f"CAST({d.last(plan, f'{plan} IS NOT NULL')} AS TEXT), "
            f"sum({d.json_number('i', 'usage', 'cached_tokens')}), "
            f"sum({d.json_number('i', 'usage', 'cache_write_tokens')}), "
            f"sum({d.json_amount('i', 'cost_usd')}) "
            f"FROM (SELECT *, {d.parsed('info')} AS i FROM {t}checkpoints {where}) c "
            "GROUP BY run_id",
            a,
        )
        return {r[0]: store_rows.stats_from_row(r, chains[r[0]], model_steps) for r in rows}

    def _sampled(self, read: Callable[[Query], _T]) -> tuple[_T, set[str]]:
        """``read`` on one connection, with the runs live before or after it.

        A run that started or stopped during the read is live in one of the samples.
        """
        live = self.live_runs()
        with self._reads() as q:
            result = read(q)
        return result, live | self.live_runs()
