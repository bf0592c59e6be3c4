"""The durable agent loop: one execution of a run, from its state now until it stops.

A run alternates model calls and tool calls. Every step boundary is a
checkpoint — a model reply, a tool call starting, a tool result, an approval
request or decision, a fork, an interruption — written before the next step
begins (:mod:`.checkpoints`).
So a completed step is never executed again: resuming folds the checkpoints
back into a :class:`~jupyter_agent.core.state.RunState` (:mod:`.runs`) and
continues from the first step that has no checkpoint.

What happens to the step that was in flight when the kernel died:

* a model call is simply issued again (it has no side effects);
* a ``python`` call whose start was checkpointed but whose result was not is
  run again, after saying so in the output (at-least-once, like a Temporal
  activity); with approvals on, it waits for approval again first;
* so is a call of a user or MCP tool that is idempotent (``@tool(idempotent=True)``,
  an MCP ``idempotentHint``); any other tool's call waits for the user's
  approval, since it may have run (see docs/tools.md).

One exception to "written before the next step begins": a ``tool_result``
whose large changed values are still being serialized is written while the
model is asked for the next step, before that reply is checkpointed and
before any code runs again (see :meth:`.checkpoints.Recorder.checkpoint`).
Until it is, its call is in flight as above.

The driver here decides what comes next; the steps are objects of their own:
the model step (:mod:`.steps`), compaction, budget and plan items
(:mod:`.compaction`), and the tool calls, dispatched by name to a handler
built once per execution: the control tools (:mod:`.control`), else the
run's toolbox (:class:`.steps.ToolStep`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from .. import vocab
from ..config import Settings
from ..core import context
from ..core.budget import Budget, price_of
from ..core.redaction import redact
from ..core.state import (
    AWAITING_APPROVAL,
    DONE,
    ERROR,
    INTERRUPTED,
    LIMIT,
    RUNNING,
    STUCK,
    Delta,
    RunState,
)
from ..core.state import FINGERPRINT as KEY
from ..core.stuck import stuck_reason, unstuck_note
from ..errors import CallTimedOut, Cancelled, ConfigError, ModelError, NotWaiting, StoreError
from ..model.base import ModelClient
from ..namespace.files import Folder, Watch
from ..store.api import RunRow
from ..tools import user as user_tools
from ..tools.delegate import DELEGATE_TOOL
from ..tools.python import TOOLS, redacting
from ..tools.read_agent import READ_AGENT_TOOL
from ..tools.toolbox import Toolbox, check_approve
from .checkpoints import Collaborators, Recorder, Stop
from .compaction import Window
from .control import DelegateStep, PlanStep, ReadAgentStep
from .decisions import record_decision
from .fingerprint import changes, fingerprint, since_last
from .runs import execution_settings, save_latest
from .steps import ModelStep, ToolStep

SYSTEM_PROMPT = (
    "You are a careful data assistant working inside a Jupyter notebook. Use the `python` "
    "tool to run code in the notebook's kernel: variables you create persist and are shared "
    "with the user. Work step by step, check results, and fix errors you see. When the task "
    "is done, reply with a short final answer and no tool call."
)
FORK_SKIPPED = "Not run: the user gave a new instruction at this point instead."
#: Checkpoints a running execution follows with a model call (or a summary's).
ASKS_MODEL_NEXT = ("start", "resume", "fork", "tool_result", "compaction")

#: Answers one kind of tool call, checkpointing its result (or raising :class:`Stop`).
Handler = Callable[[dict], None]


class Execution:
    """Drives one run from its current state until it finishes, pauses or fails."""

    #: Calls of the run's toolbox tools (made once the tools are open).
    tool_step: ToolStep

    def __init__(
        self,
        run: RunRow,
        state: RunState,
        client: ModelClient,
        collaborators: Collaborators,
        settings: Settings,
    ) -> None:
        self.run, self.state, self.client = run, state, client
        self.collaborators, self.settings = collaborators, settings
        self.store, self.shell = collaborators.store, collaborators.shell
        self.stop_asked = collaborators.stop_asked or _never
        policy = settings.policy
        self.recorder = Recorder(run, state, collaborators, settings.secrets)
        if settings.files.enabled:
            folder = Folder.of(run.notebook, self.store.location, settings.files)
            self.recorder.files = Watch(folder, state.files)
        model = client.endpoint.model
        size = policy.context_window or self.store.learnt_window(model)
        plan_mode = bool(run.info.get("plan")) or (policy.plan and state.step < 0)
        self.window = Window(
            self.recorder, client, self.store, size or context.default_window(model), plan_mode
        )
        self.window.price = price_of(model, dict(policy.prices))
        self.budget = self.window.budget = policy.budget or _budget_of(state.budget)
        if self.budget and self.budget.cost is not None and self.window.price is None:
            raise ConfigError(
                f"--budget {self.budget.text()} needs a price for model {model!r}, and none is "
                "known. Give one in dollars per million tokens, e.g. %config AgentMagics.prices "
                f"= {{{model!r}: [0.15, 0.60]}}, or give the budget in tokens (--budget 200k)."
            )
        children = collaborators.children
        self._extra_tools = [DELEGATE_TOOL, READ_AGENT_TOOL] if children is not None else []
        self.window.tools = [*TOOLS, *self._extra_tools]
        self.toolbox = Toolbox([])
        self.model_step = ModelStep(self.recorder, self.window, client)
        #: The control tools by name; any other call goes to :attr:`tool_step`.
        self.handlers: dict[str, Handler] = {
            "update_plan": PlanStep(self.recorder, lambda: self.window.window)
        }
        if children is not None:
            self.handlers["delegate"] = DelegateStep(self.recorder, children, self)
            self.handlers["read_agent"] = ReadAgentStep(self.recorder, self.store)

    def execute(self, *, first: bool, decision: dict | None = None) -> RunState:
        """Run until a checkpoint stops it; what it prints reaches the cell redacted."""
        with redacting(self.settings.secrets):
            return self._execute(first, decision)

    def _execute(self, first: bool, decision: dict | None) -> RunState:
        try:  # before anything is written: a missing tool is a short error, nothing lost
            self._open_tools(first)
            self._compare(first)
        except BaseException:
            self.toolbox.close()
            self.client.close()
            raise
        recorder = self.recorder
        writer = recorder.writer = self.store.writer(
            self.run.run_id, durability=self.settings.policy.durability
        )
        try:
            # Check before the resume checkpoint, which would end the waiting.
            call = self._awaited_call() if decision is not None else None
            if first:
                writer.put_run(self.run)
                self._fork() if self.run.parent_run else self._start()
            else:
                self._resume()
            if decision is not None and call is not None:
                record_decision(recorder, decision, call)
            self._drive()
        except Stop:
            pass
        except (KeyboardInterrupt, Cancelled) as exc:
            # A call cut short is not a result: it stays in flight and runs again
            # on resume, like the call in flight at a crash.
            in_flight = self.state.started_call
            summary = (
                self._interrupted_call(in_flight)
                if in_flight
                else f"interrupted after checkpoint {self.state.step}"
            )
            if isinstance(exc, CallTimedOut):
                summary = f"{exc}; {summary}"
            recorder.checkpoint("interrupted", INTERRUPTED, summary, info={"in_flight": in_flight})
        except ModelError as exc:
            info = {"error": str(exc), "detail": getattr(exc, "detail", None)}
            recorder.checkpoint("error", ERROR, str(exc), info=info)
        except StoreError:
            raise
        except Exception as exc:  # a bug must not lose the run: pause it, resumable
            message = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(StoreError):
                recorder.checkpoint("error", ERROR, message, info={"error": message})
            raise
        finally:
            try:
                recorder.write_saved()  # not written if this fails: the call stays in flight
            finally:
                writer.close()
                self.client.close()
                self.toolbox.close()
        with contextlib.suppress(StoreError, OSError, TypeError, ValueError):  # only a cache
            resumed = None if first else self._recorded()
            settings = execution_settings(self.run, resumed)
            save_latest(self.store, self.run, self.state, writer.secrets, settings)
        return self.state

    def _open_tools(self, first: bool) -> None:
        """Look the run's tools up in the namespace and start its MCP servers.

        A run keeps the tools it started with (only their names are stored, in
        its info); a fork keeps its parent's.
        """
        info = self.run.info
        policy = self.settings.policy
        if "tools" not in info and first:
            source = self.store.run(self.run.parent_run) if self.run.parent_run else None
            if source is not None:
                names, servers = source.info.get("tools") or [], source.info.get("mcp") or []
            else:
                ns = self.shell.user_ns
                names = list(dict.fromkeys([*policy.tools, *user_tools.decorated(ns)]))
                servers = list(policy.mcp)
            self.run.info = info = {**info, "tools": names, "mcp": servers}
        self.toolbox = Toolbox.open(
            self.shell,
            info.get("tools") or [],
            info.get("mcp") or [],
            dict(self.settings.mcp_servers),
            self.client.cancel,
            rich_bytes=self.settings.rich_output_bytes,
        )
        self.window.tools = [*self.toolbox.schemas(), *self._extra_tools]
        lock = self.collaborators.namespace
        self.tool_step = ToolStep(self.recorder, self.toolbox, policy, self.client, lock)
        if first and self.state.step < 0:
            try:
                check_approve(policy.approve_tools, self.toolbox.names())
            except BaseException:
                self.toolbox.close()
                raise

    def _compare(self, first: bool) -> None:
        """This execution's fingerprint, and what changed since the run's last execution.

        A continuation (a resume, an approval, a fork) that finds a change says
        it in one line, recorded with its first checkpoint; under the strict
        policy it refuses instead, before anything is written.
        """
        names = self.run.info.get("tools") or []
        self.fingerprint = fingerprint(
            self.shell.user_ns,
            self.toolbox,
            names,
            self.client.endpoint,
            SYSTEM_PROMPT,
            self.run.prompt,
        )
        continuing = not first or bool(self.run.parent_run)
        last = self.state.fingerprint if continuing else None
        self.changed = changes(last[1], self.fingerprint) if last else []
        self.change = since_last(self.state, self.fingerprint) if last else ""
        if self.change and self.settings.policy.strict:
            raise ConfigError(
                f"Agent {self.run.agent} was not continued (strict): {self.change}. Undo the "
                "change, or continue without --strict (AgentMagics.strict) to run under it."
            )
        if self.change:
            self.recorder.events.notice(self.change)

    def _interrupted_call(self, call_id: str) -> str:
        call: dict = next(
            (
                c
                for m in self.state.messages
                for c in m.get("tool_calls") or []
                if c.get("id") == call_id
            ),
            {},
        )
        name = (call.get("function") or {}).get("name") or "tool"
        tool = self.toolbox.get(name)
        if tool is None or tool.idempotent:
            return f"interrupted during a {name} call; it runs again when the agent resumes"
        return (
            f"interrupted during a {name} call; it may have run, so the agent asks before "
            "running it again"
        )

    def _start(self) -> None:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": redact(self.run.prompt, self.settings.secrets)},
        ]
        self.recorder.checkpoint(
            "start", RUNNING, self.run.prompt, Delta(messages=messages), info=self._recorded()
        )

    def _recorded(self) -> dict:
        """What this execution runs with, recorded on its first checkpoint."""
        return {
            "model": self.client.endpoint.name,  # with its API: a resume asks the same
            "context_window": self.window.window,
            "budget": _budget_dict(self.budget),
            "approve": self.settings.policy.recorded_approval(),
            KEY: self.fingerprint,
            **({"changed": self.changed} if self.changed else {}),
        }

    def _resume(self) -> None:
        """The resume checkpoint; it counts a model call the stop may have left unanswered.

        A run still ``running`` after a checkpoint that leads to a model call
        was stopped by a kill, perhaps while the call was in flight: its tokens
        enter the ledger here, by estimate, so kills do not let a run spend
        past its budget unseen (at worst a call that never went out is counted).
        """
        tokens = 0
        counted: dict = {}
        if self.state.status == RUNNING and self.state.kind in ASKS_MODEL_NEXT:
            tokens, counted = self.window.unanswered()
        messages = []
        if self.state.status == STUCK:
            reason = self.state_reason()
            messages.append(
                {"role": "user", "content": context.HARNESS_NOTE + unstuck_note(reason)}
            )
        summary = f"resumed after checkpoint {self.state.step} ({self.state.kind})"
        self.recorder.checkpoint(
            "resume",
            RUNNING,
            summary + (f"; {self.change}" if self.change else ""),
            Delta(messages=messages),
            info={
                "from_step": self.state.step,
                "from_status": self.state.status,
                "saved_tokens": self.state.tokens,
                **self._recorded(),
                **counted,
            },
            tokens=tokens,
        )

    def state_reason(self) -> str:
        return stuck_reason(self.state.messages) or "it repeated itself"

    def _fork(self) -> None:
        """First checkpoint of a fork: its state so far was folded from the parent run.

        An edited instruction becomes a user message; tool calls still unanswered
        at the fork point are answered as not run first, as the API requires.
        """
        instruction = (self.run.info.get("instruction") or "").strip()
        messages: list[dict] = []
        if instruction:
            answered = {
                m.get("tool_call_id") for m in self.state.messages if m.get("role") == "tool"
            }
            last: dict = next(
                (m for m in reversed(self.state.messages) if m.get("role") == "assistant"), {}
            )
            for call in last.get("tool_calls") or []:
                if call["id"] not in answered:
                    messages.append(
                        {"role": "tool", "tool_call_id": call["id"], "content": FORK_SKIPPED}
                    )
            messages.append({"role": "user", "content": redact(instruction, self.settings.secrets)})
        delta, status, what_if = self._edited()
        delta.messages = [*delta.messages, *messages]
        where = f"forked from checkpoint {self.run.parent_step}" + (
            f" ({self.change})" if self.change else ""
        )
        self.recorder.checkpoint(
            "fork",
            status,
            where
            + (f", {what_if}" if what_if else "")
            + (f": {instruction}" if instruction else ""),
            delta,
            info={
                "parent_run": self.run.parent_run,
                "parent_step": self.run.parent_step,
                "instruction": instruction,
                KEY: self.fingerprint,
                **({"changed": self.changed} if self.changed else {}),
                **({"what_if": self.run.info["what_if"]} if what_if else {}),
            },
        )

    def _edited(self) -> tuple[Delta, str, str]:
        """The edited step a "what if" fork starts with (:mod:`.edits`), its status, and its words.

        An edited reply is the fork's first step: its tool calls run next, or,
        without any, it is the run's answer. An edited output answers the call
        in flight at the fork point, with that call's effects on the namespace.
        """
        edit = self.run.info.get("edit") or {}
        what_if = self.run.info.get("what_if") or {}
        words = vocab.WHAT_IF.get(what_if.get("edited", ""), "")
        secrets = self.settings.secrets
        if "reply" in edit:
            message = redact(edit["reply"], secrets)
            status = RUNNING if message.get("tool_calls") else DONE
            return Delta(messages=[message]), status, words
        if "output" in edit:
            message = {**edit["output"], "content": redact(edit["output"]["content"], secrets)}
            delta = Delta(
                messages=[message],
                vars=edit.get("vars") or {},
                unsaved=edit.get("unsaved") or {},
                files=edit.get("files") or {},
                tool_call_id=message["tool_call_id"],
            )
            return delta, RUNNING, words
        return Delta(), RUNNING, words

    def _awaited_call(self) -> dict:
        call = self.state.pending_tool_call()
        if self.state.status != AWAITING_APPROVAL or call is None:
            raise NotWaiting("This agent is not waiting for an approval.")
        return call

    def _drive(self) -> None:
        model_calls = 0
        while True:
            if self.client.cancel.is_set() or self.stop_asked():  # Pause, between two steps
                raise Cancelled()
            call = self.state.pending_tool_call()
            if call is not None:
                name = (call.get("function") or {}).get("name") or ""
                self.handlers.get(name, self.tool_step)(call)
                continue
            if self.state.status == DONE:
                return
            limit = self.settings.policy.max_steps
            if limit is not None and model_calls >= limit:
                self.recorder.checkpoint(
                    "limit",
                    LIMIT,
                    f"stopped after {model_calls} steps (--max-steps); re-run to continue",
                )
                raise Stop()
            reason = stuck_reason(self.state.messages)
            if reason:
                self.recorder.checkpoint(
                    "stuck", STUCK, f"stuck: {reason}", info={"reason": reason}
                )
                raise Stop()
            self.window.compact()
            if self.model_step():
                model_calls += 1


def _never() -> bool:
    """No stop asked from outside: only the client's cancel event pauses an execution."""
    return False


def _budget_dict(budget: Budget | None) -> dict | None:
    return None if budget is None else {"tokens": budget.tokens, "cost": budget.cost}


def _budget_of(recorded: dict | None) -> Budget | None:
    """The budget a run last ran with, from its checkpoints' settings."""
    if not recorded:
        return None
    return Budget(tokens=recorded.get("tokens"), cost=recorded.get("cost"))
