"""Every verb of the store, once, in SQL that both engines run.

A backend (:class:`~jupyter_agent.store.duckdb.store.DuckDBStore`,
:class:`~jupyter_agent.store.postgres.store.PostgresStore`) subclasses
:class:`SQLStore` with its :class:`~jupyter_agent.store.dialect.Dialect`, its
connections and the other hooks of :mod:`.queries` (which also holds the queries
several verbs share), and what no SQL expresses: liveness, locks, files, trust. Each verb here is one or a few
queries on one connection: no verb costs a backend more round trips than SQL
of its own would.

On a shared store (one with an :attr:`SQLStore.owner`) every query reads and
writes that owner's rows only; payloads and values are the exception: they are
read whoever wrote them, and another owner's are refused by name rather than
looking missing.
"""

from __future__ import annotations

import os
import time

from ..errors import Conflict, StoreError
from . import api
from . import rows as store_rows
from .api import Capability, CheckpointRow, RunRow
from .deletion import delete_agent_runs
from .dialect import CHECKPOINT_SELECT, MAX_STEP, Query, first, move_runs, moved_path
from .queries import SQLQueries
from .rows import checkpoint_from_row, json_payload
from .schema import SCHEMA_VERSION, STORE_ID, parse_version

_IMPORTED_AT = time.time()


