"""What the REST API shows: store summaries as JSON-ready dicts, never payloads.

Every function here is synchronous and makes one store call; the server calls
them on a worker thread. The store answers with typed records (see
:mod:`jupyter_agent.store.api`) built from metadata alone, so nothing is ever
deserialized; this module only words them.
"""

from __future__ import annotations

import time
from typing import Any

from .. import vocab
from ..core.redaction import redact, secrets_in_environment
from ..errors import Conflict, NotFound
from ..store.api import (
    CHECKPOINT_COLUMNS,
    AgentSummary,
    CheckpointRow,
    RunStats,
    RunSummary,
    Store,
)
from ..vocab import effective_status

__all__ = ["Conflict", "NotFound", "PROMPT_LIMIT", "Reader", "status_label"]

PROMPT_LIMIT = 120


def status_label(
    status: str, steps: int, info: dict | None = None, updated: float | None = None
) -> str:
    """How a status reads on a badge: ``done after 3 steps``, ``interrupted at step 3``, ...

    ``steps`` counts model calls (see :mod:`jupyter_agent.vocab`), ``updated`` is
    the time of the last checkpoint (how long a stalled run has been quiet).
    """
    idle = time.time() - updated if updated is not None else None
    return vocab.status_text(status, steps, info, idle=idle)


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")
    return line if len(line) <= PROMPT_LIMIT else line[: PROMPT_LIMIT - 1] + "…"


def _is_derived(agent: str, cell_id: str | None) -> bool:
    """Whether the agent's name was derived (cell id, prompt) rather than given with --name."""
    return (cell_id is not None and agent == f"cell-{cell_id}") or agent.startswith("prompt-")


def _run_dict(run: Any) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "agent": run.agent,
        "cell_id": run.cell_id,
        "prompt": _first_line(run.prompt),
        "model": run.model,
        "parent_run": run.parent_run,
        "parent_step": run.parent_step,
        # The agent that delegated this run (``delegate``), so a list can show the tree.
        "parent_agent": run.info.get("parent_agent"),
        "created_at": run.created_at,
    }


def _checkpoint_dict(cp: CheckpointRow) -> dict[str, Any]:
    return {c: getattr(cp, c) for c in CHECKPOINT_COLUMNS if c != "run_id"}


def _status(summary: RunSummary) -> tuple[str, str]:
    """The run's effective status and its label."""
    stats, run = summary.stats, summary.run
    live = {run.run_id} if summary.live else set()
    if stats is None:
        status = effective_status(vocab.Status.RUNNING, run.run_id, live, run.created_at)
        return status, status_label(status, 0, {}, run.created_at)
    status = effective_status(stats.last_status, run.run_id, live, stats.updated_at)
    return status, status_label(status, stats.steps, stats.last_info, stats.updated_at)


