"""A timeline's read of the store, kept in the files beside it and loaded back while current.

Reading an agent's timeline costs a store open (DuckDB's, tens of milliseconds, more
in a new kernel) and several queries; a cell reads it before its first model request.
So a store that can keep such a read (DuckDB: ``keep_timeline`` and ``saved_timeline``,
over the timeline file of :mod:`jupyter_agent.store.duckdb.known`) is given what a
:meth:`~jupyter_agent.views.timeline.Timeline.load` of the latest run found, stamped
before those reads, and the next load of that view answers from it while nothing was
written since. A store without them (PostgreSQL) is read every time.

What is kept is the timeline's own read state, by name (:data:`FIELDS`), so this module
sets a :class:`~jupyter_agent.views.timeline.Timeline`'s fields as its ``load`` would.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Protocol

from ..store.api import CheckpointRow, RunRow, Store

#: What is kept of a loaded timeline, besides its runs, their last checkpoints and window.
FIELDS = ("selected", "history", "dropped", "_ledger", "_plan", "_size", "_model_steps")


class Timeline(Protocol):
    """What this module reads and sets of a :class:`jupyter_agent.views.timeline.Timeline`
    (which imports this module), besides :data:`FIELDS`."""

    store: Store
    notebook: str
    agent: str
    runs: list[RunRow]
    selected: str
    window: int
    _last: dict[str, CheckpointRow]
    _live: set[str]


def stamp(store: Store) -> list[int] | None:
    """What the store's files are as of now, if it keeps reads: taken before the reads it
    vouches for, so a write made meanwhile makes what is kept stale."""
    as_of = getattr(store, "as_of", None)
    return as_of() if as_of is not None else None


def keep(timeline: Timeline, as_of: list[int] | None) -> None:
    """Give the store what ``timeline`` just read (``as_of``: :func:`stamp` before the
    reads), if it keeps reads and the latest run is selected: what a cell's load reads."""
    keep_timeline = getattr(timeline.store, "keep_timeline", None)
    latest = timeline.runs[-1].run_id if timeline.runs else ""
    if keep_timeline is None or as_of is None or timeline.selected != latest:
        return
    view = {name: getattr(timeline, name) for name in FIELDS}
    view["_last"] = {run_id: asdict(row) for run_id, row in timeline._last.items()}
    view["window"] = timeline.window
    keep_timeline(timeline.notebook, timeline.agent, as_of, timeline.runs, view)


def load(timeline: Timeline, run_id: str | None) -> bool:
    """Set ``timeline`` to what the store kept of its latest run's view, if that is
    current and is what its ``load(run_id)`` would read now (that run, the same window).

    The caller links the history's delegations and trims it, as after any read.
    """
    saved = getattr(timeline.store, "saved_timeline", None)
    kept = saved(timeline.notebook, timeline.agent) if saved is not None else None
    if kept is None:
        return False
    runs, view = kept
    latest = runs[-1].run_id if runs else ""
    ids = {r.run_id for r in runs}
    selected = timeline.selected
    want = run_id if run_id in ids else selected if selected in ids else latest
    if want != view.get("selected") or view.get("window") != timeline.window:
        return False
    try:
        last = {k: CheckpointRow(**row) for k, row in view["_last"].items()}
        values = {name: view[name] for name in FIELDS}
    except (KeyError, TypeError):
        return False
    timeline.runs, timeline._last = runs, last
    timeline._live = timeline.store.live_runs()
    for name, value in values.items():
        setattr(timeline, name, value)
    return True
