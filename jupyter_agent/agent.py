"""The durable agent loop.

A run alternates model calls and tool calls. Every step boundary is a
checkpoint — a model reply, a tool call starting, a tool result, an approval
request or decision, a fork, an interruption — written before the next step
begins.
So a completed step is never executed again: resuming folds the checkpoints
back into a :class:`~jupyter_agent.state.RunState` and continues from the
first step that has no checkpoint.

What happens to the step that was in flight when the kernel died:

* a model call is simply issued again (it has no side effects);
* a ``python`` call whose start was checkpointed but whose result was not is
  run again, after saying so in the output (at-least-once, like a Temporal
  activity); with approvals on, it waits for approval again first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import namespace
from .identity import AgentIdentity
from .model import Cancelled, ModelClient, ModelError
from .redaction import redact
from .state import (
    AWAITING_APPROVAL,
    DONE,
    ERROR,
    INTERRUPTED,
    LIMIT,
    RUNNING,
    STALLED,
    Delta,
    RunState,
    encode_delta,
    fold,
    prompt_hash,
)
from .store import CheckpointRow, RunRow, RunWriter, Store, StoreError
from .tools import TOOLS, MalformedCall, ToolResult, parse_call, run_python

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
    max_steps: int = 30
    approve: bool = False
    #: Tools that need approval when ``approve`` is on; empty means every tool.
    approve_tools: tuple[str, ...] = ()
    model_timeout: float = 120.0
    retries: int = 4
    backoff: float = 0.5
    secrets: list[str] = field(default_factory=list)


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
    """The (run, up-to-step) segments whose checkpoints make up ``run``'s history."""
    segments: list[tuple[str, int | None]] = [(run.run_id, None)]
    current = run
    while current.parent_run:
        segments.insert(0, (current.parent_run, current.parent_step))
        parent = store.run(current.parent_run)
        if parent is None:
            raise StoreError(
                f"Run {run.run_id} was forked from run {current.parent_run}, which was deleted."
            )
        current = parent
    return segments


def load_state(store: Store, run: RunRow) -> RunState:
    return fold(store.payloads(chain(store, run)))


def stall_after() -> float:
    """Seconds without a checkpoint after which a live run is reported stalled."""
    try:
        return float(os.environ.get("JUPYTER_AGENT_STALL_AFTER", "900"))
    except ValueError:
        return 900.0


def effective_status(
    status: str, run_id: str, live: set[str], last_checkpoint_at: float | None = None
) -> str:
    """The status users see, from the last checkpoint's and the journal's.

    A run whose last checkpoint says running but whose journal has no owner died
    with its kernel: interrupted, resumable. One whose owner lives but has not
    checkpointed for :func:`stall_after` seconds is stalled: its kernel is hung or
    a tool call never returns; interrupting or restarting that kernel frees it.
    """
    if status == RUNNING and run_id not in live:
        return INTERRUPTED
    if (
        status == RUNNING
        and last_checkpoint_at is not None
        and time.time() - last_checkpoint_at > stall_after()
    ):
        return STALLED
    return status


# -- one execution of a run ---------------------------------------------------------


class Stop(Exception):
    """Ends an execution at a checkpoint that has already been written."""


