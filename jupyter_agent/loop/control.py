"""The control tools: calls the loop answers itself instead of a toolbox tool.

* ``update_plan`` sets the run's plan; no side effects, so no start
  checkpoint and no approval.
* ``delegate`` runs a child agent (a durable run of its own); its final
  answer is the call's result, written once. The start is checkpointed, so
  after a stop the same child resumes; a child that pauses pauses this run
  too, saying why.
* ``read_agent`` reads another agent's run from the store; no start
  checkpoint and no approval.

``delegate`` and ``read_agent`` are offered only where children can run (the
kernel's runtime gives the execution a :class:`Children`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.plan import parse_items, progress
from ..core.redaction import redact
from ..core.state import BUDGET, DONE, ERROR, INTERRUPTED, LIMIT, RUNNING, STUCK, Delta
from ..errors import DelegateError, PlanError, ReadAgentError
from ..store.api import Store
from ..tools.base import ToolResult
from ..tools.delegate import Children, parse_delegate
from ..tools.read_agent import read_agent
from .checkpoints import Recorder, Stop, one_line
from .runs import load_state


@dataclass
class PlanStep:
    """``update_plan``: the plan as the model wrote it, checked, as the call's result."""

    recorder: Recorder
    #: The model's context window now, in tokens: a plan must leave it to the work.
    window: Callable[[], int]

    def __call__(self, call: dict) -> None:
        try:
            arguments = (call.get("function") or {}).get("arguments") or ""
            plan = parse_items(arguments, self.window())
        except PlanError as exc:
            self.recorder.tool_result(
                call["id"], ToolResult(f"Error: {exc}", error=True, executed=False)
            )
            return
        done = progress(plan)
        message = {
            "role": "tool",
            "tool_call_id": call["id"],
            "content": f"Plan updated: {done} done.",
        }
        self.recorder.checkpoint(
            "tool_result",
            RUNNING,
            f"plan {done}",
            Delta(messages=[message], plan=plan, tool_call_id=call["id"]),
            info={"plan": plan, "progress": done},
        )


@dataclass
class ReadAgentStep:
    """``read_agent``: another agent's run as text; reads the store only."""

    recorder: Recorder
    store: Store

    def __call__(self, call: dict) -> None:
        recorder = self.recorder
        fn = call.get("function") or {}
        try:
            output, error = (
                read_agent(self.store, recorder.run, fn.get("arguments") or "", load_state),
                False,
            )
        except ReadAgentError as exc:
            output, error = f"Error: {exc}", True
        output = redact(output, recorder.secrets)
        message = {"role": "tool", "tool_call_id": call["id"], "content": output}
        recorder.checkpoint(
            "tool_result",
            RUNNING,
            ("error: " if error else "") + f"read_agent: {one_line(output, 80)}",
            Delta(messages=[message], tool_call_id=call["id"]),
            info={"tool": "read_agent", "error": error},
        )


def delegate_started(recorder: Recorder, call_id: str, agent: str, task: str, model: str) -> None:
    """Checkpoint a ``delegate`` call's start, naming the child: a stop resumes that child,
    and a replay (:class:`jupyter_agent.loop.replay.ReplayedDelegate`) compares the call by it."""
    recorder.checkpoint(
        "tool_call",
        RUNNING,
        f"delegate to {agent}: {task}",
        Delta(tool_call_id=call_id),
        info={"delegate": {"agent": agent, "task": task, "model": model, "call_id": call_id}},
    )


@dataclass
class DelegateStep:
    """``delegate``: run a child agent; its final answer is this call's result, once."""

    recorder: Recorder
    children: Children
    #: The execution the children see (:class:`Children` reads its run, state,
    #: budget, settings, client and collaborators).
    parent: Any

    def __call__(self, call: dict) -> None:
        recorder, children = self.recorder, self.children
        state, events = recorder.state, recorder.events
        call_id = call["id"]
        recorder.tracker.begin(recorder.shell.user_ns, state.vars)
        try:
            agent, task, model = parse_delegate((call.get("function") or {}).get("arguments") or "")
            if state.started_call != call_id and (problem := children.refuse(self.parent, agent)):
                raise DelegateError(problem)
        except DelegateError as exc:
            recorder.tool_result(call_id, ToolResult(f"Error: {exc}", error=True, executed=False))
            return
        if state.started_call == call_id:
            events.notice(f"resuming child agent {agent}, which was working when this stopped")
        else:
            delegate_started(recorder, call_id, agent, task, model)
        child = children.run(self.parent, call_id, agent, task, model)
        info: dict[str, Any] = {
            "child": child.agent,
            "child_run": child.run_id,
            "child_status": child.status,
        }
        if child.status == DONE:
            # The child's tokens join the parent's ledger once, total and parts alike.
            info["usage"] = child.usage
            if child.cost_usd is not None:
                info["cost_usd"] = child.cost_usd
            recorder.tool_result(call_id, ToolResult(child.answer), tokens=child.tokens, info=info)
            return
        kind = child.status if child.status in (ERROR, LIMIT, BUDGET, STUCK) else "interrupted"
        status = kind if kind != "interrupted" else INTERRUPTED
        why = f"waiting for child agent {agent}: {child.text}"
        recorder.checkpoint(kind, status, why, info={**info, "error": why, "reason": why})
        raise Stop()
