"""What the REST API reads from the store: run and checkpoint metadata, never payloads.

Every function here is synchronous and opens DuckDB once, briefly; the server
calls them on a worker thread. Only metadata columns are selected, so no
payload is ever read, let alone deserialized.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

import duckdb

from .. import vocab
from ..agent import effective_status
from ..state import RUNNING
from ..store import Store, StoreError, apply_moves

#: How many checkpoints of an agent's latest run the agent list includes.
TIMELINE_LIMIT = 200
PROMPT_LIMIT = 120

_RUN_SQL = (
    "SELECT run_id, notebook, agent, cell_id, prompt, model, parent_run, parent_step, "
    "created_at FROM runs"
)
_CHECKPOINT_SQL = (
    "SELECT run_id, step, kind, status, summary, created_at, duration_ms, tokens, size, info "
    "FROM checkpoints"
)


def _no_stats(run: tuple) -> tuple:
    """The stats of a run without checkpoints yet."""
    return (0, 0, 0, run[8], 0, RUNNING, None)


def _info(raw: str | None) -> dict:
    return json.loads(raw) if raw else {}


class NotFound(LookupError):
    """The agent or run does not exist."""


class Conflict(Exception):
    """The request would touch a run that is still running."""


def status_label(
    status: str, steps: int, info: dict | None = None, updated: float | None = None
) -> str:
    """How a status reads on a badge: ``done after 3 steps``, ``interrupted at step 3``, ...

    ``steps`` counts model calls (see :mod:`jupyter_agent.vocab`), ``updated`` is
    the time of the last checkpoint (how long a stalled run has been quiet).
    """
    idle = time.time() - updated if updated is not None else None
    return vocab.status_text(status, steps, info, idle=idle)


def _history_steps(
    con: duckdb.DuckDBPyConnection, run_ids: list[str], runs: list[tuple]
) -> dict[str, int]:
    """Per run, the model calls of its history (a fork's parent's up to the fork point).

    ``runs`` are rows of :data:`_RUN_SQL` that include the runs' ancestors.
    """
    parents = {r[0]: (r[6], r[7]) for r in runs}
    chains: dict[str, list[tuple[str, int | None]]] = {}
    for run_id in run_ids:
        segments: list[tuple[str, int | None]] = [(run_id, None)]
        current = run_id
        while parents.get(current, (None, None))[0]:
            parent, upto = parents[current]
            segments.insert(0, (parent, upto))
            current = parent
        chains[run_id] = segments
    needed = sorted({seg for segments in chains.values() for seg, _ in segments})
    model_steps = {
        r: list(seqs) for r, seqs in con.execute(vocab.MODEL_STEPS_SQL, [needed]).fetchall()
    }
    return {r: vocab.history_steps(segments, model_steps) for r, segments in chains.items()}


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")
    return line if len(line) <= PROMPT_LIMIT else line[: PROMPT_LIMIT - 1] + "…"


def _run_dict(row: tuple) -> dict[str, Any]:
    run_id, _notebook, agent, cell_id, prompt, model, parent_run, parent_step, created = row
    return {
        "run_id": run_id,
        "agent": agent,
        "cell_id": cell_id,
        "prompt": _first_line(prompt),
        "model": model,
        "parent_run": parent_run,
        "parent_step": parent_step,
        "created_at": created,
    }


def _checkpoint_dict(row: tuple, *, info: bool = True) -> dict[str, Any]:
    run_id, step, kind, status, summary, created, duration, tokens, size, raw_info = row
    out: dict[str, Any] = {
        "step": step,
        "kind": kind,
        "status": status,
        "summary": summary,
        "created_at": created,
        "duration_ms": duration,
        "tokens": tokens,
        "size": size,
    }
    if info:
        out["info"] = json.loads(raw_info) if raw_info else {}
    return out


def _is_derived(agent: str, cell_id: str | None) -> bool:
    """Whether the agent's name was derived (cell id, prompt) rather than given with --name."""
    return (cell_id is not None and agent == f"cell-{cell_id}") or agent.startswith("prompt-")