class Execution:
    """Drives one run from its current state until it finishes, pauses or fails."""

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
        self.writer: RunWriter | None = None
        self._last = time.monotonic()
        self.tracker = namespace.Tracker()

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
    ) -> CheckpointRow:
        assert self.writer is not None
        delta = delta or Delta()
        now = time.monotonic()
        payload = encode_delta(delta)
        with _shield_from_interrupt():
            for digest, data in (blobs or {}).items():
                self.writer.put_blob(digest, data)
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
            self.writer.put_checkpoint(row, payload)
        self._last = now
        self.state.apply(delta, step=row.step, kind=kind, status=status, tokens=tokens)
        self.events.checkpoint(self.run, row, delta)
        return row

    def execute(self, *, first: bool, decision: dict | None = None) -> RunState:
        self.writer = self.store.writer(self.run.run_id)
        try:
            # Check before the resume checkpoint, which would end the waiting.
            call = self._awaited_call() if decision is not None else None
            if first:
                self.writer.put_run(self.run)
                self._fork() if self.run.parent_run else self._start()
            else:
                self.checkpoint(
                    "resume",
                    RUNNING,
                    f"resumed after step {self.state.step} ({self.state.kind})",
                    info={"from_step": self.state.step, "from_status": self.state.status},
                )
            if decision is not None and call is not None:
                self._decide(decision, call)
            self._drive()
        except Stop:
            pass
        except (KeyboardInterrupt, Cancelled):
            self.checkpoint("interrupted", INTERRUPTED, f"interrupted after step {self.state.step}")
        except ModelError as exc:
            self.checkpoint("error", ERROR, str(exc), info={"error": str(exc)})
        except StoreError:
            raise
        except Exception as exc:  # a bug must not lose the run: pause it, resumable
            message = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(StoreError):
                self.checkpoint("error", ERROR, message, info={"error": message})
            raise
        finally:
            self.writer.close()
            self.client.close()
        return self.state

    def _start(self) -> None:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": redact(self.run.prompt, self.options.secrets)},
        ]
        self.checkpoint("start", RUNNING, self.run.prompt, Delta(messages=messages))

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
            raise StoreError("This agent is not waiting for an approval.")
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
            if model_calls >= self.options.max_steps:
                self.checkpoint(
                    "limit",
                    LIMIT,
                    f"stopped after {model_calls} model calls (--max-steps); re-run to continue",
                )
                raise Stop()
            self._model_step()
            model_calls += 1

    def _model_step(self) -> None:
        reply = self.client.complete(
            self.state.messages,
            TOOLS,
            on_text=self.events.text,
            on_retry=lambda msg: self.events.notice(f"model: {msg}"),
        )
        message = redact(reply.message(), self.options.secrets)
        done = not reply.tool_calls
        if done:
            summary = reply.content
        else:
            names = ", ".join(c["function"]["name"] or "?" for c in reply.tool_calls)
            summary = (reply.content + " → " if reply.content.strip() else "→ ") + names
        self.checkpoint(
            "model",
            DONE if done else RUNNING,
            summary,
            Delta(messages=[message]),
            tokens=reply.tokens,
            info={"usage": reply.usage, "tool_calls": len(reply.tool_calls)},
        )

    def _tool_step(self, call: dict) -> None:
        call_id = call["id"]
        self.tracker.begin(self.shell.user_ns, self.state.vars)
        try:
            code = parse_call(call)
        except MalformedCall as exc:
            self._tool_result(call_id, ToolResult(f"Error: {exc}", error=True, executed=False))
            return
        decision = self.state.decisions.get(call_id)
        if self._needs_approval(call) and decision is None:
            self.checkpoint(
                "approval",
                AWAITING_APPROVAL,
                "awaiting approval: python " + one_line(code, 80),
                info={"call_id": call_id, "code": code},
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
            code = decision["code"]
        if self.state.started_call == call_id:
            self.events.notice(
                f"step {self.state.step}: this python call was running when the agent stopped; "
                "running it again"
            )
        self.checkpoint(
            "tool_call",
            RUNNING,
            "python: " + code,
            Delta(tool_call_id=call_id),
            info={"code": code},
        )
        try:
            result = run_python(self.shell, code)
        except KeyboardInterrupt:
            result = ToolResult(
                "KeyboardInterrupt: the user interrupted this code.",
                error=True,
                touched=namespace.touched_names(code),
            )
            self._tool_result(call_id, result, status=INTERRUPTED)
            raise Stop() from None
        self._tool_result(call_id, result)

    def _needs_approval(self, call: dict) -> bool:
        tools = self.options.approve_tools
        return self.options.approve and (not tools or call["function"]["name"] in tools)

    def _tool_result(self, call_id: str, result: ToolResult, status: str = RUNNING) -> None:
        snap = self.tracker.snapshot(
            self.shell.user_ns, self.state.vars, self.options.secrets, result.touched
        )
        output = redact(result.output, self.options.secrets)
        message = {"role": "tool", "tool_call_id": call_id, "content": output}
        first = output.strip().splitlines()[-1] if output.strip() else ""
        self.checkpoint(
            "tool_result",
            status,
            ("error: " if result.error else "") + first,
            Delta(messages=[message], vars=snap.vars, unsaved=snap.unsaved, tool_call_id=call_id),
            info={
                "vars": snap.info,
                "deleted": [n for n, h in snap.vars.items() if h is None],
                "unsaved": snap.unsaved,
                "blobs": [h for h in snap.vars.values() if h],
                "error": result.error,
            },
            blobs=snap.blobs,
        )
        if snap.unsaved:
            for name, why in snap.unsaved.items():
                self.events.notice(f"not saved: {name}: {why}")


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