def process_started_at() -> float:
    """When this process started (Linux ``/proc``; elsewhere, when this module was imported)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


class SQLStore(SQLQueries):
    """The verbs of :class:`jupyter_agent.store.api.Store`, on a backend's connections.

    A subclass gives its :attr:`dialect`, its connections (the abstract methods
    of :class:`~jupyter_agent.store.queries.SQLQueries`) and the verbs that are
    not SQL: writing, locks, liveness, trust, sessions and sizes (the protocol's
    verbs this class leaves out); the rest is here, once.
    """

    # -- reading rows --------------------------------------------------------------------

    def runs(self, notebook: str | None = None, agent: str | None = None) -> list[RunRow]:
        given = {"notebook": notebook, "agent": agent}
        with self._reads() as q:
            return self._runs(
                q,
                *(f"{c} = ?" for c, v in given.items() if v is not None),
                args=[v for v in given.values() if v is not None],
            )

    def run(self, run_id: str) -> RunRow | None:
        with self._reads() as q:
            found = self._runs(q, "run_id = ?", args=[run_id])
        return found[0] if found else None

    def checkpoints(self, run_id: str, kind: str | None = None) -> list[CheckpointRow]:
        with self._reads() as q:
            return self._checkpoints(q, run_id, kind)

    def latest_checkpoints(self, run_ids: list[str]) -> dict[str, CheckpointRow]:
        """The last checkpoint of each run, in one query."""
        with self._reads() as q:
            return {r: cps[-1] for r, cps in self._timelines(q, list(run_ids), 1).items()}

    def model_steps(self, run_ids: list[str]) -> dict[str, list[int]]:
        if not run_ids:
            return {}
        with self._reads() as q:
            return self._model_steps(q, list(run_ids))

    def payloads(
        self, chain: list[tuple[str, int | None]], since: int = 0
    ) -> list[tuple[CheckpointRow, bytes]]:
        """Checkpoints with their JSON payloads along (run_id, up-to-step) segments, one query.

        Nothing is unpickled (but a payload of the previous release, converted
        as it is read, after :meth:`check_trusted`). On a shared store, a segment
        is this owner's rows; refused when it has only another owner's (named, so
        it does not look missing), or when the history has a hole (a
        checkpoint lost to damage): folding it would make up a conversation
        that never happened.
        """
        if not chain:
            return []
        owned = self.owner is not None
        who, data = (
            ("owner", "CASE WHEN owner = ? THEN payload END") if owned else ("NULL", "payload")
        )
        fmt = self._payload_format()
        branches, args = [], []
        for i, (run_id, upto) in enumerate(chain):
            branches.append(
                f"SELECT {i} AS i, {who}, {CHECKPOINT_SELECT}, {fmt}, {data} "
                f"FROM {self.dialect.tables}checkpoints WHERE run_id = ? AND step BETWEEN ? AND ?"
            )
            args += [
                *([self.owner] if owned else []),
                run_id,
                since,
                MAX_STEP if upto is None else upto,
            ]
        with self._reads() as q:
            rows = q.all(" UNION ALL ".join(branches) + " ORDER BY i, step", args)
        # The owner is part of the key: another's rows of a run id are another run, unless
        # none of this owner's are there (then they are refused by name, not missing).
        own = {r[0] for r in rows if r[1] == self.owner}
        rows = [r for r in rows if not owned or r[1] == self.owner or r[0] not in own]
        foreign = next((r for r in rows if owned and r[1] != self.owner), None)
        if foreign is not None:
            raise StoreError(
                f"Checkpoint {foreign[3]} of run {foreign[2]} was written by {foreign[1]!r}, not "
                f"{self.owner!r}; it is not loaded, because loading a checkpoint can run code. "
                "Run the cell with --restart to start a run of your own."
            )
        segments: list[list[tuple]] = [[] for _ in chain]
        for r in rows:
            segments[r[0]].append(r[2:])
        out: list[tuple[CheckpointRow, bytes]] = []
        for i, ((run_id, _), seg) in enumerate(zip(chain, segments, strict=True)):
            steps = [r[1] for r in seg]
            missing = store_rows.first_missing(
                steps, since if i == 0 else (steps[0] if steps else 0)
            )
            if missing is not None:
                raise StoreError(
                    f"Checkpoint {missing} of run {run_id} is missing from the store"
                    f"{self.lost_how}, so this run cannot be resumed or restored faithfully. "
                    "Run the cell with --restart to start over; the other runs are unaffected."
                )
            out.extend(
                (checkpoint_from_row(r[:-2]), json_payload(r[-2], r[-1], self.check_trusted))
                for r in seg
            )
        return out

    def blobs(self, hashes: list[str]) -> dict[str, bytes]:
        """Saved values by hash, after :meth:`check_trusted`: unpickling one runs code.

        On a shared store only this owner's: another's is refused by name.
        """
        if not hashes:
            return {}
        self.check_trusted()
        owned = self.owner is not None
        who, data = ("owner", "CASE WHEN owner = ? THEN data END") if owned else ("NULL", "data")
        with self._reads() as q:
            rows = q.all(
                f"SELECT hash, size, {who}, {data} FROM {self.dialect.tables}blobs "
                "WHERE hash = ANY(?)",
                [*([self.owner] if owned else []), list(hashes)],
            )
        mine = {h for h, _, owner, _ in rows if owner == self.owner}
        foreign = sorted({(h, owner) for h, _, owner, _ in rows if h not in mine})
        if foreign:
            digest, owner = foreign[0]
            raise StoreError(
                f"A saved value ({digest[:12]}) was written by {owner!r}, not {self.owner!r}; it "
                "is not loaded, because loading a saved value can run code. Run the cell with "
                "--restart to recompute it in a run of your own."
            )
        out: dict[str, bytes] = {}
        for h, size, owner, value in rows:  # outside the connection: others need not wait
            if owner != self.owner:
                continue
            found = bytes(value) if value is not None else self._value_apart(h, size)
            if found is not None:
                out[h] = found
        return out

    # -- summaries -------------------------------------------------------------------------

    def run_stats(self, run_ids: list[str]) -> dict[str, api.RunStats]:
        if not run_ids:
            return {}
        with self._reads() as q:
            return self._stats(q, self._runs(q, "run_id = ANY(?)", args=[list(run_ids)]))

    def agent_summaries(
        self, notebook: str, *, timeline: int = api.TIMELINE_LIMIT
    ) -> list[api.AgentSummary]:
        def read(q: Query) -> tuple:
            runs = self._runs(q, "notebook = ?", args=[notebook])
            latest = list(store_rows.latest_runs(runs).values())
            ids = [r.run_id for r in latest]
            return runs, self._timelines(q, ids, timeline), self._stats(q, latest, runs)

        (runs, timelines, stats), live = self._sampled(read)
        return store_rows.agent_summaries(runs, timelines, stats, live)

    def agent_detail(
        self, notebook: str, agent: str, *, timeline: int = api.TIMELINE_LIMIT
    ) -> api.AgentDetail | None:
        def read(q: Query) -> tuple:
            runs = self._runs(q, "notebook = ?", "agent = ?", args=[notebook, agent])
            ids = [r.run_id for r in runs[-1:]]
            return runs, self._timelines(q, ids, timeline), self._stats(q, runs)

        (runs, timelines, stats), live = self._sampled(read)
        return store_rows.agent_detail(agent, runs, timelines, stats, live)

    def run_detail(self, run_id: str) -> api.RunDetail | None:
        def read(q: Query) -> tuple:
            runs = self._runs(q, "run_id = ?", args=[run_id])
            return runs, self._checkpoints(q, run_id) if runs else [], self._stats(q, runs)

        (runs, checkpoints, stats), live = self._sampled(read)
        if not runs:
            return None
        return api.RunDetail(store_rows.summary(runs[0], stats, live), checkpoints)

    def forks(self, run_ids: list[str]) -> list[RunRow]:
        if not run_ids:
            return []
        ids = list(run_ids)
        with self._reads() as q:
            return self._runs(q, "parent_run = ANY(?)", "NOT run_id = ANY(?)", args=[ids, ids])

    def info(self) -> api.StoreInfo:
        """Schema version and (this owner's) row counts."""
        if not self.exists():
            return api.StoreInfo(self.location, False, None, SCHEMA_VERSION, 0, 0)
        t = self.dialect.tables
        where, a = self._where()
        with self._reads() as q:
            row = first(
                q,
                f"SELECT (SELECT value FROM {t}meta WHERE key = 'schema_version'), "
                f"(SELECT count(*) FROM {t}runs {where}), "
                f"(SELECT count(*) FROM {t}checkpoints {where})",
                [*a, *a],
            )
        stored, runs, checkpoints = row if row is not None else (None, 0, 0)
        version = parse_version(stored, SCHEMA_VERSION) if stored is not None else None
        return api.StoreInfo(self.location, True, version, SCHEMA_VERSION, runs, checkpoints)

    # -- deleting ------------------------------------------------------------------------

    def delete_runs(self, run_ids: list[str]) -> int:
        """Delete runs, their checkpoints, and the values no checkpoint refers to any more.

        Returns how many runs were deleted: not the ids asked for, since unknown ids and
        another owner's runs (row security on a team store) delete nothing."""
        if not run_ids or not self.exists():
            return 0
        busy = self.live_runs() & set(run_ids)
        if busy:
            raise Conflict(f"Run {sorted(busy)[0]} is running; stop it before deleting it.")
        pending = self._in_flight()
        d, t, ids = self.dialect, self.dialect.tables, list(run_ids)
        mine, a = self._where("run_id = ANY(?)", args=[ids])
        strings, is_array = d.json_strings(d.parsed("info"), "blobs")
        refs, b = self._where("info LIKE '%\"blobs\"%'", is_array)
        unref, c = self._where(
            f"hash NOT IN (SELECT {strings} FROM {t}checkpoints {refs})",
            *(["NOT hash = ANY(?)"] if pending else []),
            args=[*b, *([sorted(pending)] if pending else [])],
        )
        apart: set[str] = set()
        with self._writes("delete runs") as q:
            with q.transaction():
                q.run(f"DELETE FROM {t}checkpoints {mine}", a)
                deleted = q.run(f"DELETE FROM {t}runs {mine}", a)
                q.run(f"DELETE FROM {t}blobs {unref}", c)
            if Capability.VALUE_FILES in self.capabilities:
                kept, k = self._where("data IS NULL")
                apart = {h for (h,) in q.all(f"SELECT hash FROM {t}blobs {kept}", k)}
        self._collect(ids, apart | pending)
        return deleted

    def delete_agent(self, notebook: str, agent: str, *, keep_latest: bool = False) -> list[str]:
        return delete_agent_runs(self, notebook, agent, keep_latest=keep_latest)

    # -- notebook moves ------------------------------------------------------------------

    def move_notebook(self, old: str, new: str, moved_at: float | None = None) -> int:
        """Record that the notebook or folder at ``old`` now lives at ``new``.

        Runs stored under ``old`` (or below it, for a folder) and created before
        the move follow it; how many did.
        """
        when = time.time() if moved_at is None else moved_at
        columns = ["old", "new", "moved_at", *(["owner"] if self.owner is not None else [])]
        values = [old, new, when, *([self.owner] if self.owner is not None else [])]
        with self._writes("record a notebook move") as q, q.transaction():
            q.run(
                f"INSERT INTO {self.dialect.tables}notebook_moves ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' for _ in values)})",
                values,
            )
            return move_runs(q, old, new, when, tables=self.dialect.tables, owner=self.owner)

    def resolve_notebook(self, path: str, since: float | None = None) -> str:
        """Where the notebook known as ``path`` since ``since`` lives now.

        A kernel learns its notebook's path when it starts and is not told about
        renames, so the default ``since`` is this process's start time.
        """
        cutoff = process_started_at() if since is None else since
        where, a = self._where("moved_at > ?", args=[cutoff])
        with self._reads(fold=False) as q:
            moves = q.all(
                f"SELECT old, new FROM {self.dialect.tables}notebook_moves {where} "
                "ORDER BY moved_at",
                a,
            )
        for old, new in moves:
            path = moved_path(path, old, new)
        return path

    # -- which store this is ------------------------------------------------------------

    def store_id(self) -> str | None:
        """The id made once by whoever created the store (None: no store, or none yet)."""
        with self._reads(fold=False) as q:
            row = first(q, f"SELECT value FROM {self.dialect.tables}meta WHERE key = ?", [STORE_ID])
        return str(row[0]) if row and row[0] else None

    # -- what was learnt about models ----------------------------------------------------

    def learnt_window(self, model: str) -> int | None:
        """The context window ``model``'s endpoint last reported, if it ever refused one."""
        with self._reads(fold=False) as q:
            row = first(
                q,
                f"SELECT value FROM {self.dialect.tables}meta WHERE key = ?",
                [f"context_window:{model}"],
            )
        return int(row[0]) if row and str(row[0]).isdigit() else None

    def remember_window(self, model: str, tokens: int) -> None:
        """Remember ``model``'s context window for later runs (see :mod:`context`)."""
        with self._writes("remember a context window", fold=False) as q:
            q.run(
                f"INSERT INTO {self.dialect.tables}meta VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [f"context_window:{model}", str(tokens)],
            )
