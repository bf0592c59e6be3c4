"""What every store backend does with rows, before its SQL writes them and after it read them.

Checking a record's shape before it is written, decoding rows into records,
building summaries from what was read and turning a stored payload into JSON
live here once, so every backend (and the journals of the DuckDB one) answers
alike. Nothing here speaks SQL (see :mod:`jupyter_agent.store.sql`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

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


@dataclass(frozen=True)
class Record:
    """One row on its way into a store: a table's columns as JSON plus an optional binary column.

    What a journal frames (see :mod:`jupyter_agent.store.duckdb.journal`) and what
    a writer hands its backend.
    """

    table: str
    row: dict
    payload: bytes = b""

    @property
    def label(self) -> str:
        """What fault injection matches on: ``run``, ``blob`` or ``checkpoint.<kind>``."""
        if self.table == "checkpoints":
            return f"checkpoint.{self.row.get('kind', '')}"
        return self.table.removesuffix("s")


#: The types a journaled column may hold, by the annotation of its record field
#: (``info`` dicts are written as JSON text).
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "dict": (str,),
}


def _shape(record: type) -> dict[str, tuple[tuple[type, ...], bool]]:
    """The columns of ``record`` as a row holds them: their types, and whether None is allowed.

    Read off the record's fields, so a column added there is checked here too.
    """
    out = {}
    for f in fields(record):
        hint = str(f.type)
        base = hint.removesuffix(" | None")
        out[f.name] = (_TYPES[base], base != hint or base == "dict")
    return out


#: The columns each record kind must have, and their types (None allowed where optional).
SHAPES: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "runs": _shape(RunRow),
    "checkpoints": {**_shape(CheckpointRow), "payload_format": ((str,), True)},
    "blobs": {"hash": ((str,), False), "size": ((int,), False)},
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
    updated_at, last step, last status, last info, latest plan as JSON text, cached
    tokens, cache write tokens, cost in dollars);
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
        cached_tokens=int(r[11] or 0),
        cache_write_tokens=int(r[12] or 0),
        cost_usd=None if r[13] is None else float(r[13]),
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
