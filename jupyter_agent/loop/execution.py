"""The durable agent loop.

A run alternates model calls and tool calls. Every step boundary is a
checkpoint — a model reply, a tool call starting, a tool result, an approval
request or decision, a fork, an interruption — written before the next step
begins.
So a completed step is never executed again: resuming folds the checkpoints
back into a :class:`~jupyter_agent.core.state.RunState` and continues from the
first step that has no checkpoint.

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
before any code runs again (see :meth:`Execution.checkpoint`). Until it is,
its call is in flight as above.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import vocab
from ..core import context, history
from ..core import plan as plans
from ..core.budget import Budget, cost_of, over_budget, price_of
from ..core.plan import PLANNER_PROMPT, parse_items, progress
from ..core.redaction import redact
from ..core.state import (
    AWAITING_APPROVAL,
    BUDGET,
    DONE,
    ERROR,
    INTERRUPTED,
    LIMIT,
    RUNNING,
    STUCK,
    Delta,
    RunState,
    encode_delta,
    fold,
    fold_from_snapshot,
    prompt_hash,
)
from ..core.stuck import REPEATS, stuck_reason, unstuck_note
from ..errors import (
    Cancelled,
    ConfigError,
    ContextOverflow,
    DelegateError,
    MalformedCall,
    ModelError,
    NotWaiting,
    PlanError,
    ReadAgentError,
    StoreError,
)
from ..kernel.identity import AgentIdentity
from ..model.base import ModelClient
from ..namespace import tracking as namespace
from ..namespace.lock import NamespaceLock
from ..store.api import CheckpointRow, RunRow, RunWriterLike, Store
from ..tools import user as user_tools
from ..tools.base import Tool, ToolResult, unknown_tool
from ..tools.delegate import DELEGATE_TOOL, Children, parse_delegate
from ..tools.python import TOOLS
from ..tools.read_agent import READ_AGENT_TOOL, read_agent
from ..tools.toolbox import Toolbox, check_approve
from ..vocab import effective_status as effective_status
from ..vocab import stall_after as stall_after

SYSTEM_PROMPT = (
    "You are a careful data assistant working inside a Jupyter notebook. Use the `python` "
    "tool to run code in the notebook's kernel: variables you create persist and are shared "
    "with the user. Work step by step, check results, and fix errors you see. When the task "
    "is done, reply with a short final answer and no tool call."
)
SUMMARY_LIMIT = 120
FORK_SKIPPED = "Not run: the user gave a new instruction at this point instead."
DECIDED = {"approve": "approved", "reject": "rejected", "edit": "edited"}


class Events(Protocol):
    """Where a run reports progress: the text renderer, the timeline widget, or both."""

    def text(self, chunk: str) -> None: ...
    def info(self, message: str) -> None: ...
    def notice(self, message: str) -> None: ...
    def checkpoint(self, run: RunRow, row: CheckpointRow, delta: Delta) -> None: ...


@dataclass
class RunOptions:
    #: Model calls in one execution; None: no limit (the default under a budget).
    max_steps: int | None = 30
    approve: bool = False
    #: Tools that need approval when ``approve`` is on; empty means every tool.
    approve_tools: tuple[str, ...] = ()
    model_timeout: float = 120.0
    retries: int = 4
    backoff: float = 0.5
    secrets: list[str] = field(default_factory=list)
    #: The model's context window in tokens; None: learnt from the endpoint or
    #: :func:`context.default_window`.
    context_window: int | None = None
    #: What the run may spend over all its executions; None: the run's last budget.
    budget: Budget | None = None
    #: Dollars per million (prompt, completion) tokens, by model name prefix.
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Start with a planning phase, then work through the plan an item at a time.
    plan: bool = False
    #: Identical failing calls or replies in a row that make a run stuck.
    stuck_after: int = REPEATS
    #: A new run's notebook functions offered as tools (besides ``@tool`` ones).
    tools: tuple[str, ...] = ()
    #: A new run's MCP servers, by name in ``mcp_servers``.
    mcp: tuple[str, ...] = ()
    #: MCP server configurations by name (``c.AgentMagics.mcp_servers``).
    mcp_servers: dict[str, dict] = field(default_factory=dict)
    #: Runs children for the ``delegate`` tool; None: neither it nor ``read_agent`` is offered.
    children: Children | None = None
    #: The kernel's namespace lock: one agent's code runs at a time (the runtime's).
    namespace: NamespaceLock | None = None


#: Characters of a reply's reasoning kept in its checkpoint (shown in the timeline).
REASONING_KEPT = 20_000
#: Consecutive "too long" refusals after which the agent stops trying to compact.
MAX_OVERFLOWS = 3


def one_line(text: str, limit: int = SUMMARY_LIMIT) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- building runs ------------------------------------------------------------------


def new_run(
    identity: AgentIdentity,
    prompt: str,
    model: str,
    *,
    parent: tuple[str, int] | None = None,
    info: dict | None = None,
) -> RunRow:
    return RunRow(
        run_id=uuid.uuid4().hex[:16],
        notebook=identity.notebook,
        agent=identity.agent,
        cell_id=identity.cell_id,
        prompt=prompt,
        prompt_hash=prompt_hash(prompt),
        model=model,
        parent_run=parent[0] if parent else None,
        parent_step=parent[1] if parent else None,
        created_at=time.time(),
        info=info or {},
    )


def chain(store: Store, run: RunRow) -> list[tuple[str, int | None]]:
    """The (run, up-to-step) segments whose checkpoints make up ``run``'s history.

    Whole, since a state is folded from it: a deleted ancestor raises StoreError.
    """
    return history.segments(run, store.run, whole=True)


def load_state(store: Store, run: RunRow, *, full: bool = False) -> RunState:
    """The run's state now; ``full``: with every message, not only those its view shows.

    Without ``full`` the fold starts at the latest compaction's snapshot, so a
    resume reads a window's worth of checkpoints however long the run is; the
    messages compacted away are :data:`~jupyter_agent.core.state.COMPACTED` placeholders.
    Its reads share one connection (the caller's session, if it has one).
    """
    with store.session():
        segments = chain(store, run)
        since = 0 if full else resume_point(store, segments)
        if since:
            state = fold_from_snapshot(store.payloads(segments, since))
            if state is not None:
                return state
        return fold(store.payloads(segments))


def resume_point(store: Store, segments: list[tuple[str, int | None]]) -> int:
    """The step the fold from the history's latest snapshot starts at; 0: from the start."""
    for run_id, upto in reversed(segments):
        for row in reversed(store.checkpoints(run_id, kind="compaction")):
            if (upto is None or row.step <= upto) and "resume_from" in row.info:
                return int(row.info["resume_from"])
    return 0


# -- one execution of a run ---------------------------------------------------------


class Stop(Exception):
    """Ends an execution at a checkpoint that has already been written."""


class Execution:
    """Drives one run from its current state until it finishes, pauses or fails."""

    #: Changed values this large in memory are serialized while the model is asked (None: never).
    save_later_from: int | None = namespace.SAVE_LATER_BYTES

    def __init__(
        self,
        store: Store,
        run: RunRow,
        state: RunState,
        shell: Any,
        client: ModelClient,
        events: Events,
        options: RunOptions,
    ) -> None:
        self.store = store
        self.run = run
        self.state = state
        self.shell = shell
        self.client = client
        self.events = events
        self.options = options
        self.writer: RunWriterLike | None = None
        self._last = time.monotonic()
        model = client.endpoint.model
        self.window = (
            options.context_window or store.learnt_window(model) or context.default_window(model)
        )
        self.price = price_of(model, options.prices)
        self.budget = options.budget or _budget_of(state.budget)
        if self.budget and self.budget.cost is not None and self.price is None:
            raise ConfigError(
                f"--budget {self.budget.text()} needs a price for model {model!r}, and none is "
                "known. Give one in dollars per million tokens, e.g. %config AgentMagics.prices "
                f"= {{{model!r}: [0.15, 0.60]}}, or give the budget in tokens (--budget 200k)."
            )
        self.plan_mode = bool(run.info.get("plan")) or (options.plan and state.step < 0)
        self._extra_tools = [DELEGATE_TOOL, READ_AGENT_TOOL] if options.children is not None else []
        self.tools = [*TOOLS, *self._extra_tools]
        self.toolbox = Toolbox([])
        #: Reported over estimated prompt tokens of the last request (see context).
        self._ratio = 1.0
        self._sizes = context.Sizes()
        self._overflows = 0
        self.tracker = namespace.Tracker()
        #: A checkpoint applied, not written yet (see :meth:`checkpoint`).
        self._later: _Later | None = None

    # The single place where state changes: write the checkpoint, then apply it.
    def checkpoint(
        self,
        kind: str,
        status: str,
        summary: str,
        delta: Delta | None = None,
        *,
        tokens: int = 0,
        info: dict | None = None,
        blobs: dict[str, bytes] | None = None,
        durable: bool = True,
        later: _Later | None = None,
    ) -> CheckpointRow:
        """Write a checkpoint and apply it to the state.

        ``durable=False`` for one followed at once by another, before anything
        acts on it: both are made durable by the second's sync (see
        :meth:`Store.writer`'s ``put_checkpoint``).

        With ``later`` (a ``tool_result`` whose large values are still being
        serialized) the checkpoint is applied now, so the model can be asked
        for the next step meanwhile, and written by :meth:`write_saved` once
        they are: before any other checkpoint, and so before code runs again.
        Until then the call is in flight, as it would be during the tool.
        """
        assert self.writer is not None
        self.write_saved()  # checkpoints are written in step order
        delta = delta or Delta()
        if kind == "compaction" and delta.compaction is not None:
            # The state before this checkpoint, for a resume to fold from (see state).
            point = self.state.snapshot(int(delta.compaction.get("upto") or 0))
            if point is not None:
                delta.snapshot = point[1]
                info = {**(info or {}), "resume_from": point[0]}
        now = time.monotonic()
        payload = encode_delta(delta)
        row = CheckpointRow(
            run_id=self.run.run_id,
            step=self.state.step + 1,
            kind=kind,
            status=status,
            summary=one_line(summary),
            created_at=time.time(),
            duration_ms=round((now - self._last) * 1000, 1),
            tokens=tokens,
            size=len(payload) + sum(len(b) for b in (blobs or {}).values()),
            info=info or {},
        )
        if later is None:
            self._write(row, payload, blobs, durable=durable)
        else:
            later.row = row
            self._later = later
        self._last = now
        self.state.apply(
            delta, step=row.step, kind=kind, status=status, tokens=tokens, info=row.info
        )
        if later is None:
            self.events.checkpoint(self.run, row, delta)
        return row

    def _write(
        self, row: CheckpointRow, payload: bytes, blobs: dict[str, bytes] | None, durable: bool
    ) -> None:
        assert self.writer is not None
        with _shield_from_interrupt():
            for digest, data in (blobs or {}).items():
                self.writer.put_blob(digest, data)
            self.writer.put_checkpoint(row, payload, durable=durable)

    def write_saved(self) -> None:
        """Write the checkpoint applied before its large values were serialized, once they are."""
        later, self._later = self._later, None
        if later is None or later.row is None:
            return
        with _shield_from_interrupt():
            saved = later.saving.result()
        delta, info, blobs = later.compose(saved)
        payload = encode_delta(delta)
        size = len(payload) + sum(len(b) for b in blobs.values())
        row = dataclasses.replace(later.row, info=info, size=size)
        self._write(row, payload, blobs, durable=True)
        self.state.bind(saved.vars, saved.unsaved)
        self.events.checkpoint(self.run, row, delta)
        for name, why in saved.unsaved.items():
            self.events.notice(f"not saved: {name}: {why}")

    def execute(self, *, first: bool, decision: dict | None = None) -> RunState:
        try:  # before anything is written: a missing tool is a short error, nothing lost
            self._open_tools(first)
        except BaseException:
            self.client.close()
            raise
        self.writer = self.store.writer(self.run.run_id)
        try:
            # Check before the resume checkpoint, which would end the waiting.
            call = self._awaited_call() if decision is not None else None
            if first:
                self.writer.put_run(self.run)
                self._fork() if self.run.parent_run else self._start()
            else:
                self._resume()
            if decision is not None and call is not None:
                self._decide(decision, call)
            self._drive()
        except Stop:
            pass
        except (KeyboardInterrupt, Cancelled):
            # A call cut short is not a result: it stays in flight and runs again
            # on resume, like the call in flight at a crash.
            in_flight = self.state.started_call
            summary = (
                self._interrupted_call(in_flight)
                if in_flight
                else f"interrupted after checkpoint {self.state.step}"
            )
            self.checkpoint("interrupted", INTERRUPTED, summary, info={"in_flight": in_flight})
        except ModelError as exc:
            info = {"error": str(exc), "detail": getattr(exc, "detail", None)}
            self.checkpoint("error", ERROR, str(exc), info=info)
        except StoreError:
            raise
        except Exception as exc:  # a bug must not lose the run: pause it, resumable
            message = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(StoreError):
                self.checkpoint("error", ERROR, message, info={"error": message})
            raise
        finally:
            try:
                self.write_saved()  # not written if this fails: the call stays in flight
            finally:
                self.writer.close()
                self.client.close()
                self.toolbox.close()
        return self.state

    def _open_tools(self, first: bool) -> None:
        """Look the run's tools up in the namespace and start its MCP servers.

        A run keeps the tools it started with (only their names are stored, in
        its info); a fork keeps its parent's.
        """
        info = self.run.info
        if "tools" not in info and first:
            source = self.store.run(self.run.parent_run) if self.run.parent_run else None
            if source is not None:
                names, servers = source.info.get("tools") or [], source.info.get("mcp") or []
            else:
                ns = self.shell.user_ns
                names = list(dict.fromkeys([*self.options.tools, *user_tools.decorated(ns)]))
                servers = list(self.options.mcp)
            self.run.info = info = {**info, "tools": names, "mcp": servers}
        self.toolbox = Toolbox.open(
            self.shell, info.get("tools") or [], info.get("mcp") or [], self.options.mcp_servers
        )
        self.tools = [*self.toolbox.schemas(), *self._extra_tools]
        if first and self.state.step < 0:
            try:
                check_approve(self.options.approve_tools, self.toolbox.names())
            except BaseException:
                self.toolbox.close()
                raise

    def _interrupted_call(self, call_id: str) -> str:
        call = next(
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
            {"role": "user", "content": redact(self.run.prompt, self.options.secrets)},
        ]
        self.checkpoint(
            "start", RUNNING, self.run.prompt, Delta(messages=messages), info=self._settings()
        )

    def _settings(self) -> dict:
        """What this execution runs with, recorded on its first checkpoint."""
        return {
            "model": self.client.endpoint.model,
            "context_window": self.window,
            "budget": _budget_dict(self.budget),
            "approve": approve_policy(self.options),
        }

    def _resume(self) -> None:
        messages = []
        if self.state.status == STUCK:
            reason = self.state_reason()
            messages.append(
                {"role": "user", "content": context.HARNESS_NOTE + unstuck_note(reason)}
            )
        self.checkpoint(
            "resume",
            RUNNING,
            f"resumed after checkpoint {self.state.step} ({self.state.kind})",
            Delta(messages=messages),
            info={
                "from_step": self.state.step,
                "from_status": self.state.status,
                "saved_tokens": self.state.tokens,
                **self._settings(),
            },
        )

    def state_reason(self) -> str:
        return stuck_reason(self.state.messages, self.options.stuck_after) or "it repeated itself"

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
            last = next(
                (m for m in reversed(self.state.messages) if m.get("role") == "assistant"), {}
            )
            for call in last.get("tool_calls") or []:
                if call["id"] not in answered:
                    messages.append(
                        {"role": "tool", "tool_call_id": call["id"], "content": FORK_SKIPPED}
                    )
            messages.append({"role": "user", "content": redact(instruction, self.options.secrets)})
        where = f"forked from step {self.run.parent_step}"
        self.checkpoint(
            "fork",
            RUNNING,
            where + (f": {instruction}" if instruction else ""),
            Delta(messages=messages),
            info={
                "parent_run": self.run.parent_run,
                "parent_step": self.run.parent_step,
                "instruction": instruction,
            },
        )

    def _awaited_call(self) -> dict:
        call = self.state.pending_tool_call()
        if self.state.status != AWAITING_APPROVAL or call is None:
            raise NotWaiting("This agent is not waiting for an approval.")
        return call

    def _decide(self, decision: dict, call: dict) -> None:
        decision = {**decision, "call_id": call["id"]}
        self.checkpoint(
            "approval",
            RUNNING,
            DECIDED[decision["action"]] + (f": {decision['note']}" if decision.get("note") else ""),
            Delta(decision=decision),
            info={"decision": decision},
        )

    def _drive(self) -> None:
        model_calls = 0
        while True:
            if self.client.cancel.is_set():  # Pause, between two steps
                raise Cancelled()
            call = self.state.pending_tool_call()
            if call is not None:
                self._tool_step(call)
                continue
            if self.state.status == DONE:
                return
            limit = self.options.max_steps
            if limit is not None and model_calls >= limit:
                self.checkpoint(
                    "limit",
                    LIMIT,
                    f"stopped after {model_calls} steps (--max-steps); re-run to continue",
                )
                raise Stop()
            reason = stuck_reason(self.state.messages, self.options.stuck_after)
            if reason:
                self.checkpoint("stuck", STUCK, f"stuck: {reason}", info={"reason": reason})
                raise Stop()
            self._compact()
            if self._model_step():
                model_calls += 1

    # -- context, budget, plan -----------------------------------------------------

    def view(self) -> list[dict]:
        """What the model is sent now (see :mod:`jupyter_agent.core.context`)."""
        state = self.state
        return context.model_view(state.messages, state.compaction, state.plan, self._sizes) + (
            self._planner()
        )

    def view_tokens(self, ratio: float) -> int:
        """The estimate of :meth:`view`'s tokens, without building it."""
        state = self.state
        return context.view_tokens(
            state.messages,
            state.compaction,
            state.plan,
            ratio,
            self.tools,
            self._sizes,
            self._planner(),
        )

    def _planner(self) -> list[dict]:
        """The planner's instruction, while a plan run has no plan yet."""
        if self.plan_mode and not self.state.plan:
            return [{"role": "user", "content": context.HARNESS_NOTE + PLANNER_PROMPT}]
        return []

    def _check_budget(self, prompt_tokens: int) -> None:
        """Stop at a checkpoint if a call with this prompt would cross the budget."""
        if self.budget is None:
            return
        state = self.state
        completion = state.completion_tokens // state.model_calls if state.model_calls else 256
        next_cost = cost_of(prompt_tokens, completion, self.price)
        spent_cost = cost_of(state.prompt_tokens, state.completion_tokens, self.price)
        if not over_budget(
            self.budget, state.tokens, spent_cost, prompt_tokens + completion, next_cost
        ):
            return
        info = {
            "spent": state.tokens,
            "budget": self.budget.tokens,
            "cost": spent_cost,
            "budget_cost": self.budget.cost,
            "next": prompt_tokens + completion,
        }
        self.checkpoint("budget", BUDGET, vocab.budget_text(info), info=info)
        raise Stop()

    def _compact(self, *, force: bool = False) -> None:
        """Bring the model's view inside the window, as a checkpoint of its own."""
        state = self.state
        decision = context.decide(
            state.messages,
            state.compaction,
            state.plan,
            self.window,
            self._ratio,
            tools=self.tools,
            force=force,
            sizes=self._sizes,
        )
        if decision is None:
            if force:
                raise ModelError(
                    f"The endpoint refused the request as too long for the model's context "
                    f"window ({self.window:,} tokens), and there is nothing left to compact: "
                    "the latest step alone is too large. Give the model a larger window "
                    "(--context-window) or a task with smaller outputs."
                )
            return
        before = self.view_tokens(self._ratio)
        compaction = decision.compaction
        tokens = 0
        usage: dict = {}
        if decision.summarize is not None:
            start, end = decision.summarize
            request = context.summarizer_request(
                state.messages,
                start,
                end,
                compaction["summary"],
                context.variables_overview(self.shell.user_ns, list(state.vars)),
                self.window,
            )
            self._check_budget(context.estimate_tokens(request, self._ratio))
            self.events.info(f"Compacting the context (checkpoints before {end} into a summary)…")
            reply = self.client.complete(request, [])
            summary = redact(reply.content, self.options.secrets)
            compaction = {
                **compaction,
                "summary": context.summary_message(
                    summary, compaction["replies"], compaction["results"]
                ),
            }
            tokens, usage = reply.tokens, reply.usage
        compaction["window"] = self.window
        after = context.estimate_tokens(
            context.model_view(state.messages, compaction, state.plan, self._sizes),
            self._ratio,
            self.tools,
            self._sizes,
        )
        kind = compaction["strategy"]
        self.checkpoint(
            "compaction",
            RUNNING,
            f"context compacted: {before:,} → {after:,} tokens ({kind})",
            Delta(compaction=compaction),
            tokens=tokens,
            info={
                "strategy": kind,
                "before_tokens": before,
                "after_tokens": after,
                "messages_dropped": int(compaction.get("upto") or 0),
                "window": self.window,
                "usage": usage,
            },
        )

    def _overflowed(self, exc: ContextOverflow, sent: int) -> None:
        """The endpoint said the request was too long: learn the window, compact, retry."""
        self._overflows += 1
        if self._overflows > MAX_OVERFLOWS:
            raise ModelError(f"The request stays too long for the model's context window: {exc}")
        learnt = exc.limit or int(sent * 0.8)
        if learnt < self.window:
            self.window = max(learnt, context.MIN_WINDOW)
            with contextlib.suppress(StoreError):
                self.store.remember_window(self.client.endpoint.model, self.window)
        self.events.notice(
            f"the request was too long for the model ({exc.limit or 'unknown'} tokens); "
            "compacting the context and retrying"
        )
        self._compact(force=True)

    def _next_item(self, note: str) -> None:
        """In plan mode, after a reply that ends an item: start the next one afresh."""
        state = self.state
        variables = context.variables_overview(self.shell.user_ns, list(state.vars))
        item = plans.next_item(state.plan, state.compaction, state.messages, note, variables)
        if item is None:  # nothing left: the plan is done
            done = plans.ended(state.plan, state.compaction)
            info = {"plan": done, "progress": progress(done)}
            self.checkpoint(
                "tool_result", RUNNING, f"plan {progress(done)}", Delta(plan=done), info=info
            )
            return
        title = item.plan[item.index]["title"]
        self.checkpoint(
            "compaction",
            RUNNING,
            f"plan item {item.index + 1}/{len(item.plan)}: {title}",
            Delta(
                messages=[{"role": "user", "content": item.instruction}],
                compaction={**item.compaction, "window": self.window},
                plan=item.plan,
            ),
            info={
                "strategy": "item",
                "plan": item.plan,
                "progress": progress(item.plan),
                "item": item.index,
                "messages_dropped": len(state.messages),
            },
        )

    def _model_step(self) -> bool:
        """One model call, checkpointed; False when it was refused and compacted instead."""
        view = self.view()
        estimate = self.view_tokens(self._ratio)
        self._check_budget(estimate)
        try:
            reply = self.client.complete(
                view,
                self.tools,
                on_text=self.events.text,
                on_retry=lambda msg: self.events.notice(f"model: {msg}"),
                on_sent=self._later.saving.go if self._later is not None else None,
            )
        except ContextOverflow as exc:
            self._overflowed(exc, estimate)
            return False
        self._overflows = 0
        reported = int(reply.usage.get("prompt_tokens") or 0)
        if reported:
            raw = self.view_tokens(1.0)
            self._ratio = min(max(reported / max(raw, 1), 0.25), 4.0)
        message = redact(reply.message(), self.options.secrets)
        done = not reply.tool_calls
        state = self.state
        if done and self.plan_mode and state.plan:
            done = not plans.has_next(state.plan, state.compaction)
        if not reply.tool_calls:
            summary = reply.content
        else:
            names = ", ".join(c["function"]["name"] or "?" for c in reply.tool_calls)
            summary = (reply.content + " → " if reply.content.strip() else "→ ") + names
        info: dict[str, Any] = {"usage": reply.usage, "tool_calls": len(reply.tool_calls)}
        if reply.attempts > 1:  # what it took: visible in the timeline entry
            info["attempts"], info["retries"] = reply.attempts, reply.retries
        if reply.reasoning:
            info["reasoning"] = redact(reply.reasoning[:REASONING_KEPT], self.options.secrets)
            self.events.info("(reasoning) " + one_line(info["reasoning"], 200))
        delta = Delta(messages=[message])
        if done and self.plan_mode and plans.working_on(state.compaction) is not None:
            delta.plan = info["plan"] = plans.ended(state.plan, state.compaction)  # last one
        # A reply that calls tools is followed by the first call's checkpoint before
        # anything acts on it: that one's sync makes both durable.
        self.checkpoint(
            "model",
            DONE if done else RUNNING,
            summary,
            delta,
            tokens=reply.tokens,
            info=info,
            durable=not reply.tool_calls,
        )
        if not reply.tool_calls and not done:
            title = plans.item_title(state.plan, state.compaction)
            self._next_item(f"{title}: {one_line(reply.content, 300)}")
        return True

    def _tool_step(self, call: dict) -> None:
        """One tool call: approval if needed, then its start and its result as checkpoints.

        A call in flight when the agent stopped (started, no result) runs again
        if its tool is idempotent (``python`` is, at-least-once); otherwise it may
        have had its effect, so it waits for the user's approval first.
        """
        call_id = call["id"]
        fn = call.get("function") or {}
        name = fn.get("name")
        if name == "update_plan":
            self._plan_step(call)
            return
        if (call.get("function") or {}).get("name") == "delegate" and self.options.children:
            self._delegate_step(call, self.options.children)
            return
        if name == "read_agent" and self.options.children:
            self._read_agent_step(call)
            return
        self.tracker.begin(self.shell.user_ns, self.state.vars)
        tool = self.toolbox.get(name)
        try:
            if tool is None:
                raise MalformedCall(unknown_tool(name, self.toolbox.names()))
            args = tool.parse(fn.get("arguments") or "")
        except MalformedCall as exc:
            self._tool_result(call_id, ToolResult(f"Error: {exc}", error=True, executed=False))
            return
        decision = self.state.decisions.get(call_id)
        in_flight = self.state.started_call == call_id
        uncertain = in_flight and not tool.idempotent  # it may have run: ask
        if decision is None and (uncertain or tool.approve or self._needs_approval(call)):
            summary = "awaiting approval: " + (
                f"{name} was in flight when the agent stopped and may have run; "
                "approve to run it again"
                if uncertain
                else f"{name} " + one_line(tool.show(args), 80)
            )
            if uncertain:
                self.events.notice(
                    f"this {name} call was in flight when the agent stopped and may have "
                    "run; it runs again only if you approve it "
                    f"(%agent approve {self.run.agent}, or reject it)"
                )
            self.checkpoint(
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
            self._tool_result(
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
                self._tool_result(
                    call_id,
                    ToolResult(
                        f"Error: the user's edit of this call: {exc}", error=True, executed=False
                    ),
                )
                return
        with self._namespace_turn(tool) as others_ran:
            if others_ran:  # what another agent's code changed is not this run's to save
                self.tracker.rebase(self.shell.user_ns)
            if in_flight:
                self.events.notice(
                    f"step {self.state.step}: this {name} call was running when the agent "
                    "stopped; running it again"
                )
            shown = tool.show(args)
            # The start of a call that may run twice (python) is made durable with its
            # result: lost only with the machine, it is run again, as it would be anyway.
            self.checkpoint(
                "tool_call",
                RUNNING,
                f"{name}: {shown}",
                Delta(tool_call_id=call_id),
                info={"code": shown} if name == "python" else {"tool": name, "code": shown},
                durable=not tool.idempotent,
            )
            # An interrupt here propagates: the call stays in flight (see execute).
            self._tool_result(call_id, tool.run(args), in_kernel=tool.in_kernel)

    def _namespace_turn(self, tool: Tool) -> contextlib.AbstractContextManager:
        """Code in the kernel waits while another agent's code runs (the runtime's lock)."""
        lock = self.options.namespace
        if lock is None or not tool.in_kernel:
            return contextlib.nullcontext()
        return lock.turn(self.run.agent, self.events.info, self.client.cancel, tool.name)

    def _read_agent_step(self, call: dict) -> None:
        """``read_agent``: reads the store only, so no start checkpoint and no approval."""
        fn = call.get("function") or {}
        try:
            output = read_agent(self.store, self.run, fn.get("arguments") or "", load_state)
            error = False
        except ReadAgentError as exc:
            output, error = f"Error: {exc}", True
        output = redact(output, self.options.secrets)
        message = {"role": "tool", "tool_call_id": call["id"], "content": output}
        self.checkpoint(
            "tool_result",
            RUNNING,
            ("error: " if error else "") + f"read_agent: {one_line(output, 80)}",
            Delta(messages=[message], tool_call_id=call["id"]),
            info={"tool": "read_agent", "error": error},
        )

    def _plan_step(self, call: dict) -> None:
        """``update_plan``: no side effects, so no start checkpoint and no approval."""
        try:
            plan = parse_items((call.get("function") or {}).get("arguments") or "")
        except PlanError as exc:
            self._tool_result(call["id"], ToolResult(f"Error: {exc}", error=True, executed=False))
            return
        done = progress(plan)
        message = {
            "role": "tool",
            "tool_call_id": call["id"],
            "content": f"Plan updated: {done} done.",
        }
        self.checkpoint(
            "tool_result",
            RUNNING,
            f"plan {done}",
            Delta(messages=[message], plan=plan, tool_call_id=call["id"]),
            info={"plan": plan, "progress": done},
        )

    def _delegate_step(self, call: dict, children: Children) -> None:
        """``delegate``: run a child agent; its final answer is this call's result, once.

        The start is checkpointed, so after a stop the same child resumes; a
        child that pauses pauses this run too, saying why.
        """
        call_id = call["id"]
        self.tracker.begin(self.shell.user_ns, self.state.vars)
        try:
            agent, task, model = parse_delegate((call.get("function") or {}).get("arguments"))
            if self.state.started_call != call_id and (problem := children.refuse(self, agent)):
                raise DelegateError(problem)
        except DelegateError as exc:
            self._tool_result(call_id, ToolResult(f"Error: {exc}", error=True, executed=False))
            return
        if self.state.started_call == call_id:
            self.events.notice(f"resuming child agent {agent}, which was working when this stopped")
        else:
            self.checkpoint(
                "tool_call",
                RUNNING,
                f"delegate to {agent}: {task}",
                Delta(tool_call_id=call_id),
                info={
                    "delegate": {"agent": agent, "task": task, "model": model, "call_id": call_id}
                },
            )
        child = children.run(self, call_id, agent, task, model)
        info = {"child": child.agent, "child_run": child.run_id, "child_status": child.status}
        if child.status == DONE:
            self._tool_result(call_id, ToolResult(child.answer), tokens=child.tokens, info=info)
            return
        kind = child.status if child.status in (ERROR, LIMIT, BUDGET, STUCK) else "interrupted"
        status = kind if kind != "interrupted" else INTERRUPTED
        why = f"waiting for child agent {agent}: {child.text}"
        self.checkpoint(kind, status, why, info={**info, "error": why, "reason": why})
        raise Stop()

    def _needs_approval(self, call: dict) -> bool:  # update_plan never asks
        tools = self.options.approve_tools
        return self.options.approve and (not tools or call["function"]["name"] in tools)

    def _tool_result(
        self,
        call_id: str,
        result: ToolResult,
        status: str = RUNNING,
        *,
        tokens: int = 0,
        info: dict | None = None,
        in_kernel: bool = True,
    ) -> None:
        ran = in_kernel and result.executed  # nothing else can change the namespace
        secrets = self.options.secrets
        snap = self.tracker.snapshot(
            self.shell.user_ns,
            self.state.vars,
            secrets,
            result.touched,
            ran=ran,
            later_from=self.save_later_from if ran else None,
        )
        output = redact(result.output, secrets)
        message = {"role": "tool", "tool_call_id": call_id, "content": output}
        first = output.strip().splitlines()[-1] if output.strip() else ""

        def compose(saved: namespace.Snapshot) -> tuple[Delta, dict, dict[str, bytes]]:
            """The checkpoint's delta, info and blobs with the values saved later merged in."""
            vars = {**snap.vars, **saved.vars}
            unsaved = {**snap.unsaved, **saved.unsaved}
            delta = Delta(messages=[message], vars=vars, unsaved=unsaved, tool_call_id=call_id)
            values = {
                "vars": {**snap.info, **saved.info},
                "deleted": [n for n, h in vars.items() if h is None],
                "unsaved": unsaved,
                "blobs": [h for h in vars.values() if h],
                "error": result.error,
            }
            return delta, {**values, **(info or {})}, {**snap.blobs, **saved.blobs}

        later = None
        if snap.later:
            lock = self.options.namespace
            done = lock.saving(self.run.agent) if lock is not None else lambda: None
            assert self.writer is not None
            saving = namespace.Saving(
                self.shell.user_ns,
                snap.later,
                self.state.vars,
                secrets,
                prepare=self.writer.prepare_blob,
                done=done,
            )
            later = _Later(saving, compose)
        delta, values, blobs = compose(namespace.Snapshot())
        self.checkpoint(
            "tool_result",
            status,
            ("error: " if result.error else "") + first,
            delta,
            info=values,
            blobs=blobs,
            tokens=tokens,  # a child's tokens count towards its parent's
            later=later,
        )
        if snap.unsaved:
            for name, why in snap.unsaved.items():
                self.events.notice(f"not saved: {name}: {why}")


@dataclass
class _Later:
    """A ``tool_result`` applied before its large values were serialized (see
    :meth:`Execution.checkpoint`): their :class:`namespace.Saving`, and how to
    make the checkpoint's delta, info and blobs once they are."""

    saving: namespace.Saving
    compose: Callable[[namespace.Snapshot], tuple[Delta, dict, dict[str, bytes]]]
    row: CheckpointRow | None = None  # the row as applied; written with the values' info


def approve_policy(options: RunOptions) -> bool | list[str]:
    """How a run records its approval policy: off, every tool, or the listed tools."""
    if not options.approve:
        return False
    return list(options.approve_tools) or True


def _budget_dict(budget: Budget | None) -> dict | None:
    return None if budget is None else {"tokens": budget.tokens, "cost": budget.cost}


def _budget_of(recorded: dict | None) -> Budget | None:
    """The budget a run last ran with, from its checkpoints' settings."""
    if not recorded:
        return None
    return Budget(tokens=recorded.get("tokens"), cost=recorded.get("cost"))


@contextlib.contextmanager
def _shield_from_interrupt() -> Iterator[None]:
    """Hold Ctrl-C back until a checkpoint is written whole (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple] = []
    previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(*received[0])
