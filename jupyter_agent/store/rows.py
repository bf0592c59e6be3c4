"""What every store backend does with rows once its SQL has read them.

The backends (:mod:`jupyter_agent.store.duckdb.store` on DuckDB, :mod:`jupyter_agent.store.postgres.store`
on PostgreSQL) differ in their SQL only; decoding rows into records, checking a
record's shape before it is written, building summaries from what was read and
turning a stored payload into JSON live here once, so both answer alike.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence

from .. import vocab
from .api import (
    CHECKPOINT_COLUMNS,
    RUN_COLUMNS,
    AgentDetail,
    AgentSummary,
    CheckpointRow,
    RunRow,
    RunStats,
    RunSummary,
)
from .duckdb.journal import Record

_TEXT, _INT, _NUMBER = (str,), (int,), (int, float)
#: The columns each record kind must have, and their types (None allowed where optional).
SHAPES: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "runs": {
        "run_id": (_TEXT, False),
        "notebook": (_TEXT, False),
        "agent": (_TEXT, False),
        "cell_id": (_TEXT, True),
        "prompt": (_TEXT, False),
        "prompt_hash": (_TEXT, False),
        "model": (_TEXT, False),
        "parent_run": (_TEXT, True),
        "parent_step": (_INT, True),
        "created_at": (_NUMBER, False),
        "info": (_TEXT, True),
    },
    "checkpoints": {
        "run_id": (_TEXT, False),
        "step": (_INT, False),
        "kind": (_TEXT, False),
        "status": (_TEXT, False),
        "summary": (_TEXT, False),
        "created_at": (_NUMBER, False),
        "duration_ms": (_NUMBER, False),
        "tokens": (_INT, False),
        "size": (_INT, False),
        "info": (_TEXT, True),
        "payload_format": (_TEXT, True),
    },
    "blobs": {"hash": (_TEXT, False), "size": (_INT, False)},
}


def malformed(rec: Record) -> bool:
    """A record of a known kind whose row lacks a column or has one of the wrong type."""
    shape = SHAPES.get(rec.table)
    if shape is None or not isinstance(rec.row, dict):
        return shape is not None
    for column, (types, optional) in shape.items():
        value = rec.row.get(column)
        if value is None:
            if not optional:
                return True
        elif not isinstance(value, types) or isinstance(value, bool):
            return True
    return False


def parse_version(value: str, newest: int) -> int:
    """A stored schema version; an unreadable one counts as newer, so it is never overwritten."""
    try:
        return int(value)
    except ValueError:
        return newest + 1


def run_from_row(r: Sequence) -> RunRow:
    """A :class:`RunRow` from the values of :data:`RUN_COLUMNS`, in order."""
    d = dict(zip(RUN_COLUMNS, r, strict=True))
    d["info"] = json.loads(d["info"]) if d["info"] else {}
    return RunRow(**d)


def checkpoint_from_row(r: Sequence) -> CheckpointRow:
    """A :class:`CheckpointRow` from the values of :data:`CHECKPOINT_COLUMNS`, in order."""
    d = dict(zip(CHECKPOINT_COLUMNS, r, strict=True))
    d["info"] = json.loads(d["info"]) if d["info"] else {}
    return CheckpointRow(**d)


def stats_from_row(
    r: Sequence, chain: list[tuple[str, int | None]], model_steps: dict[str, list[int]]
) -> RunStats:
    """:class:`RunStats` from one aggregate row.

    ``r`` is (run_id, count, tokens, prompt tokens, completion tokens, size,
    updated_at, last step, last status, last info, latest plan as JSON text);
    ``chain`` and ``model_steps`` give the steps of the run's history.
    """
    return RunStats(
        run_id=r[0],
        checkpoints=r[1],
        tokens=int(r[2] or 0),
        prompt_tokens=int(r[3] or 0),
        completion_tokens=int(r[4] or 0),
        size=int(r[5] or 0),
        updated_at=r[6],
        last_step=r[7],
        last_status=r[8],
        last_info=json.loads(r[9]) if r[9] else {},
        steps=vocab.history_steps(chain, model_steps),
        plan=json.loads(r[10]) if r[10] else None,
    )


def summary(run: RunRow, stats: dict[str, RunStats], live: set[str]) -> RunSummary:
    """A run with its aggregates (if it has checkpoints) and liveness."""
    return RunSummary(run, stats.get(run.run_id), run.run_id in live)


def agent_summaries(
    runs: list[RunRow],
    timelines: dict[str, list[CheckpointRow]],
    stats: dict[str, RunStats],
    live: set[str],
) -> list[AgentSummary]:
    """The agents of ``runs`` (a notebook's, oldest first) with their latest runs."""
    latest = latest_runs(runs)
    counts = Counter(r.agent for r in runs)
    return [
        AgentSummary(name, summary(run, stats, live), counts[name], timelines.get(run.run_id, []))
        for name, run in latest.items()
    ]


def latest_runs(runs: list[RunRow]) -> dict[str, RunRow]:
    """Each agent's latest run, agents in the order of their first run."""
    return {r.agent: r for r in runs}


def agent_detail(
    agent: str,
    runs: list[RunRow],
    timelines: dict[str, list[CheckpointRow]],
    stats: dict[str, RunStats],
    live: set[str],
) -> AgentDetail | None:
    """One agent with all its ``runs`` (oldest first), or None when it has none."""
    if not runs:
        return None
    summaries = [summary(r, stats, live) for r in runs]
    head = AgentSummary(agent, summaries[-1], len(runs), timelines.get(runs[-1].run_id, []))
    return AgentDetail(head, summaries)


def json_payload(fmt: str | None, data: bytes | None, check_trusted: Callable[[], None]) -> bytes:
    """A stored payload as JSON; one of an older release (``dill``) is converted.

    Converting unpickles, so ``check_trusted`` is called first (only then).
    """
    if fmt == "json":
        return bytes(data or b"")
    check_trusted()
    from ..core.state import dill_to_json

    return dill_to_json(bytes(data or b""))


def first_missing(steps: list[int], first: int) -> int | None:
    """The first sequence number missing from ``steps`` (sorted), counting from ``first``."""
    return next((e for e, s in enumerate(steps, first) if s != e), None)
