"""Answers to a waiting call given with no kernel running the agent (REST, ``jupyter agent``).

An agent paused for approval has nothing in memory that an answer must reach:
its question is its last checkpoint. So an answer given from the server or a
terminal is recorded exactly as a kernel records one, as the run's next
``approval`` checkpoint (its decision in the delta), by the store's owner,
under the agent's store lock, after checking that the run still waits on that
very call. Whatever runs the agent next (a re-run cell, ``jupyter agent
resume``) folds it into the run's state and executes the decided call without
asking again; its result's checkpoint consumes the decision, so it is never
applied twice. An answer for a call no longer pending is refused
(:class:`~jupyter_agent.errors.NotWaiting`) with the reason, and writes nothing.
"""

from __future__ import annotations

from typing import Any

from ..core.state import AWAITING_APPROVAL, RUNNING, Delta, RunState
from ..errors import NotFound, NotWaiting, UsageProblem
from ..store.api import CheckpointRow, RunRow, Store
from ..views.listing import awaited_child
from ..vocab import DECIDED, effective_status, printable, status_text
from .checkpoints import Collaborators, Recorder
from .runs import idle_state


class _Silent:
    """No one watches a decision written outside a kernel."""

    def text(self, chunk: str) -> None: ...
    def info(self, message: str) -> None: ...
    def notice(self, message: str) -> None: ...
    def checkpoint(self, run: RunRow, row: CheckpointRow, delta: Delta) -> None: ...


def decision_of(action: str, *, code: str | None = None, note: str | None = None) -> dict:
    """A decision as the loop records it; a :class:`UsageProblem` for a malformed one."""
    if action not in DECIDED:
        raise UsageProblem(f"Unknown decision {action!r}: use approve, edit or reject.")
    if action == "edit" and not (isinstance(code, str) and code.strip()):
        raise UsageProblem("An edit needs the call's new arguments (for python: its code).")
    decision: dict[str, Any] = {"action": action}
    if action == "edit":
        decision["code"] = code
    if note:
        decision["note"] = str(note)
    return decision


def record_decision(recorder: Recorder, decision: dict, call: dict, **info: Any) -> CheckpointRow:
    """The ``approval`` checkpoint that answers ``call``: the one way a decision is stored."""
    decision = {**decision, "call_id": call["id"]}
    return recorder.checkpoint(
        "approval",
        RUNNING,
        DECIDED[decision["action"]] + (f": {decision['note']}" if decision.get("note") else ""),
        Delta(decision=decision),
        info={"decision": decision, **info},
    )


def pending_call(state: RunState, run: RunRow, live: set[str]) -> dict:
    """The call ``run`` waits on for approval, or :class:`NotWaiting` saying what it does instead."""
    call = state.pending_tool_call()
    status = effective_status(state.status, run.run_id, live)
    if status != AWAITING_APPROVAL or call is None:
        now = status_text(status, state.model_calls)
        raise NotWaiting(
            f"Agent {printable(run.agent)!r} is not waiting for an approval: it is {now}."
        )
    return call


def decide(
    store: Store,
    notebook: str,
    agent: str,
    decision: dict,
    *,
    call_id: str | None = None,
    source: str = "store",
) -> dict[str, Any]:
    """Store ``decision`` for the call agent ``agent`` of ``notebook`` waits on; what was stored.

    An agent paused for a delegated agent's approval passes the answer on to
    it: ``name`` in the result says whose call was answered.

    ``call_id``: the call the answer is for, as the one asking saw it; another
    call pending by now refuses the answer. ``source`` is recorded with it
    (``rest``, ``cli``).
    """
    with store.session(), store.agent_lock(notebook, agent):
        runs = store.runs(notebook=notebook, agent=agent)
        if not runs:
            raise NotFound(f"No agent {printable(agent)!r} in {notebook}.")
        run = runs[-1]
        state, live = idle_state(store, run, "answering it here")
        waits_on = None if state.status == AWAITING_APPROVAL else awaited_child(store, run)
        if waits_on is None:
            call = pending_call(state, run, live)
            if call_id is not None and call_id != call["id"]:
                raise NotWaiting(
                    f"The call {printable(call_id)!r} is no longer waiting for approval: agent "
                    f"{printable(agent)!r} now waits on call {call['id']!r} "
                    f"(checkpoint {state.step})."
                )
            recorder = Recorder(run, state, Collaborators(store, None, _Silent()), [])
            writer = recorder.writer = store.writer(run.run_id)
            try:
                row = record_decision(recorder, decision, call, answered=state.step, source=source)
            finally:
                writer.close()
    if waits_on is not None:
        # Paused for a delegated agent's approval: the answer is that agent's, and
        # the parent's next run resumes it (see kernel.delegation).
        child = waits_on[0]
        return decide(store, child.notebook, child.agent, decision, call_id=call_id, source=source)
    return {
        "name": run.agent,
        "run_id": run.run_id,
        "step": row.step,
        "answered": row.info["answered"],
        "call_id": call["id"],
        "action": decision["action"],
    }
