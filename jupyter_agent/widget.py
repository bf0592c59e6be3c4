"""The checkpoint-timeline widget under ``%%agent`` cells, and the work its buttons start.

Execution model (see docs/timeline.md): a kernel handles widget messages on
the same channel as cell executions, so a click is processed only once no cell
runs. A blocking ``%%agent`` cell therefore streams its checkpoints *to* the
widget as it goes, and anything a click starts that takes long — approving a
call, forking, or ``%%agent --background`` — runs on a background thread of the
kernel, leaving the kernel free for more clicks (Pause) and for other cells.

Updates stay cheap for long runs: a new checkpoint is sent as one small custom
message (``append``), never by resending the list; the list trait holds a
window of the latest entries, refreshed only when an execution ends, the
selection changes, or a frontend asks for more.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import anywidget
from traitlets import Dict, List, Unicode

from . import runner, vocab
from .agent import Events, RunOptions
from .render import TextEvents
from .runner import USER_ERRORS, Outcome
from .state import Delta
from .store_api import CheckpointRow, RunRow, Store
from .timeline import WINDOW, Rewound, Timeline, detail, fork, notebook_name, rewind

STATIC = Path(__file__).parent / "static"
#: The text/plain of the widget: shown only where the widget is not (no widget
#: manager, an untrusted notebook, nbconvert, a terminal), and what nbval
#: compares, so deterministic on purpose (no ids, times or counts).
TEXT_REPR = "Agent timeline of {agent}: not displayed here; %agent timeline {agent} shows it"
LOG_LIMIT = 20_000  # characters of background output a widget keeps
RESULT_LINES = 12  # lines of a tool's output echoed into the background output
SNAPSHOT_EVERY = 50  # appends between list refreshes that heal a view that missed some

Key = tuple[str, str]  # (notebook, agent)


class TimelineWidget(anywidget.AnyWidget):
    """An agent's runs and checkpoints, live, with approve / fork / rewind actions."""

    _esm = STATIC / "timeline.js"
    _css = STATIC / "timeline.css"

    uid = Unicode("").tag(sync=True)  # lets every view of one model share its entries
    header = Dict().tag(sync=True)  # agent, notebook
    runs = List().tag(sync=True)  # the agent's runs as a tree (see Timeline.tree)
    run_id = Unicode("").tag(sync=True)  # the run whose history is shown
    entries = Dict().tag(sync=True)  # {run, first, items}: the latest entries of that history
    summary = Dict().tag(sync=True)  # status, step, tokens, size, busy …
    pending = Dict().tag(sync=True)  # the tool call waiting for approval
    detail = Dict().tag(sync=True)  # the opened checkpoint
    notice = Dict().tag(sync=True)  # {text, level, at}: outcome of the last action
    log = Unicode("").tag(sync=True)  # tail of background output

    def __init__(
        self,
        store: Store,
        notebook: str,
        agent: str,
        *,
        shell: Any,
        options: Callable[[], RunOptions] = RunOptions,
        endpoint_args: dict | None = None,
        window: int = WINDOW,
    ) -> None:
        super().__init__(uid=uuid.uuid4().hex)
        self.timeline = Timeline(store, notebook, agent)
        self.shell = shell
        self.options = options
        self.endpoint_args = endpoint_args or {}
        self.window = window
        self._lock = threading.RLock()
        self._appended = 0
        self._log: list[str] = []
        self._log_size = 0
        self._pending_display: threading.Thread | None = None  # see display_timeline(lazy=True)
        self.on_msg(self._on_message)
        _register(self)
        self.refresh()

    def __repr__(self) -> str:
        return TEXT_REPR.format(agent=self.timeline.agent)

    @property
    def key(self) -> Key:
        return self.timeline.key

    def close(self) -> None:
        _unregister(self)
        super().close()

    # -- state pushed to frontends ----------------------------------------------------

    def refresh(self, run_id: str | None = None) -> None:
        """Re-read everything from the store (after an execution ended, or on request)."""
        with self._lock:
            self.timeline.load(run_id)
            self._push()
        if sys.exc_info()[0] is None:
            # An execution that ended without an error has something to show
            # (a restored run writes no checkpoint); one that failed before its
            # first checkpoint, e.g. on a configuration error, does not.
            self.show()

    def show(self) -> None:
        """Display a timeline whose display was deferred, in the thread that deferred it."""
        if self._pending_display is threading.current_thread():
            from IPython.display import display

            self._pending_display = None
            display(self)

    def _push(self) -> None:
        t = self.timeline
        with self.hold_sync():
            self.header = {
                "agent": t.agent,
                "notebook": notebook_name(t.notebook),
                "kinds": vocab.kinds(),  # the rows' icons and labels
                "statuses": vocab.statuses(),
            }
            self.runs = t.tree()
            self.run_id = t.selected
            self.entries = t.snapshot(self.window)
            self.summary = self._summary()
            self.pending = t.pending()
            self.log = "".join(self._log)

    def _summary(self) -> dict:
        busy = self.key in _JOBS
        return {**self.timeline.summary(), "busy": busy, "can_pause": busy}

    def add(self, run: RunRow, row: CheckpointRow) -> None:
        """A checkpoint was just written: send it, and only it, to the frontends."""
        with self._lock:
            change = self.timeline.add(run, row)
            if change.reloaded:
                self._push()
                return
            if change.entry is not None:
                self.send(
                    {
                        "type": "append",
                        "run": self.timeline.selected,
                        "start": change.index,
                        "entries": [change.entry],
                    }
                )
                self._appended += 1
            with self.hold_sync():
                if change.entry is not None and self._appended % SNAPSHOT_EVERY == 0:
                    self.entries = self.timeline.snapshot(self.window)
                if change.runs:
                    self.runs = self.timeline.tree()
                self.summary = self._summary()
                if row.kind == "approval" or self.pending:
                    self.pending = self.timeline.pending()

    def write(self, text: str) -> None:
        """Append background output (model text, progress, tool output)."""
        with self._lock:
            self._log.append(text)
            self._log_size += len(text)
            while self._log_size > LOG_LIMIT and len(self._log) > 1:
                self._log_size -= len(self._log.pop(0))
            self.send({"type": "log", "text": text})

    def say(self, text: str, level: str = "info") -> None:
        self.notice = {"text": text, "level": level, "at": time.time()}

    def job_changed(self) -> None:
        with self._lock:
            self.summary = self._summary()

    # -- actions (also the Python API) ---------------------------------------------------

    def show_run(self, run_id: str) -> None:
        with self._lock:
            self.timeline.select(self.timeline.run(run_id).run_id)
            self._push()

    def show_more(self, size: int) -> None:
        with self._lock:
            self.window = max(WINDOW, min(int(size), 100_000))
            self.entries = self.timeline.snapshot(self.window)

    def open_checkpoint(self, run_id: str, step: int) -> dict:
        """Open a checkpoint: decode its payload and show its messages and variables."""
        with self._lock:
            self.detail = detail(self.timeline, run_id, int(step))
            return self.detail

    def approve(self, code: str | None = None, call_id: str | None = None) -> Job:
        """Approve the pending call (with ``code``: run that instead) and continue the run."""
        if code is not None and code.strip() and code != self.pending.get("code"):
            return self._decide({"action": "edit", "code": code}, call_id)
        return self._decide({"action": "approve"}, call_id)

    def reject(self, note: str = "", call_id: str | None = None) -> Job:
        """Reject the pending call; the model receives ``note`` and continues."""
        return self._decide({"action": "reject", "note": note}, call_id)

    def _decide(self, decision: dict, call_id: str | None) -> Job:
        self.refresh()
        pending = self.pending
        if not pending or (call_id and pending.get("call_id") != call_id):
            raise runner.NotWaiting("That call is no longer waiting for approval.")
        run = self.timeline.run(pending["run"])

        def work(events: Events, cancel: threading.Event) -> Outcome:
            return runner.resume_run(
                store=self.timeline.store,
                shell=self.shell,
                run=run,
                options=self.options(),
                events=events,
                decision=decision,
                endpoint_args=self.endpoint_args,
                cancel=cancel,
            )

        return start_job(self.key, work, store=self.timeline.store)

    def fork(self, run_id: str, step: int, instruction: str = "") -> Job:
        """Start a new run from a checkpoint, on a background thread."""
        self.refresh()
        self.timeline.run(run_id)

        def work(events: Events, cancel: threading.Event) -> Outcome:
            # Its own view of the store: the widget's may change under a click meanwhile.
            timeline = Timeline(self.timeline.store, *self.key)
            timeline.load(run_id)
            return fork(
                timeline,
                self.shell,
                run_id,
                int(step),
                instruction=instruction,
                options=self.options(),
                events=events,
                endpoint_args=self.endpoint_args,
                cancel=cancel,
            )

        return start_job(self.key, work, store=self.timeline.store)

    def rewind(self, run_id: str, step: int) -> Rewound:
        """Put the namespace variables back as they were at a checkpoint."""
        with runner.claim(*self.key):
            self.refresh()
            result = rewind(self.timeline, self.shell, run_id, int(step))
        self.say(result.message())
        return result

    def pause(self) -> bool:
        return pause(self.key)

    # -- messages from the frontend ----------------------------------------------------

    def _on_message(self, _widget: Any, content: dict, _buffers: list) -> None:
        kind = content.get("type")
        try:
            if kind == "open":
                self.open_checkpoint(content["run"], content["step"])
            elif kind == "run":
                self.show_run(content["run"])
            elif kind == "more":
                self.show_more(content["size"])
            elif kind == "refresh":
                self.refresh()
            elif kind == "approve":
                self.approve(content.get("code"), content.get("call_id"))
                self.say("Approved; continuing…")
            elif kind == "reject":
                self.reject(content.get("note") or "", content.get("call_id"))
                self.say("Rejected; continuing…")
            elif kind == "fork":
                self.fork(content["run"], content["step"], content.get("instruction") or "")
                self.say(f"Forking from step {content['step']}…")
            elif kind == "rewind":
                self.rewind(content["run"], content["step"])
            elif kind == "pause" and self.pause():
                self.say("Pausing after the current step…")
        except USER_ERRORS as exc:
            self.say(str(exc), "error")
        except Exception as exc:  # a bug must show up in the widget, not vanish in a log
            self.say(f"{type(exc).__name__}: {exc}", "error")


