"""Agents and runs as lists show them: the REST API, ``%agent list`` and ``jupyter agent list``.

One row builder for all three, so an agent reads the same everywhere: its
status and sentence (:func:`jupyter_agent.vocab.status_and_text`, budget figures and
stuck reasons included), its steps and its tokens. Rows come from the store's
summaries (:class:`~jupyter_agent.store.api.RunSummary`, metadata only), so
listing never deserializes anything, and a list of any length costs a fixed
number of store reads.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import Any

from .. import vocab
from ..core import history
from ..core.redaction import redact, secrets_in_environment
from ..errors import NotFound
from ..store.api import (
    CHECKPOINT_COLUMNS,
    AgentSummary,
    CheckpointRow,
    RunRow,
    RunStats,
    RunSummary,
    Store,
)

#: Characters of a prompt's first line that a row shows.
PROMPT_LIMIT = 120


# -- one run ------------------------------------------------------------------------------


def history_steps(store: Store, run: RunRow, below: int | None = None) -> int:
    """The steps of ``run``'s history (its parents' up to each fork point included).

    With ``below``, only those before the run's own checkpoint ``below``.
    """
    segments = history.segments(run, store.run, upto=None if below is None else below - 1)
    return vocab.history_steps(segments, store.model_steps([r for r, _ in segments]))


def run_status(
    store: Store, run: RunRow, live: set[str], last: CheckpointRow | None = None
) -> tuple[str, str, int]:
    """A run's status as lists show it (stalled included), its sentence, and its steps.

    ``last`` is the run's last checkpoint if the caller has it already (from
    :meth:`Store.latest_checkpoints`); metadata only, no payload is read.
    """
    if last is None:
        last = store.latest_checkpoints([run.run_id]).get(run.run_id)
    steps = history_steps(store, run)
    return (*status_from(run, last, live, steps), steps)


def status_from(
    run: RunRow, last: CheckpointRow | None, live: Collection[str], steps: int
) -> tuple[str, str]:
    """The status and sentence of ``run``, whose last checkpoint is ``last``."""
    if last is None:  # none yet: running, unless its owner is gone
        return vocab.status_and_text(
            None, run.run_id, live, steps=steps, info=None, at=run.created_at
        )
    return vocab.status_and_text(
        last.status, run.run_id, live, steps=steps, info=last.info, at=last.created_at
    )


def summary_status(summary: RunSummary) -> tuple[str, str]:
    """The status and sentence of a run the store summarized."""
    stats, run = summary.stats, summary.run
    live = {run.run_id} if summary.live else set()
    if stats is None:
        return vocab.status_and_text(None, run.run_id, live, steps=0, info=None, at=run.created_at)
    return vocab.status_and_text(
        stats.last_status,
        run.run_id,
        live,
        steps=stats.steps,
        info=stats.last_info,
        at=stats.updated_at,
    )


# -- rows ---------------------------------------------------------------------------------


def run_row(summary: RunSummary) -> dict[str, Any]:
    """A run as the REST API lists it: who, what, where it stands and what it spent."""
    run, stats = summary.run, summary.stats
    status, label = summary_status(summary)
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
        # A fork with an edited reply, tool output or model: {"edited", "from", "text"}.
        "what_if": _what_if(run),
        "created_at": run.created_at,
        "status": status,
        "step": stats.last_step if stats else 0,  # the last checkpoint's number
        "steps": stats.steps if stats else 0,
        "label": label,
        "live": summary.live,
        "checkpoints": stats.checkpoints if stats else 0,
        **_ledger(stats),
        "size": stats.size if stats else 0,
        "updated_at": stats.updated_at if stats else run.created_at,
    }


def agent_row(agent: AgentSummary) -> dict[str, Any]:
    """An agent as every list shows it: its latest run's row, named for the agent."""
    run = run_row(agent.latest)
    return {
        "name": agent.name,
        "cell_id": run["cell_id"],
        "parent_agent": run["parent_agent"],
        "what_if": run["what_if"],
        "named": not _is_derived(agent.name, run["cell_id"]),
        **{k: run[k] for k in ("status", "step", "steps", "label", "live", "run_id")},
        "runs": agent.runs,
        "model": run["model"],
        "prompt": run["prompt"],
        "started_at": run["created_at"],
        **{k: run[k] for k in ("updated_at", "checkpoints", *_LEDGER)},
        "timeline": [{"step": c.step, "kind": c.kind, "status": c.status} for c in agent.timeline],
    }


def checkpoint_row(cp: CheckpointRow) -> dict[str, Any]:
    """A checkpoint's metadata (its run is the row it is listed under)."""
    return {c: getattr(cp, c) for c in CHECKPOINT_COLUMNS if c != "run_id"}


#: What a run spent, as every list gives it (:func:`_ledger`).
LEDGER = (
    "tokens",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_hit_rate",
    "cost_usd",
)
_LEDGER = (*LEDGER, "plan")