class Reader:
    """The REST API's view of the store: one store call per request."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # Imported with a store, not with the server: it reads the DuckDB backend's journals.
        from ..store.duckdb.stale import LastGood

        #: The last answer per notebook, shown while a kernel holds the store.
        self.last_good = LastGood(store)

    def exists(self) -> bool:
        """Whether any agent ever wrote to the store (reading must not create it)."""
        return self.store.exists()

    # -- agents ---------------------------------------------------------------------

    def agents(self, notebook: str) -> list[dict[str, Any]]:
        """Every agent of a notebook with the status of its latest run."""
        return self.agents_as_of(notebook)[0]

    def agents_as_of(self, notebook: str) -> tuple[list[dict[str, Any]], str | None]:
        """:meth:`agents`, and ``HH:MM:SS`` if they are what the store held then.

        While a kernel holds the store the answer is the last one read, brought
        up to date from the journals (see :mod:`jupyter_agent.store.duckdb.stale`), not a wait.
        """
        agents, as_of = self.agents_in_order(notebook)
        agents.sort(key=lambda a: a["started_at"])
        return agents, as_of

    def agents_in_order(self, notebook: str) -> tuple[list[dict[str, Any]], str | None]:
        """:meth:`agents_as_of`, agents in the order of their first run (as ``%agent list``)."""
        answer = self.last_good.agent_summaries(notebook)
        return [self._summary(a) for a in answer.agents], answer.stale_since()

    @staticmethod
    def _summary(agent: AgentSummary) -> dict[str, Any]:
        latest = agent.latest
        info = _run_dict(latest.run)
        status, label = _status(latest)
        stats = latest.stats
        last = agent.timeline[-1] if agent.timeline else None
        return {
            "name": agent.name,
            "cell_id": info["cell_id"],
            "parent_agent": info["parent_agent"],
            "named": not _is_derived(agent.name, info["cell_id"]),
            "status": status,
            "step": last.step if last else 0,
            "steps": stats.steps if stats else 0,
            "label": label,
            "live": latest.live,
            "run_id": info["run_id"],
            "runs": agent.runs,
            "model": info["model"],
            "prompt": info["prompt"],
            "started_at": info["created_at"],
            "updated_at": stats.updated_at if stats else info["created_at"],
            "checkpoints": stats.checkpoints if stats else 0,
            **_ledger(stats),
            "timeline": [
                {"step": c.step, "kind": c.kind, "status": c.status} for c in agent.timeline
            ],
        }

    def agent(self, notebook: str, name: str) -> dict[str, Any]:
        """One agent: the summary of its latest run and every run it has."""
        detail = self.last_good.agent_detail(notebook, name)
        if detail is None:
            raise NotFound(f"No agent named {name!r} in this notebook.")
        summary = self._summary(detail.summary)
        summary["all_runs"] = [self._run_summary(r) for r in detail.runs]
        return summary

    def runs(self, notebook: str, name: str) -> list[dict[str, Any]]:
        """The runs of an agent, oldest first, each with its status."""
        return self.agent(notebook, name)["all_runs"]

    @staticmethod
    def _run_summary(summary: RunSummary) -> dict[str, Any]:
        out = _run_dict(summary.run)
        status, label = _status(summary)
        stats = summary.stats
        out.update(
            status=status,
            step=stats.last_step if stats else 0,
            steps=stats.steps if stats else 0,
            label=label,
            live=summary.live,
            checkpoints=stats.checkpoints if stats else 0,
            **_ledger(stats),
            size=stats.size if stats else 0,
            updated_at=stats.updated_at if stats else summary.run.created_at,
        )
        return out

    # -- runs -------------------------------------------------------------------------

    def run(self, run_id: str, *, messages: bool = False) -> tuple[dict[str, Any], str]:
        """A run's metadata and checkpoints, and the absolute notebook path it belongs to.

        With ``messages``, each checkpoint also has the messages it added, read
        from its JSON payload (no code runs to read it) with secrets redacted.
        """
        detail = self.last_good.run_detail(run_id)
        if detail is None:
            raise NotFound(f"No run {run_id!r}.")
        out = self._run_summary(detail.summary)
        out["checkpoints"] = [_checkpoint_dict(c) for c in detail.checkpoints]
        if messages:
            added = self.last_good.messages(detail)
            secrets = secrets_in_environment()
            for cp in out["checkpoints"]:
                cp["messages"] = redact(added.get(cp["step"], []), secrets)
        return out, detail.summary.run.notebook

    # -- changing -----------------------------------------------------------------------

    def delete_agent(self, notebook: str, name: str, *, keep_latest: bool = False) -> list[str]:
        """Delete an agent's runs (see :meth:`Store.delete_agent` for the rules)."""
        self.last_good.forget()
        return self.store.delete_agent(notebook, name, keep_latest=keep_latest)

    def move(self, old: str, new: str) -> int:
        """Record a notebook (or folder) rename."""
        self.last_good.forget()
        return self.store.move_notebook(old, new)


def _ledger(stats: RunStats | None) -> dict[str, Any]:
    """What a run spent (tokens, prompt and completion) and its plan's progress."""
    return {
        "tokens": stats.tokens if stats else 0,
        "prompt_tokens": stats.prompt_tokens if stats else 0,
        "completion_tokens": stats.completion_tokens if stats else 0,
        "plan": vocab.plan_progress(stats.plan) if stats and stats.plan else None,
    }