# -- every open timeline of an agent hears about its checkpoints ------------------------

_WIDGETS: dict[Key, weakref.WeakSet[TimelineWidget]] = {}
_registry_lock = threading.Lock()


def _register(widget: TimelineWidget) -> None:
    with _registry_lock:
        _WIDGETS.setdefault(widget.key, weakref.WeakSet()).add(widget)


def _unregister(widget: TimelineWidget) -> None:
    with _registry_lock:
        _WIDGETS.get(widget.key, weakref.WeakSet()).discard(widget)


def widgets_of(key: Key) -> list[TimelineWidget]:
    with _registry_lock:
        return list(_WIDGETS.get(key, ()))


class WidgetEvents:
    """Progress of a run: as text (cell output, or background output), and to its timelines."""

    def __init__(
        self, key: Key, text: TextEvents, *, echo_results: bool = False, store: Store | None = None
    ) -> None:
        self.key = key
        self._text = text
        self._echo = echo_results
        if text.store is None:  # it counts the steps of resumed runs from the store
            text.store = store or _magics_store()

    def _show(self) -> None:
        """The run has begun: deferred timelines of the agent appear now, above its output."""
        for widget in widgets_of(self.key):
            widget.show()

    def text(self, chunk: str) -> None:
        self._show()
        self._text.text(chunk)

    def info(self, message: str) -> None:
        self._show()
        self._text.info(message)

    def notice(self, message: str) -> None:
        self._show()
        self._text.notice(message)

    def checkpoint(self, run: RunRow, row: CheckpointRow, delta: Delta) -> None:
        self._show()
        if self._echo and row.kind == "tool_result":
            # In a cell, the code's output shows as it runs; in the background it
            # cannot, so its result is shown here instead.
            for msg in delta.messages:
                lines = str(msg.get("content") or "").rstrip().splitlines()
                more = len(lines) - RESULT_LINES
                shown = lines[:RESULT_LINES] + ([f"… {more} more lines"] if more > 0 else [])
                self._text.info("\n".join("    " + line for line in shown))
        self._text.checkpoint(run, row, delta)
        for widget in widgets_of(self.key):
            widget.add(run, row)