class Reader:
    """One consistent look at the store: liveness is sampled around the read."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def exists(self) -> bool:
        """Whether any agent ever wrote to the store (reading must not create it)."""
        return self.store.path.exists() or self.store.journal_dir.is_dir()

    def _read(self, fn: Any, *args: Any) -> Any:
        live = self.store.live_runs()
        with self.store.connect() as con:
            apply_moves(con)  # runs folded in after a notebook move follow it
            result = fn(con, *args)
        # A run that started or stopped during the read is live in one of the samples.
        live |= self.store.live_runs()
        return result, live

    # -- agents ---------------------------------------------------------------------

    def agents(self, notebook: str) -> list[dict[str, Any]]:
        """Every agent of a notebook with the status of its latest run."""
        if not self.exists():
            return []
        (runs, checkpoints, stats, steps), live = self._read(self._agents_sql, notebook)
        by_agent: dict[str, list[tuple]] = defaultdict(list)
        for row in runs:
            by_agent[row[2]].append(row)
        timelines: dict[str, list[dict]] = defaultdict(list)
        for row in checkpoints:
            timelines[row[0]].append(_checkpoint_dict(row, info=False))
        agents = []
        for name, agent_runs in by_agent.items():
            latest = agent_runs[-1]
            timeline = timelines.get(latest[0], [])
            agents.append(
                self._summary(
                    name,
                    latest,
                    len(agent_runs),
                    timeline,
                    stats.get(latest[0]),
                    live,
                    steps.get(latest[0], 0),
                )
            )
        agents.sort(key=lambda a: a["started_at"])
        return agents

    @staticmethod
    def _agents_sql(con: duckdb.DuckDBPyConnection, notebook: str) -> tuple:
        runs = con.execute(
            f"{_RUN_SQL} WHERE notebook = ? ORDER BY created_at", [notebook]
        ).fetchall()
        latest: dict[str, str] = {}
        for row in runs:
            latest[row[2]] = row[0]
        ids = list(latest.values())
        checkpoints = con.execute(
            f"{_CHECKPOINT_SQL} WHERE run_id IN (SELECT UNNEST(?)) "
            "QUALIFY ROW_NUMBER() OVER (PARTITION BY run_id ORDER BY step DESC) <= ? "
            "ORDER BY run_id, step",
            [ids, TIMELINE_LIMIT],
        ).fetchall()
        return runs, checkpoints, _run_stats(con, ids), _history_steps(con, ids, runs)

    @staticmethod
    def _summary(
        name: str,
        run: tuple,
        runs: int,
        timeline: list[dict],
        stats: tuple | None,
        live: set[str],
        steps: int,
    ) -> dict[str, Any]:
        info = _run_dict(run)
        last = timeline[-1] if timeline else None
        status = effective_status(
            last["status"] if last else RUNNING,
            info["run_id"],
            live,
            last["created_at"] if last else None,
        )
        step = last["step"] if last else 0
        count, tokens, _size, updated, _step, _status, last_info = stats or _no_stats(run)
        return {
            "name": name,
            "cell_id": info["cell_id"],
            "named": not _is_derived(name, info["cell_id"]),
            "status": status,
            "step": step,
            "steps": steps,
            "label": status_label(status, steps, _info(last_info), updated),
            "live": info["run_id"] in live,
            "run_id": info["run_id"],
            "runs": runs,
            "model": info["model"],
            "prompt": info["prompt"],
            "started_at": info["created_at"],
            "updated_at": updated,
            "checkpoints": count,
            "tokens": int(tokens or 0),
            "timeline": [
                {"step": c["step"], "kind": c["kind"], "status": c["status"]} for c in timeline
            ],
        }

    def agent(self, notebook: str, name: str) -> dict[str, Any]:
        """One agent: the summary of its latest run and every run it has."""
        if not self.exists():
            raise NotFound(f"No agent named {name!r} in this notebook.")
        (runs, checkpoints, stats, steps), live = self._read(self._agent_sql, notebook, name)
        if not runs:
            raise NotFound(f"No agent named {name!r} in this notebook.")
        timeline = [_checkpoint_dict(r, info=False) for r in checkpoints]
        latest = runs[-1][0]
        summary = self._summary(
            name, runs[-1], len(runs), timeline, stats.get(latest), live, steps.get(latest, 0)
        )
        summary["all_runs"] = [
            self._run_summary(r, stats.get(r[0]), live, steps.get(r[0], 0)) for r in runs
        ]
        return summary

    @staticmethod
    def _agent_sql(con: duckdb.DuckDBPyConnection, notebook: str, name: str) -> tuple:
        runs = con.execute(
            f"{_RUN_SQL} WHERE notebook = ? AND agent = ? ORDER BY created_at", [notebook, name]
        ).fetchall()
        if not runs:
            return [], [], {}, {}
        checkpoints = con.execute(
            f"{_CHECKPOINT_SQL} WHERE run_id = ? "
            "QUALIFY ROW_NUMBER() OVER (ORDER BY step DESC) <= ? ORDER BY step",
            [runs[-1][0], TIMELINE_LIMIT],
        ).fetchall()
        ids = [r[0] for r in runs]
        return runs, checkpoints, _run_stats(con, ids), _history_steps(con, ids, runs)

    def runs(self, notebook: str, name: str) -> list[dict[str, Any]]:
        """The runs of an agent, oldest first, each with its status."""
        return self.agent(notebook, name)["all_runs"]

    @staticmethod
    def _run_summary(run: tuple, stats: tuple | None, live: set[str], steps: int) -> dict[str, Any]:
        out = _run_dict(run)
        count, tokens, size, updated, last_step, last_status, last_info = stats or _no_stats(run)
        status = effective_status(last_status, out["run_id"], live, updated)
        out.update(
            status=status,
            step=last_step,
            steps=steps,
            label=status_label(status, steps, _info(last_info), updated),
            live=out["run_id"] in live,
            checkpoints=count,
            tokens=int(tokens or 0),
            size=int(size or 0),
            updated_at=updated,
        )
        return out

    # -- runs -------------------------------------------------------------------------

    def run(self, run_id: str) -> tuple[dict[str, Any], str]:
        """A run's metadata and checkpoints, and the absolute notebook path it belongs to."""
        if not self.exists():
            raise NotFound(f"No run {run_id!r}.")
        (run, stats, checkpoints, steps), live = self._read(self._run_sql, run_id)
        if run is None:
            raise NotFound(f"No run {run_id!r}.")
        out = self._run_summary(run, stats.get(run_id), live, steps.get(run_id, 0))
        out["checkpoints"] = [_checkpoint_dict(r) for r in checkpoints]
        return out, run[1]

    @staticmethod
    def _run_sql(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple:
        run = con.execute(f"{_RUN_SQL} WHERE run_id = ?", [run_id]).fetchone()
        if run is None:
            return None, {}, [], {}
        checkpoints = con.execute(
            f"{_CHECKPOINT_SQL} WHERE run_id = ? ORDER BY step", [run_id]
        ).fetchall()
        family = con.execute(  # a fork's ancestors are earlier runs of its agent
            f"{_RUN_SQL} WHERE notebook = ? AND agent = ?", [run[1], run[2]]
        ).fetchall()
        steps = _history_steps(con, [run_id], family)
        return run, _run_stats(con, [run_id]), checkpoints, steps

    # -- deleting -----------------------------------------------------------------------

    def delete_agent(self, notebook: str, name: str, *, keep_latest: bool = False) -> list[str]:
        """Delete an agent's runs (all, or all but the latest and what it was forked from)."""
        runs = self.store.runs(notebook=notebook, agent=name) if self.exists() else []
        if not runs:
            raise NotFound(f"No agent named {name!r} in this notebook.")
        doomed = [r.run_id for r in runs]
        if keep_latest:
            keep: set[str] = set()
            by_id = {r.run_id: r for r in runs}
            current = runs[-1]
            while current is not None and current.run_id not in keep:
                keep.add(current.run_id)
                current = by_id.get(current.parent_run or "")
            doomed = [r for r in doomed if r not in keep]
        busy = sorted(self.store.live_runs() & set(doomed))
        if busy:
            raise Conflict(
                f"Agent {name!r} is running (run {busy[0]}); stop it before deleting it."
            )
        forks = self._forks_outside(doomed)
        if forks:
            raise Conflict(
                f"Run {forks[0][1]} of agent {forks[0][0]!r} was forked from a run that would "
                "be deleted; delete that agent first."
            )
        try:
            self.store.delete_runs(doomed)
        except StoreError as exc:
            if "running" in str(exc):
                raise Conflict(str(exc)) from exc
            raise
        return doomed

    def _forks_outside(self, run_ids: list[str]) -> list[tuple[str, str]]:
        if not run_ids:
            return []
        with self.store.connect() as con:
            return con.execute(
                "SELECT agent, run_id FROM runs WHERE parent_run IN (SELECT UNNEST(?)) "
                "AND run_id NOT IN (SELECT UNNEST(?))",
                [run_ids, run_ids],
            ).fetchall()

    def move(self, old: str, new: str) -> int:
        """Record a notebook (or folder) rename."""
        return self.store.move_notebook(old, new)


def _run_stats(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> dict[str, tuple]:
    """Per run: checkpoints, tokens, bytes, last time, last step, last status and info."""
    rows = con.execute(
        "SELECT run_id, count(*), sum(tokens), sum(size), max(created_at), "
        "arg_max(step, step), arg_max(status, step), arg_max(info, step) FROM checkpoints "
        "WHERE run_id IN (SELECT UNNEST(?)) GROUP BY run_id",
        [run_ids],
    ).fetchall()
    return {r[0]: r[1:] for r in rows}
