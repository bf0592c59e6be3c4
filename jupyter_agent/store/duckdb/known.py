"""What a cell asks the store before its first model request, answered from small files.

Opening DuckDB costs tens of milliseconds (its import more, in a new kernel), and a
resume or a new agent's first cell used to pay it before the model was asked
anything. What they read then is kept in files beside the journals, framed and
stamped as the agent's state file is (:mod:`.statefile`: trusted only while whole,
while the DuckDB file and its log are exactly as they were when the file was
stamped, and while no journal waits to be folded):

* :class:`Summary` (``store.summary``): the store's id, the (notebook, agent) pairs
  that have runs, the context windows learnt, and the notebook moves. Written as a
  connection closes, from what it reads while it holds DuckDB, so no other process
  wrote between the stamp and the reads. A new agent learns here that it has no run
  yet; every run ever written is in DuckDB or in a journal, and either makes the
  file stale.
* the agent's timeline file (``<agent key>.timeline``): its runs and what its
  timeline shows at once, written by a timeline's read of the store
  (:mod:`jupyter_agent.views.kept`) and stamped before that read.

Nothing here imports DuckDB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from ..api import RunRow
from ..dialect import moved_path
from . import statefile

#: Moves kept in the summary; a store with more asks DuckDB where a notebook went.
MOVES_KEPT = 1_000


@dataclass(frozen=True)
class Summary:
    """The store as of the summary's stamp (see the module docstring)."""

    store_id: str | None
    agents: frozenset[tuple[str, str]]
    windows: dict[str, int]
    #: (old, new, moved_at) in the order they were made; None: too many to keep.
    moves: list[tuple[str, str, float]] | None

    def has_runs(self, notebook: str, agent: str) -> bool:
        return (notebook, agent) in self.agents

    def resolve(self, path: str, cutoff: float) -> str | None:
        """Where ``path`` lives after the moves made after ``cutoff`` (None: not known here)."""
        if self.moves is None:
            return None
        for old, new, at in self.moves:
            if at > cutoff:
                path = moved_path(path, old, new)
        return path


def summary_path(journal_dir: Path) -> Path:
    return journal_dir / statefile.SUMMARY


def read_summary(journal_dir: Path, db_path: Path) -> Summary | None:
    found = statefile.read_current(summary_path(journal_dir), db_path)
    if found is None:
        return None
    try:
        data = orjson.loads(found[1])
        moves = data["moves"]
        return Summary(
            data["store_id"],
            frozenset((str(nb), str(agent)) for nb, agent in data["agents"]),
            {str(k): int(v) for k, v in data["windows"].items()},
            None if moves is None else [(str(o), str(n), float(t)) for o, n, t in moves],
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def write_summary(
    journal_dir: Path,
    db: list[int] | None,
    agents: list[tuple],
    meta: list[tuple],
    moves: list[tuple],
) -> None:
    """Keep what DuckDB said (its ``runs`` pairs, ``meta`` rows and ``notebook_moves``),
    read while it was held open and stamped ``db`` then."""
    from ..schema import STORE_ID

    windows = {
        str(key)[len(WINDOW_KEY) :]: int(value)
        for key, value in meta
        if str(key).startswith(WINDOW_KEY) and str(value).isdigit()
    }
    store_id = next((str(value) for key, value in meta if key == STORE_ID and value), None)
    body = {
        "store_id": store_id,
        "agents": [list(pair) for pair in agents],
        "windows": windows,
        "moves": [list(m) for m in moves] if len(moves) <= MOVES_KEPT else None,
    }
    statefile.write_as_of(summary_path(journal_dir), db, orjson.dumps(body))


#: How a learnt context window is named in ``meta`` (see ``Store.learnt_window``).
WINDOW_KEY = "context_window:"


def timeline_path(journal_dir: Path, key: str) -> Path:
    return journal_dir / (key + statefile.TIMELINE)


def read_timeline(
    journal_dir: Path, key: str, db_path: Path
) -> tuple[list[RunRow], dict[str, Any]] | None:
    """The agent's runs and its timeline's view, if the file is current."""
    found = statefile.read_current(timeline_path(journal_dir, key), db_path)
    if found is None:
        return None
    try:
        data = orjson.loads(found[1])
        return [RunRow(**r) for r in data["runs"]], dict(data["view"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def write_timeline(
    journal_dir: Path, key: str, db: list[int] | None, runs: list[RunRow], view: dict
) -> None:
    body = orjson.dumps({"runs": [asdict(r) for r in runs], "view": view})
    statefile.write_as_of(timeline_path(journal_dir, key), db, body)