def _ledger(stats: RunStats | None) -> dict[str, Any]:
    """What a run spent and its plan's progress: tokens (prompt and completion; of the
    prompt, the share a provider's cache served) and dollars, caching counted (None:
    the model has no price)."""
    prompt, cached = (stats.prompt_tokens, stats.cached_tokens) if stats else (0, 0)
    return {
        "tokens": stats.tokens if stats else 0,
        "prompt_tokens": prompt,
        "completion_tokens": stats.completion_tokens if stats else 0,
        "cached_tokens": cached,
        "cache_hit_rate": vocab.cache_hit_rate(prompt, cached),
        "cost_usd": None if stats is None or stats.cost_usd is None else round(stats.cost_usd, 6),
        "plan": vocab.plan_progress(stats.plan) if stats and stats.plan else None,
    }


def _what_if(run: RunRow) -> dict[str, Any] | None:
    what_if = run.info.get("what_if")
    return {**what_if, "text": vocab.what_if_text(what_if)} if what_if else None


def tagged(row: dict[str, Any]) -> str:
    """An agent's name as lists write it: with its "what if" tag if its latest run has one."""
    what_if = row.get("what_if")
    return row["name"] + (f" ({what_if['text']})" if what_if else "")


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")
    return vocab.clipped(line, PROMPT_LIMIT)


def _is_derived(agent: str, cell_id: str | None) -> bool:
    """Whether the agent's name was derived (cell id, prompt) rather than given with --name."""
    return (cell_id is not None and agent == vocab.cell_agent_name(cell_id)) or agent.startswith(
        "prompt-"
    )


# -- every agent of a store ---------------------------------------------------------------


def by_agent(runs: list[RunRow]) -> dict[tuple[str, str], list[RunRow]]:
    """Runs by (notebook, agent), oldest first; agents in the order of their first run."""
    out: dict[tuple[str, str], list[RunRow]] = {}
    for run in runs:
        out.setdefault((run.notebook, run.agent), []).append(run)
    return out


