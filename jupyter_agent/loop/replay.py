"""Replay: execute a run again from its stored replies, and say where it first differs.

The model's replies come from the store (:class:`~jupyter_agent.model.replayed.ReplayedClient`:
no endpoint, no key, no request), the tools run as they are now, in the
kernel's namespace. Each tool call of the replay is compared with the recorded
one as its result is checkpointed: the call (tool and arguments, as shown),
its output, and the files it wrote beside the notebook (path and content hash,
when the run recorded them). The first difference stops the replay and is reported with both
sides, named by the recorded checkpoint's number; a recorded call of a tool
that no longer exists is one (its result is now an error).

The replay's own checkpoints go to a throwaway store in a temporary folder, so
the run it replays is only read: nothing is written to it, or to its store.
A run that never finished replays up to its last checkpoint: the recording
ends there.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..config import Settings
from ..core.files import describe
from ..core.state import Delta, FileRecord, RunState, decode_delta
from ..core.summary import summary_text
from ..errors import DelegateError
from ..model.replayed import Recorded, ReplayedClient
from ..store.api import CheckpointRow, RunRow, Store
from ..store.open import open_store
from ..tools.base import ToolResult
from ..tools.delegate import parse_delegate
from ..vocab import clipped
from .checkpoints import Collaborators, Events, Recorder, Stop, one_line
from .control import delegate_started
from .execution import Execution
from .runs import chain, load_state

#: Characters of each side of a difference shown in the report.
SHOWN = 2000


@dataclass
class Call:
    """One recorded tool call: what was called (None: no call was made) and what it gave."""

    call_id: str
    step: int
    call: tuple[str, str] | None = None
    output: str | None = None
    #: The files it wrote (None: the run did not watch them), as :attr:`Delta.files`.
    files: dict[str, FileRecord | None] | None = None
    #: A ``delegate`` call's child run: its recorded answer is the call's result in a replay.
    child_run: str | None = None


@dataclass
class Recording:
    """What a run recorded, in order: its replies and summaries, and its tool calls."""

    model: str
    window: int | None
    replies: list[Recorded] = field(default_factory=list)
    summaries: list[str] = field(default_factory=list)
    calls: dict[str, Call] = field(default_factory=dict)


def read_recording(store: Store, run: RunRow) -> Recording:
    """The replies, summaries and tool calls of ``run``'s history (forks: with their parents')."""
    rows = store.payloads(chain(store, run))
    recording = Recording(run.model, None)
    for row, payload in rows:
        delta = decode_delta(payload)
        if row.kind in ("start", "resume") and recording.window is None:
            recording.model = row.info.get("model") or recording.model
            recording.window = row.info.get("context_window")
        if row.kind == "model" and delta.messages:
            recording.replies.append(Recorded(delta.messages[0], dict(row.info.get("usage") or {})))
        elif row.kind == "fork" and delta.messages and delta.messages[0].get("role") == "assistant":
            recording.replies.append(Recorded(delta.messages[0], {}))  # a what-if's edited reply
        elif row.kind == "compaction" and row.info.get("usage") and delta.compaction:
            c = delta.compaction
            text = summary_text(
                str(c.get("summary") or ""), c.get("replies", 0), c.get("results", 0)
            )
            recording.summaries.append(text)
        elif row.kind in ("tool_call", "tool_result") and delta.tool_call_id:
            call = recording.calls.setdefault(
                delta.tool_call_id, Call(delta.tool_call_id, row.step)
            )
            if row.kind == "tool_call":
                call.call, call.step = _called(row), row.step
            elif delta.messages:
                call.output, call.files = result_of(row, delta)
                call.child_run = row.info.get("child_run")
    return recording


def result_of(row: CheckpointRow, delta: Delta) -> tuple[str, dict[str, FileRecord | None] | None]:
    """What a ``tool_result`` checkpoint gave back: its output, and the files its call wrote
    (None: the run did not watch files), as the recording and the replay both compare them."""
    output = str(delta.messages[0].get("content") or "") if delta.messages else ""
    return output, delta.files if "files" in row.info else None


def _called(row: CheckpointRow) -> tuple[str, str]:
    """The tool and its arguments as a ``tool_call`` checkpoint shows them."""
    delegated = row.info.get("delegate")
    if isinstance(delegated, dict):
        return "delegate", f"{delegated.get('agent')}: {delegated.get('task')}"
    return str(row.info.get("tool") or "python"), str(row.info.get("code") or "")


@dataclass
class ReplayedDelegate:
    """``delegate`` in a replay: no child runs; the child's recorded run answers the call.

    Its start is checkpointed as :class:`.control.DelegateStep` checkpoints it (so the
    call is compared: agent and task), then its result is the recorded child
    run's answer, read from the replayed run's store. A call the run never got
    an answer for stops the replay there, as the recording does.
    """

    recorder: Recorder
    store: Store
    recording: Recording

    def __call__(self, call: dict) -> None:
        call_id = call["id"]
        try:
            agent, task, model = parse_delegate((call.get("function") or {}).get("arguments") or "")
        except DelegateError as exc:
            self.recorder.tool_result(
                call_id, ToolResult(f"Error: {exc}", error=True, executed=False)
            )
            return
        delegate_started(self.recorder, call_id, agent, task, model)
        recorded = self.recording.calls.get(call_id)
        child = self.store.run(recorded.child_run) if recorded and recorded.child_run else None
        answer = None if child is None else load_state(self.store, child).final_answer()
        if child is None or answer is None:
            raise Stop()  # the run stopped waiting for this child: so does its replay
        self.recorder.tool_result(call_id, ToolResult(answer), info={"child_run": child.run_id})


@dataclass
class Divergence:
    """The first recorded step the replay does not repeat, with both sides."""

    step: int
    what: str  # "tool call", "output", "files", or "not reached"
    recorded: str
    replayed: str

    def text(self) -> str:
        return (
            f"checkpoint {self.step}: the {self.what} "
            f"{'differ' if self.what == 'files' else 'differs'}\n"
            f"  recorded: {_shown(self.recorded)}\n  replay:   {_shown(self.replayed)}"
        )


def _shown(text: str) -> str:
    return clipped(text, SHOWN).replace("\n", "\n            ")


@dataclass
class ReplayReport:
    """What a replay found: the first divergence, if any, and what it compared."""

    agent: str
    run_id: str
    replies: int
    compared: int
    seconds: float
    divergence: Divergence | None = None

    @property
    def same(self) -> bool:
        return self.divergence is None

    def text(self) -> str:
        where = f"agent {self.agent} (run {self.run_id})"
        counts = (
            f"{self.compared} tool calls compared, {self.replies} stored replies, "
            f"0 model requests, {self.seconds:.1f} s"
        )
        if self.divergence is None:
            return f"Replay of {where}: the same ({counts})."
        return f"Replay of {where} diverged at {self.divergence.text()}\n({counts})"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "same": self.same}


class Comparer:
    """The replay's events: each tool result is compared with the recorded one as it comes.

    On the first difference the replay is cancelled (it stops before its next step).
    """

    def __init__(self, recording: Recording, cancel: threading.Event) -> None:
        self.recording, self.cancel = recording, cancel
        self.calls: dict[str, tuple[str, str]] = {}
        #: The recorded calls whose results were compared.
        self.seen: set[str] = set()
        self.divergence: Divergence | None = None
        self.last = ""

    def text(self, chunk: str) -> None:
        """Replies are the recorded ones: nothing to show."""

    def info(self, message: str) -> None:
        """The replay reports at its end."""

    def notice(self, message: str) -> None:
        """The replay reports at its end."""

    def checkpoint(self, run: RunRow, row: CheckpointRow, delta: Delta) -> None:
        self.last = row.summary
        if self.divergence is not None or not delta.tool_call_id:
            return
        if row.kind == "tool_call":
            self.calls[delta.tool_call_id] = _called(row)
        elif row.kind == "tool_result":
            self._compare(delta.tool_call_id, *result_of(row, delta))

    def _compare(
        self, call_id: str, output: str, files: dict[str, FileRecord | None] | None = None
    ) -> None:
        recorded = self.recording.calls.get(call_id)
        if recorded is None or recorded.output is None:
            return  # in flight when the run stopped: nothing to compare with
        self.seen.add(call_id)
        called = self.calls.get(call_id)
        if called != recorded.call:
            self.divergence = Divergence(
                recorded.step, "tool call", _call_text(recorded.call), _call_text(called, output)
            )
        elif output != recorded.output:
            self.divergence = Divergence(recorded.step, "output", recorded.output, output)
        elif recorded.files is not None and files is not None and files != recorded.files:
            paths = sorted(recorded.files.keys() | files.keys())
            self.divergence = Divergence(
                recorded.step,
                "files",
                _files_text(recorded.files, paths),
                _files_text(files, paths),
            )
        if self.divergence is not None:
            self.cancel.set()

    def finish(self) -> Divergence | None:
        """The divergence, or the first recorded result the replay did not reach."""
        if self.divergence is None:
            missed = [
                c
                for c in self.recording.calls.values()
                if c.output is not None and c.call_id not in self.seen
            ]
            if missed:
                first = min(missed, key=lambda c: c.step)
                self.divergence = Divergence(
                    first.step,
                    "not reached",
                    _call_text(first.call),
                    f"the replay stopped before it: {one_line(self.last, 300)}",
                )
        return self.divergence


def _files_text(files: dict[str, FileRecord | None], paths: list[str]) -> str:
    """What a call did to each of ``paths``, a path and its content on each line."""
    return "\n".join(f"{p}: {describe(files[p]) if p in files else 'not written'}" for p in paths)


def _call_text(call: tuple[str, str] | None, output: str = "") -> str:
    if call is None:
        return "no call made" + (f": {output}" if output else "")
    return f"{call[0]}: {call[1]}"


def replay_run(store: Store, run: RunRow, shell: Any, settings: Settings) -> ReplayReport:
    """Execute ``run`` again from its stored replies in ``shell``'s namespace; see the module.

    Reads ``store``, writes to a temporary one. The approval policy, step limit
    and budget are off (the recording says where the run stopped); the context
    window is the run's, so it compacts where the run did.
    """
    started = time.monotonic()
    recording = read_recording(store, run)
    cancel = threading.Event()
    client = ReplayedClient(recording.model, recording.replies, recording.summaries, cancel)
    comparer = Comparer(recording, cancel)
    tools = [n for n in run.info.get("tools") or [] if callable(shell.user_ns.get(n))]
    copy = replace(
        run,
        run_id="replay-" + uuid.uuid4().hex[:10],
        parent_run=None,
        parent_step=None,
        info={**run.info, "tools": tools},
    )
    policy = replace(
        settings.policy,
        approve=False,
        approve_tools=(),
        max_steps=None,
        budget=None,
        context_window=recording.window or settings.policy.context_window,
    )
    events: Events = comparer
    with tempfile.TemporaryDirectory(prefix="jupyter-agent-replay-") as folder:
        scratch = open_store(os.path.join(folder, "replay.duckdb"))
        collaborators = Collaborators(scratch, shell, events, cancel)
        execution = Execution(
            copy, RunState(), client, collaborators, replace(settings, policy=policy)
        )
        execution.handlers["delegate"] = ReplayedDelegate(execution.recorder, store, recording)
        execution.execute(first=True)
    return ReplayReport(
        run.agent,
        run.run_id,
        len(recording.replies),
        len(comparer.seen),
        round(time.monotonic() - started, 3),
        comparer.finish(),
    )