class _Output:
    """A text stream into the background output of an agent's timelines."""

    def __init__(self, key: Key, fallback: TextIO | None) -> None:
        self.key = key
        self.fallback = fallback

    def write(self, text: str) -> int:
        widgets = widgets_of(self.key)
        for widget in widgets:
            widget.write(text)
        if not widgets and self.fallback is not None:
            self.fallback.write(text)
        return len(text)

    def flush(self) -> None:
        if self.fallback is not None:
            self.fallback.flush()


def display_timeline(
    store: Store,
    notebook: str,
    agent: str,
    *,
    shell: Any,
    options: Callable[[], RunOptions],
    endpoint_args: dict | None,
    replace: bool = False,
    lazy: bool | None = None,
) -> TimelineWidget:
    """Show a timeline; with ``replace``, close the one an earlier run of the cell showed.

    With ``lazy`` (the default with ``replace``: a cell's own timeline) it is
    displayed once the run has begun — its first checkpoint or output, a
    background job starting, or the execution ending well — so a run that fails
    before it starts (a configuration error) shows its error and no empty timeline.
    """
    from IPython.display import display

    widget = TimelineWidget(
        store, notebook, agent, shell=shell, options=options, endpoint_args=endpoint_args
    )
    if replace:
        with _registry_lock:
            old = _CELL_WIDGETS.pop(widget.key, None)
            _CELL_WIDGETS[widget.key] = widget
        if old is not None and old.key not in _JOBS:
            old.close()
    if replace if lazy is None else lazy:
        widget._pending_display = threading.current_thread()
    else:
        display(widget)
    return widget


