"""The commands that read and delete: ``list``, ``show``, ``delete``, ``prune``, ``store info``.

They read checkpoint metadata only and never unpickle anything. Agents and runs
are worded by :mod:`jupyter_agent.views.listing`, as in ``%agent list`` and the
REST API, so a status reads the same in a terminal as in JupyterLab.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import Conflict, NotFound
from ..loop.decisions import decide, decision_of
from ..store import queue
from ..store.api import CHECKPOINT_COLUMNS, CheckpointRow, RunRow, RunSummary, Store
from ..views import listing
from ..views.points import agent_runs
from ..vocab import DECIDED, printable, size_text


class Refused(Exception):
    """Not found, or not allowed: exit code 1 with this message."""


class Usage(Refused):
    """Bad input (an unknown notebook or agent, options that cannot go together): exit code 2."""


class Partial(Exception):
    """Done in part: print the result, exit 1."""

    def __init__(self, result: Any) -> None:
        self.result = result


# -- finding agents -----------------------------------------------------------------------


def notebook_arg(path: str | None) -> str | None:
    """A notebook given on the command line, as kernels store it (absolute)."""
    return os.path.abspath(os.path.expanduser(path)) if path else None


def agents_of(store: Store, notebook: str | None) -> dict[tuple[str, str], list[RunRow]]:
    """Runs by (notebook, agent), oldest first (reading must not create a store)."""
    return listing.by_agent(store.runs(notebook=notebook) if store.exists() else [])


def find(store: Store, name: str, notebook: str | None) -> tuple[str, str, list[RunRow]]:
    """The agent called ``name`` (or a unique prefix), in ``notebook`` or in any
    (:func:`~jupyter_agent.views.points.agent_runs`): its notebook, name and runs."""
    runs = agent_runs(store.runs(notebook=notebook) if store.exists() else [], name, notebook)
    return runs[-1].notebook, runs[-1].agent, runs


def latest_row(store: Store, run: RunRow) -> dict[str, Any]:
    """The listing row of one run: its status, sentence, steps and tokens."""
    with store.session():
        stats = store.run_stats([run.run_id]).get(run.run_id)
        live = run.run_id in store.live_runs()
    return listing.run_row(RunSummary(run, stats, live))


def checkpoint_dict(cp: CheckpointRow) -> dict[str, Any]:
    """A checkpoint's metadata; its sequence number is called ``checkpoint``."""
    return {
        ("checkpoint" if c == "step" else c): getattr(cp, c)
        for c in CHECKPOINT_COLUMNS
        if c != "run_id"
    }


# -- commands -----------------------------------------------------------------------------


def cmd_list(store: Store, args: argparse.Namespace) -> Any:
    """The worker pool's unfinished jobs, then the agents: one listing, as a table or JSON."""
    notebook = notebook_arg(args.notebook)
    jobs = queue.unfinished_jobs(store, notebook)
    agents = listing.store_agents(store, notebook)
    if args.json:
        return {"jobs": jobs, "agents": [_listed(nb, row) for nb, row in agents]}
    if jobs:
        queued = [("job", "notebook", "agent", "status")]
        for j in jobs:
            status = listing.job_status(j)
            queued.append((j["job"], j["notebook"] or "-", j["agent"] or "all", status))
        print(listing.table(queued) + "\n")
    if not agents:
        print("No agents" + (f" in {args.notebook}." if args.notebook else " in the store."))
        return None
    rows = [("notebook", "agent", "status", "steps", "runs", "tokens", "cost", "last checkpoint")]
    for nb, a in agents:
        steps, runs, spent = str(a["steps"]), str(a["runs"]), (listing.tokens(a), listing.cost(a))
        rows.append((nb, listing.tagged(a), a["label"], steps, runs, *spent, listing.when(a)))
    print(listing.table(rows))
    return None


def _listed(notebook: str, row: dict[str, Any]) -> dict[str, Any]:
    """An agent as ``list --json`` gives it."""
    checkpointed = row["checkpoints"] > 0
    return {
        "notebook": notebook,
        "agent": row["name"],
        "status": row["status"],
        "label": row["label"],
        "steps": row["steps"],
        "runs": row["runs"],
        "run_id": row["run_id"],
        "what_if": row["what_if"],
        "last_checkpoint": row["step"] if checkpointed else None,
        "last_checkpoint_at": row["updated_at"] if checkpointed else None,
        **{k: row[k] for k in listing.LEDGER},
    }


def cmd_show(store: Store, args: argparse.Namespace) -> Any:
    notebook, agent, runs = find(store, args.name, notebook_arg(args.notebook))
    run = runs[-1]
    checkpoints = store.checkpoints(run.run_id)
    row = latest_row(store, run)
    if args.json:
        return {
            "notebook": notebook,
            "agent": agent,
            "run_id": run.run_id,
            "model": run.model,
            "status": row["status"],
            "steps": row["steps"],
            "what_if": row["what_if"],
            "checkpoints": [checkpoint_dict(cp) for cp in checkpoints],
        }
    print(f"Agent {printable(agent)} · {printable(notebook)}")
    print(
        f"Run {run.run_id} · model {run.model} · {row['label']} · "
        f"{len(checkpoints)} checkpoints · {row['steps']} steps"
        + (f" · {row['what_if']['text']}" if row["what_if"] else "")
    )
    for cp in checkpoints:
        print(listing.checkpoint_line(cp))
    return None