def store_agents(store: Store, notebook: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Every agent of the store (or of one notebook) with its notebook, as rows.

    Three reads however many agents there are (the runs, the latest runs' stats,
    the live runs), on one connection; liveness is sampled before and after, as
    the store's own summaries do, so a run that started or ended meanwhile is live.
    """
    if not store.exists():  # reading never creates a store
        return []
    with store.session():
        live = store.live_runs()
        agents = by_agent(store.runs(notebook=notebook))
        stats = store.run_stats([runs[-1].run_id for runs in agents.values()])
        live |= store.live_runs()
    rows = []
    for (nb, name), runs in agents.items():
        latest = RunSummary(runs[-1], stats.get(runs[-1].run_id), runs[-1].run_id in live)
        rows.append((nb, agent_row(AgentSummary(name, latest, len(runs), []))))
    return rows


# -- as text ------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns, the first row a header; control characters escaped."""
    rows = [[vocab.printable(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def job_status(job: dict[str, Any]) -> str:
    """A worker pool job's status as ``jobs`` and ``list`` print it: a failure with its reason."""
    return job["status"] + (f": {job['error']}" if job.get("error") else "")


def checkpoint_line(cp: CheckpointRow) -> str:
    """A checkpoint as ``show`` prints it (its summary may name any tool)."""
    return f"[{cp.step:>3}] {cp.kind:<12} {cp.status:<18} {vocab.printable(cp.summary)}"


def when(row: dict[str, Any]) -> str:
    """A row's last checkpoint time, local; "-" for a run without one."""
    if not row["checkpoints"]:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["updated_at"]))


def tokens(row: dict[str, Any]) -> str:
    """The tokens a row's run spent, as every list writes them: "12,345", and "(80%
    cached)" when a provider's cache served some of the prompt."""
    rate = row.get("cache_hit_rate")
    return f"{row['tokens']:,}" + (f" ({rate:.0%} cached)" if rate else "")


def cost(row: dict[str, Any]) -> str:
    """What a row's run cost, as every list writes it: "$0.0123", or "-" if unpriced."""
    value = row.get("cost_usd")
    return "-" if value is None else f"${value:,.4f}"


def agents_text(agents: list[dict[str, Any]], as_of: str | None) -> str:
    """``%agent list``: a notebook's agents, each child agent (``delegate``) under its parent."""
    if not agents:
        return "No agents in this notebook yet."
    by_name = {a["name"]: a for a in agents}
    rows = [("agent", "status", "steps", "plan", "runs", "tokens", "cost", "last checkpoint")]
    for name, depth in _as_tree({a["name"]: a["parent_agent"] for a in agents}):
        a = by_name[name]
        plan = a["plan"]["text"] if a["plan"] and a["plan"]["total"] else "-"
        indented = "  " * depth + tagged(a)  # a delegated agent under its parent
        spent = (tokens(a), cost(a))
        rows.append((indented, a["label"], str(a["steps"]), plan, str(a["runs"]), *spent, when(a)))
    text = table(rows)
    if as_of is not None:
        text += f"\n(as of {as_of}: another kernel is writing the store)"
    return text


def _as_tree(parents: dict[str, str | None]) -> list[tuple[str, int]]:
    """Agents in order, each child agent (``delegate``) right under its parent, one deeper."""
    children: dict[str | None, list[str]] = {}
    for agent, parent in parents.items():
        children.setdefault(parent if parent in parents else None, []).append(agent)
    out: list[tuple[str, int]] = []

    def visit(parent: str | None, depth: int) -> None:
        for agent in children.get(parent, []):
            if all(agent != seen for seen, _ in out):
                out.append((agent, depth))
                visit(agent, depth + 1)

    visit(None, 0)
    return out


# -- the reader of the REST API and %agent list --------------------------------------------


class Reader:
    """A store's agents and runs as rows: one store call per question.

    While a kernel holds a DuckDB store, the agents of a notebook are the last
    answer read, brought up to date from the journals
    (:mod:`jupyter_agent.store.duckdb.stale`), rather than a wait.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        # Imported with a store, not with this module: it reads the DuckDB backend's journals.
        from ..store.duckdb.stale import LastGood

        #: The last answer per notebook, shown while a kernel holds the store.
        self.last_good = LastGood(store)

    def exists(self) -> bool:
        """Whether any agent ever wrote to the store (reading must not create it)."""
        return self.store.exists()

    def agents(self, notebook: str) -> list[dict[str, Any]]:
        """Every agent of a notebook with the status of its latest run."""
        return self.agents_as_of(notebook)[0]

    def agents_as_of(self, notebook: str) -> tuple[list[dict[str, Any]], str | None]:
        """:meth:`agents` in the order their latest runs started, and ``HH:MM:SS`` if
        they are what the store held then (a kernel holds it)."""
        agents, as_of = self.agents_in_order(notebook)
        agents.sort(key=lambda a: a["started_at"])
        return agents, as_of

    def agents_in_order(self, notebook: str) -> tuple[list[dict[str, Any]], str | None]:
        """:meth:`agents_as_of`, agents in the order of their first run (as ``%agent list``)."""
        answer = self.last_good.agent_summaries(notebook)
        return [agent_row(a) for a in answer.agents], answer.stale_since()

    def agent(self, notebook: str, name: str) -> dict[str, Any]:
        """One agent: the row of its latest run and every run it has."""
        detail = self.last_good.agent_detail(notebook, name)
        if detail is None:
            raise NotFound(f"No agent named {name!r} in this notebook.")
        return {**agent_row(detail.summary), "all_runs": [run_row(r) for r in detail.runs]}

    def cells(self, notebook: str, name: str) -> dict[str, Any]:
        """An agent's python calls as code cells with their outputs (see :mod:`.cells`)."""
        from .cells import agent_cells

        return agent_cells(self.store, notebook, name, secrets_in_environment())

    def runs(self, notebook: str, name: str) -> list[dict[str, Any]]:
        """The runs of an agent, oldest first, each with its status."""
        return self.agent(notebook, name)["all_runs"]

    def run(self, run_id: str, *, messages: bool = False) -> tuple[dict[str, Any], str]:
        """A run's row and checkpoints, and the absolute notebook path it belongs to.

        With ``messages``, each checkpoint also has the messages it added, read
        from its JSON payload (no code runs to read it) with secrets redacted.
        """
        detail = self.last_good.run_detail(run_id)
        if detail is None:
            raise NotFound(f"No run {run_id!r}.")
        out = run_row(detail.summary)
        out["checkpoints"] = [checkpoint_row(c) for c in detail.checkpoints]
        if messages:
            added = self.last_good.messages(detail)
            secrets = secrets_in_environment()
            for cp in out["checkpoints"]:
                cp["messages"] = redact(added.get(cp["step"], []), secrets)
        return out, detail.summary.run.notebook

    def delete_agent(self, notebook: str, name: str, *, keep_latest: bool = False) -> list[str]:
        """Delete an agent's runs (see :meth:`Store.delete_agent` for the rules)."""
        self.last_good.forget()
        return self.store.delete_agent(notebook, name, keep_latest=keep_latest)

    def move(self, old: str, new: str) -> int:
        """Record a notebook (or folder) rename."""
        self.last_good.forget()
        return self.store.move_notebook(old, new)


def awaited_child(
    store: Store, run: RunRow, last: CheckpointRow | None = None
) -> tuple[RunRow, CheckpointRow] | None:
    """The delegated run (a child, or deeper) whose approval ``run`` is paused for, and its last checkpoint.

    A parent whose child pauses writes an ``interrupted`` checkpoint naming the
    child's run; the child's status now decides, since it may have been answered
    since. ``last``: ``run``'s last checkpoint, if the caller has it. None when
    ``run`` waits for no child's approval: reads nothing more for most runs.
    """
    seen = {run.run_id}  # a chain of delegations ends (its depth is capped); never loop
    while True:
        if last is None:
            last = store.latest_checkpoints([run.run_id]).get(run.run_id)
        child_id = last.info.get("child_run") if last and last.kind == "interrupted" else None
        child = store.run(child_id) if child_id and child_id not in seen else None
        if child is None:
            return None
        seen.add(child.run_id)
        last = store.latest_checkpoints([child.run_id]).get(child.run_id)
        if last is not None and last.status == vocab.Status.AWAITING_APPROVAL:
            return child, last
        run = child