def _magics_store() -> Store | None:
    """The store the ``%%agent`` magics of this shell use, if they are loaded."""
    ip = _ipython()
    magics = ip.magics_manager.registry.get("AgentMagics") if ip is not None else None
    return magics._store() if magics is not None else None


_CELL_WIDGETS: dict[Key, TimelineWidget] = {}


# -- background executions ------------------------------------------------------------


@dataclass
class Job:
    """An execution of an agent on a background thread of this kernel."""

    key: Key
    cancel: threading.Event
    thread: threading.Thread
    outcome: Outcome | None = None
    error: BaseException | None = None

    def join(self, timeout: float | None = None) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


_JOBS: dict[Key, Job] = {}


def start_job(
    key: Key,
    work: Callable[[Events, threading.Event], Outcome],
    *,
    done: Callable[[Outcome, TextIO], None] | None = None,
    store: Store | None = None,
) -> Job:
    """Run ``work`` on a thread, one per agent; its text goes to the agent's timelines."""
    runner.acquire(*key)
    for widget in widgets_of(key):
        widget.show()  # the cell returns now: its deferred timeline shows the progress
    out = _Output(key, None if widgets_of(key) else sys.stdout)
    events = WidgetEvents(key, TextEvents(out), echo_results=True, store=store)  # type: ignore[arg-type]
    cancel = threading.Event()

    def main() -> None:
        try:
            with _detached_output():
                job.outcome = work(events, cancel)
                if done is not None:
                    done(job.outcome, out)  # type: ignore[arg-type]
        except USER_ERRORS as exc:
            job.error = exc
            _tell(key, str(exc), "error", out)
        except BaseException as exc:
            job.error = exc
            out.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            _tell(key, f"{type(exc).__name__}: {exc}", "error", out)
        finally:
            runner.release(*key)
            _JOBS.pop(key, None)
            for widget in widgets_of(key):
                with contextlib.suppress(Exception):
                    widget.refresh()
            if job.error is None:
                for widget in widgets_of(key):
                    widget.say("")

    job = Job(
        key, cancel, threading.Thread(target=main, daemon=True, name=f"jupyter-agent {key[1]}")
    )
    _JOBS[key] = job
    for widget in widgets_of(key):
        widget.job_changed()
    job.thread.start()
    return job


def _tell(key: Key, text: str, level: str, out: Any) -> None:
    widgets = widgets_of(key)
    for widget in widgets:
        widget.say(text, level)
    if not widgets and out is not None:
        out.write(text + "\n")


def pause(key: Key) -> bool:
    """Ask a background execution to stop after its current step; False if none runs."""
    job = _JOBS.get(key)
    if job is None:
        return False
    job.cancel.set()
    return True


def wait_all(timeout: float = 60.0) -> bool:
    """Wait for every background execution of this kernel to end (True if they all did)."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = list(_JOBS.values())
        if not jobs:
            return True
        for j in jobs:
            if not j.join(max(0.0, deadline - time.monotonic())):
                return False


@contextlib.contextmanager
def _detached_output() -> Iterator[None]:
    """Keep a background thread's stray output out of whichever cell runs meanwhile.

    A kernel sends output with the "current" request as parent, so a frontend
    shows it under that cell. Output of this thread gets a parent of its own,
    which no cell owns; what it prints is in the run's checkpoints instead.
    """
    parent = {
        "header": {
            "msg_id": f"jupyter-agent-background-{uuid.uuid4().hex}",
            "msg_type": "execute_request",
            "session": "",
            "username": "",
            "version": "5.3",
        }
    }
    undo = []
    ip = _ipython()
    targets = [sys.stdout, sys.stderr, getattr(ip, "display_pub", None)]
    for target in targets:
        setter = getattr(target, "set_thread_parent", None)
        if setter is not None:
            with contextlib.suppress(Exception):
                undo.append((target, setter(parent)))
    try:
        yield
    finally:
        for target, token in undo:
            with contextlib.suppress(Exception):
                target.reset_thread_parent(token)


def _ipython() -> Any:
    from IPython import get_ipython

    return get_ipython()
