"""Children of ``delegate`` calls, run as durable runs of their own in the parent's thread.

A child runs in the same kernel and namespace as its parent, claimed in the
kernel's runtime like any agent, with the parent's settings (no plan; what is
left of the parent's budget) and collaborators (its cancel event, so pausing
the parent pauses the child). See :mod:`jupyter_agent.tools.delegate` for what
the parent records, and :mod:`jupyter_agent.loop.control` for its step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

from ..core.budget import Budget
from ..errors import IdentityError
from ..loop.runs import chain
from ..store.api import Store
from ..tools.delegate import MAX_CHILDREN, MAX_DEPTH, Delegated
from ..views.listing import run_status
from ..views.render import TextEvents
from . import runner
from .identity import AgentIdentity, validate_name

Key = tuple[str, str]  # (notebook, agent)


class Claims(Protocol):
    """What delegation needs of the kernel's runtime (:class:`~.runtime.AgentRuntime`)."""

    def claimed(self, key: Key) -> contextlib.AbstractContextManager: ...
    def events(self, key: Key, text: TextEvents, *, store: Store | None = None) -> Any: ...
    def refresh(self, key: Key) -> None: ...


class Delegation:
    """Runs the children of ``delegate`` calls (the :class:`Children` of an execution)."""

    def __init__(self, runtime: Claims, decisions: Mapping[str, dict] | None = None) -> None:
        self.runtime = runtime
        #: Approval decisions for child runs, by run id; each is given once, as the run resumes.
        self.decisions = dict(decisions or {})

    def refuse(self, parent: Any, agent: str) -> str | None:
        """Why ``parent`` may not start a child ``agent`` now, or None.

        A child's name is its own in the notebook: a name whose runs belong to a
        top-level agent, or to another agent's children, is refused.
        """
        try:
            validate_name(agent)
        except IdentityError as exc:
            return str(exc)
        lineage = [parent.run.agent, *(parent.run.info.get("lineage") or [])]
        if agent in lineage:
            return f"agent {agent!r} is this agent or one of its parents; choose another name"
        others = {
            r.info.get("parent_agent")
            for r in parent.store.runs(notebook=parent.run.notebook, agent=agent)
        } - {parent.run.agent}
        if others:
            # Its runs would become that agent's latest run: its cell would run again.
            return (
                f"agent {agent!r} is the name of another agent in this notebook; choose a "
                "name of its own for the child"
            )
        depth = int(parent.run.info.get("depth") or 0) + 1
        if depth > MAX_DEPTH:
            return (
                f"delegation is limited to {MAX_DEPTH} levels of child agents and this agent "
                "is at the deepest; do the work yourself"
            )
        if _children_started(parent) >= MAX_CHILDREN:
            return f"an agent may delegate at most {MAX_CHILDREN} subtasks; do the rest yourself"
        return None

    def run(self, parent: Any, call_id: str, agent: str, task: str, model: str) -> Delegated:
        """Start, resume or restore the child of ``call_id``, in the parent's thread."""
        store, notebook = parent.store, parent.run.notebook
        policy = replace(parent.settings.policy, plan=False, budget=_remaining(parent))
        settings = replace(parent.settings, policy=policy)
        mine = [
            r
            for r in store.runs(notebook=notebook, agent=agent)
            if r.info.get("parent_run") == parent.run.run_id
            and r.info.get("parent_call") == call_id
        ]
        key = (notebook, agent)
        events = self.runtime.events(key, TextEvents(label=agent), store=store)
        collaborators = replace(parent.collaborators, events=events, cancel=parent.client.cancel)
        with self.runtime.claimed(key):
            if mine:
                decision = self.decisions.pop(mine[-1].run_id, None)
                request = runner.CellRequest.continuing(mine[-1], model=model, decision=decision)
                outcome = runner.resume_run(mine[-1], request, collaborators, settings)
            else:
                events.info(f"↳ delegating to child agent {agent}")
                request = runner.CellRequest(
                    AgentIdentity(notebook, agent, None, "delegate"),
                    task,
                    model=model or parent.client.endpoint.model,
                    restart=True,
                    info={
                        "parent_agent": parent.run.agent,
                        "parent_run": parent.run.run_id,
                        "parent_call": call_id,
                        "depth": int(parent.run.info.get("depth") or 0) + 1,
                        "lineage": [parent.run.agent, *(parent.run.info.get("lineage") or [])],
                    },
                )
                outcome = runner.run_cell(request, collaborators, settings)
        self.runtime.refresh(key)
        state, run = outcome.state, outcome.run
        last = store.latest_checkpoints([run.run_id]).get(run.run_id)
        status, text, _ = run_status(store, run, set(), last)
        if last is not None and "child_run" in last.info and last.info.get("reason"):
            text = last.info["reason"]  # paused for its own child: say which, and why
        usage = {
            "prompt_tokens": state.prompt_tokens,
            "completion_tokens": state.completion_tokens,
            "cached_tokens": state.cached_tokens,
            "cache_write_tokens": state.cache_write_tokens,
        }
        answer = state.final_answer() or ""
        return Delegated(
            agent, status, text, answer, state.tokens, run.run_id, usage, state.cost_usd
        )


def _children_started(parent: Any) -> int:
    """Children the parent's history started: its ``delegate`` calls with a start checkpoint.

    A refused call has none, so it takes no child's place; a fork's history
    counts its parent's children up to the fork point. Row metadata only.
    """
    started = set()
    with parent.store.session():
        for run_id, upto in chain(parent.store, parent.run):
            for row in parent.store.checkpoints(run_id, kind="tool_call"):
                call = (row.info.get("delegate") or {}).get("call_id")
                if call is not None and (upto is None or row.step <= upto):
                    started.add(call)
    return len(started)


def _remaining(parent: Any) -> Budget | None:
    """What is left of the parent's budget: its children spend from it."""
    budget = parent.budget
    if budget is None or budget.tokens is None:
        return budget
    return Budget(tokens=max(budget.tokens - parent.state.tokens, 0), cost=budget.cost)
