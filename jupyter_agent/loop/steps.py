"""The two kinds of step: ask the model, and run one tool call.

A model step checkpoints only a complete reply (the client returns nothing
else), and a reply that calls tools is written without its own sync: the
first call's checkpoint follows before anything acts on it, and its sync makes
both durable.

A tool step checks the call, asks for approval where the policy or the call's
history says so (a call that was in flight when the agent stopped and may
have had its effect), then writes the call's start and its result as two
checkpoints. Code in the kernel runs in the namespace's turn: other agents'
code waits, and what they changed meanwhile is not this run's to save.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from ..config import RunPolicy
from ..core import plan as plans
from ..core.redaction import redact
from ..core.state import AWAITING_APPROVAL, DONE, RUNNING, Delta
from ..errors import ContextOverflow, MalformedCall
from ..model.base import ModelClient
from ..namespace.lock import NamespaceLock
from ..tools.base import Tool, ToolResult, unknown_tool
from ..tools.toolbox import Toolbox
from .checkpoints import Recorder, Stop, one_line
from .compaction import Window

#: Characters of a reply's reasoning kept in its checkpoint (shown in the timeline).
REASONING_KEPT = 20_000


@dataclass
class ModelStep:
    """One model call, checkpointed once its reply is complete."""

    recorder: Recorder
    window: Window
    client: ModelClient

    def __call__(self) -> bool:
        """Ask the model; False when the request was refused and compacted instead."""
        recorder, window = self.recorder, self.window
        events = recorder.events
        view = window.view()
        estimate = window.view_tokens(window.ratio)
        window.check_budget(estimate)
        try:
            reply = self.client.complete(
                view,
                window.tools,
                on_text=events.text,
                on_retry=lambda msg: events.notice(f"model: {msg}"),
                on_sent=recorder.sending,
            )
        except ContextOverflow as exc:
            window.overflowed(exc, estimate)
            return False
        window.learn(reply.usage)
        tokens, counts = window.counted(reply, estimate)
        message = redact(reply.message(), recorder.secrets)
        done = not reply.tool_calls
        state = recorder.state
        if done and window.plan_mode and state.plan:
            done = not plans.has_next(state.plan, state.compaction)
        if not reply.tool_calls:
            summary = reply.content
        else:
            names = ", ".join(c["function"]["name"] or "?" for c in reply.tool_calls)
            summary = (reply.content + " → " if reply.content.strip() else "→ ") + names
        info: dict[str, Any] = {**counts, "tool_calls": len(reply.tool_calls)}
        if reply.attempts > 1:  # what it took: visible in the timeline entry
            info["attempts"], info["retries"] = reply.attempts, reply.retries
        if reply.reasoning:
            info["reasoning"] = redact(reply.reasoning[:REASONING_KEPT], recorder.secrets)
            events.info("(reasoning) " + one_line(info["reasoning"], 200))
        delta = Delta(messages=[message])
        if done and window.plan_mode and plans.working_on(state.compaction) is not None:
            delta.plan = info["plan"] = plans.ended(state.plan, state.compaction)  # last one
        # A reply that calls tools is followed by the first call's checkpoint before
        # anything acts on it: that one's sync makes both durable.
        recorder.checkpoint(
            "model",
            DONE if done else RUNNING,
            summary,
            delta,
            tokens=tokens,
            info=info,
            durable=not reply.tool_calls,
        )
        if not reply.tool_calls and not done:
            title = plans.item_title(state.plan, state.compaction)
            window.next_item(f"{title}: {one_line(reply.content, 300)}")
        return True


@dataclass
class ToolStep:
    """A call of a tool of the run's toolbox: approval if needed, then its start and result.

    A call in flight when the agent stopped (started, no result) runs again
    if its tool is idempotent (``python`` is, at-least-once); otherwise it may
    have had its effect, so it waits for the user's approval first.
    """

    recorder: Recorder
    toolbox: Toolbox
    policy: RunPolicy
    client: ModelClient
    #: The kernel's namespace lock (None: code runs without waiting for other agents).
    lock: NamespaceLock | None

    def __call__(self, call: dict) -> None:
        recorder = self.recorder
        state, events = recorder.state, recorder.events
        call_id = call["id"]
        fn = call.get("function") or {}
        name = fn.get("name")
        recorder.tracker.begin(recorder.shell.user_ns, state.vars)
        tool = self.toolbox.get(name)
        try:
            if tool is None:
                raise MalformedCall(unknown_tool(name, self.toolbox.names()))
            args = tool.parse(fn.get("arguments") or "")
        except MalformedCall as exc:
            recorder.tool_result(call_id, ToolResult(f"Error: {exc}", error=True, executed=False))
            return
        decision = state.decisions.get(call_id)
        in_flight = state.started_call == call_id
        uncertain = in_flight and not tool.idempotent  # it may have run: ask
        if decision is None and (uncertain or tool.approve or self._needs_approval(call)):
            summary = "awaiting approval: " + (
                f"{name} was in flight when the agent stopped and may have run; "
                "approve to run it again"
                if uncertain
                else f"{name} " + one_line(tool.show(args), 80)
            )
            if uncertain:
                events.notice(
                    f"this {name} call was in flight when the agent stopped and may have "
                    "run; it runs again only if you approve it "
                    f"(%agent approve {recorder.run.agent}, or reject it)"
                )
            recorder.checkpoint(
                "approval",
                AWAITING_APPROVAL,
                summary,
                info={
                    "call_id": call_id,
                    "tool": name,
                    "code": tool.show(args),
                    "in_flight": in_flight,
                },
            )
            raise Stop()
        if decision and decision["action"] == "reject":
            note = decision.get("note") or "no reason given"
            recorder.tool_result(
                call_id,
                ToolResult(
                    f"The user rejected this call and it was not run. Note: {note}",
                    error=True,
                    executed=False,
                ),
            )
            return
        if decision and decision["action"] == "edit":
            try:
                args = tool.edited(decision["code"])
            except MalformedCall as exc:
                recorder.tool_result(
                    call_id,
                    ToolResult(
                        f"Error: the user's edit of this call: {exc}", error=True, executed=False
                    ),
                )
                return
        with self._namespace_turn(tool) as others_ran:
            if others_ran:  # what another agent's code changed is not this run's to save
                recorder.tracker.rebase(recorder.shell.user_ns)
            if in_flight:
                events.notice(
                    f"checkpoint {state.step}: this {name} call was running when the agent "
                    "stopped; running it again"
                )
            if tool.in_kernel:  # what the call writes beside the notebook is its own
                recorder.files_before()
            shown = tool.show(args)
            # The start of a call that may run twice (python) is made durable with its
            # result: lost only with the machine, it is run again, as it would be anyway.
            recorder.checkpoint(
                "tool_call",
                RUNNING,
                f"{name}: {shown}",
                Delta(tool_call_id=call_id),
                info={"code": shown} if name == "python" else {"tool": name, "code": shown},
                durable=not tool.idempotent,
            )
            # An interrupt here propagates: the call stays in flight (see execute).
            recorder.tool_result(call_id, tool.run(args), in_kernel=tool.in_kernel)

    def _namespace_turn(self, tool: Tool) -> contextlib.AbstractContextManager:
        """Code in the kernel waits while another agent's code runs (the runtime's lock)."""
        if self.lock is None or not tool.in_kernel:
            return contextlib.nullcontext()
        events = self.recorder.events
        return self.lock.turn(self.recorder.run.agent, events.info, self.client.cancel, tool.name)

    def _needs_approval(self, call: dict) -> bool:  # update_plan never asks
        tools = self.policy.approve_tools
        return self.policy.approve and (not tools or call["function"]["name"] in tools)