def _confirm(args: argparse.Namespace, question: str) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise Refused(f"{question} Refused without a terminal to ask: add --yes.")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise Refused("Nothing was deleted.")


def _delete(store: Store, notebook: str, agent: str, *, keep_latest: bool) -> list[str]:
    """Delete an agent's runs (all, or all but the latest and its ancestors), as the server does."""
    try:
        return store.delete_agent(notebook, agent, keep_latest=keep_latest)
    except (Conflict, NotFound) as exc:
        raise Refused(str(exc)) from None


def cmd_delete(store: Store, args: argparse.Namespace) -> Any:
    notebook, agent, runs = find(store, args.name, notebook_arg(args.notebook))
    _confirm(
        args,
        f"Delete agent {printable(agent)} of {printable(notebook)} and its {len(runs)} run(s)?",
    )
    deleted = _delete(store, notebook, agent, keep_latest=False)
    if args.json:
        return {"notebook": notebook, "agent": agent, "deleted_runs": deleted}
    print(f"Deleted agent {printable(agent)} of {printable(notebook)} ({len(deleted)} run(s)).")
    return None


def cmd_prune(store: Store, args: argparse.Namespace) -> Any:
    agents = agents_of(store, notebook_arg(args.notebook))
    prunable = {k: rs for k, rs in agents.items() if len(rs) > 1}
    if prunable:
        older = sum(len(rs) - 1 for rs in prunable.values())
        _confirm(args, f"Delete up to {older} older run(s) of {len(prunable)} agent(s)?")
    deleted: dict[str, list[str]] = {}
    refused: list[str] = []
    for notebook, agent in prunable:
        try:
            gone = _delete(store, notebook, agent, keep_latest=True)
        except Refused as exc:
            refused.append(str(exc))
            continue
        if gone:
            deleted[f"{notebook}::{agent}"] = gone
    total = sum(len(v) for v in deleted.values())
    for message in refused:
        print(f"Skipped: {message}", file=sys.stderr)
    if args.json:
        result: Any = {"deleted_runs": total, "agents": deleted, "refused": refused}
    else:
        print(f"Deleted {total} older run(s) of {len(deleted)} agent(s); kept each latest run.")
        result = None
    if refused:
        raise Partial(result)
    return result


def cmd_decide(store: Store, args: argparse.Namespace) -> Any:
    """``approve`` / ``reject``: answer the call an agent waits on, with no kernel running it.

    Stored as the run's next checkpoint (:mod:`jupyter_agent.loop.decisions`) and
    applied when the agent next runs; refused (exit 1) when it waits on no call.
    """
    edit = getattr(args, "edit", None)
    action = "reject" if args.command == "reject" else "edit" if edit is not None else "approve"
    decision = decision_of(action, code=edit, note=args.note)
    notebook, agent, _ = find(store, args.name, notebook_arg(args.notebook))
    stored = decide(store, notebook, agent, decision, call_id=args.call, source="cli")
    if not args.json:
        print(
            f"{DECIDED[action].capitalize()} the call {stored['call_id']} of agent "
            f"{printable(stored['name'])} (checkpoint {stored['step']}): it runs when the agent next "
            "runs (re-run its cell, or `jupyter agent resume` the notebook)."
        )
    return {"notebook": notebook, "name": agent, **stored}


def cmd_store_info(store: Store, args: argparse.Namespace) -> Any:
    about = store.info()
    sizes = store.sizes()
    exists = about.exists
    info: dict[str, Any] = {
        "path": about.location,
        "exists": exists,
        "schema_version": about.schema_version,
        "reads_schema_version": about.reads_version,
        "sizes": sizes,
        "size_duckdb": sizes.get("duckdb", 0),
        "size_journals": sizes.get("journals", 0),
        "runs": about.runs,
        "checkpoints": about.checkpoints,
        "live_runs": len(store.live_runs()) if exists else 0,
    }
    if args.json:
        return info
    print(f"store          {info['path']}" + ("" if exists else " (does not exist yet)"))
    print(
        f"schema version {info['schema_version'] or '-'} (this version reads {info['reads_schema_version']})"
    )
    parts = (f"{_PARTS.get(part, part)} {size_text(n)}" for part, n in sizes.items())
    print(f"size           {', '.join(parts) or '-'}")
    print(f"runs           {info['runs']} ({info['live_runs']} running)")
    print(f"checkpoints    {info['checkpoints']}")
    return None


#: How ``store info`` names the parts a backend's :meth:`~Store.sizes` reports.
_PARTS = {
    "duckdb": "DuckDB",
    "journals": "journals",
    "blobs": "value files",
    "postgres": "PostgreSQL",
}
