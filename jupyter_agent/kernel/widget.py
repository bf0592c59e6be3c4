"""The checkpoint-timeline widget under ``%%agent`` cells, and the work its buttons start.

Execution model (see docs/timeline.md): a kernel handles widget messages on
the same channel as cell executions, so a click is processed only once no cell
runs. A blocking ``%%agent`` cell therefore streams its checkpoints *to* the
widget as it goes, and anything a click starts that takes long — approving a
call, forking, or ``%%agent --background`` — runs on a background thread of the
kernel, leaving the kernel free for more clicks (Pause) and for other cells.

Updates stay cheap for long runs, and off the step's path: a new checkpoint is
only queued (:meth:`TimelineWidget.add`); the flusher thread sends what queued at
most every :data:`FLUSH_EVERY` seconds as one small ``append`` message (the new
entries in order, the summary fields they changed), never by resending the list,
whose trait holds a window of the latest entries, refreshed only when an execution
ends, the selection changes, or a frontend asks for more.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
from traitlets import Dict, List, Unicode

from .. import vocab
from ..config import Settings
from ..core.notebook_store import output_metadata
from ..errors import AgentError, NotWaiting
from ..loop.checkpoints import Events
from ..store.api import CheckpointRow, RunRow, Store
from ..views import diff as views_diff
from ..views import points
from ..views.checkpoint import detail
from ..views.timeline import WINDOW, Timeline, notebook_name
from .actions import Rewound, check_edit
from .runner import CellRequest, Outcome
from .runtime import AgentRuntime, Job, Key, current
from .slot import TEXT_REPR, TIMELINE_MIME, fallbacks

STATIC = Path(__file__).parent / "static"
LOG_LIMIT = 20_000  # characters of background output a widget keeps
SNAPSHOT_EVERY = 50  # appends between list refreshes that heal a view that missed some
#: Seconds a queued checkpoint may wait for the flusher: what queued meanwhile goes in
#: one message. 0: each checkpoint is sent by the step that wrote it (no flusher).
FLUSH_EVERY = 0.2
_ABSENT = object()


class TimelineWidget(anywidget.AnyWidget):
    """An agent's runs and checkpoints, live, with approve / fork / rewind actions."""

    _esm = STATIC / "timeline.js"
    _css = STATIC / "timeline.css"

    uid = Unicode("").tag(sync=True)  # lets every view of one model share its entries
    header = Dict().tag(sync=True)  # agent, notebook
    runs: List[dict] = List().tag(sync=True)  # the agent's runs as a tree (see Timeline.tree)
    run_id = Unicode("").tag(sync=True)  # the run whose history is shown
    entries = Dict().tag(sync=True)  # {run, first, items}: the latest entries of that history
    summary = Dict().tag(sync=True)  # status, step, tokens, size, busy …
    pending = Dict().tag(sync=True)  # the tool call waiting for approval
    detail = Dict().tag(sync=True)  # the opened checkpoint
    notice = Dict().tag(sync=True)  # {text, level, at}: outcome of the last action
    #: The last "compare with…": {run, step, other, text, a, b, messages, variables, files}.
    comparison = Dict().tag(sync=True)
    log = Unicode("").tag(sync=True)  # tail of background output

    def __init__(
        self,
        store: Store,
        notebook: str,
        agent: str,
        *,
        shell: Any,
        options: Callable[[], Settings] = Settings,
        window: int = WINDOW,
        runtime: AgentRuntime | None = None,
        timeline: Timeline | None = None,
    ) -> None:
        """``timeline``: the agent's, read already (a cell's, before its run), shown as it
        is rather than read again; else the store is read now."""
        super().__init__(uid=uuid.uuid4().hex)
        #: Who executes what this widget starts.
        self.runtime = runtime or current()
        self.timeline = timeline if timeline is not None else Timeline(store, notebook, agent)
        self.shell, self.options, self.window = shell, options, window
        # Concurrency: its place in the lock order is in the docstring of jupyter_agent.loop.
        self._lock = threading.RLock()
        self._appended = 0
        #: Checkpoints written, not yet sent; appended without a lock by the step's thread.
        self._queue: deque[tuple[RunRow, CheckpointRow]] = deque()
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        self._log: list[str] = []
        self._log_size = 0
        self._pending_display: threading.Thread | None = None  # see display_timeline(lazy=True)
        self.on_msg(self._on_message)
        self.runtime.register(self)
        self.refresh(reread=timeline is None)

    def __repr__(self) -> str:
        return TEXT_REPR.format(agent=self.timeline.agent)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The widget's view, with a text and an HTML fallback for where it cannot render."""
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is not None:  # (data, metadata)
            fallback = fallbacks(self.timeline.agent)
            bundle[0]["text/html"] = fallback["text/html"]
            bundle[0][TIMELINE_MIME] = fallback[TIMELINE_MIME]
        return bundle

    @property
    def key(self) -> Key:
        return self.timeline.key

    def close(self) -> None:
        self.runtime.unregister(self)
        self._wake.set()  # the flusher sees the widget closed, and ends
        super().close()

    # -- state pushed to frontends ----------------------------------------------------

    def refresh(self, run_id: str | None = None, *, reread: bool = True) -> None:
        """Re-read everything from the store (after an execution ended, or on request);
        ``reread=False``: send the timeline as it is (read already)."""
        with self._lock:
            self.flush()  # what is queued came first
            if reread:
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
            self._pending_display = None
            _display(self)

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
        busy = self.runtime.job(self.key) is not None
        return {**self.timeline.summary(), "busy": busy, "can_pause": busy}

    def add(self, run: RunRow, row: CheckpointRow) -> None:
        """A checkpoint was just written: queue it for the flusher; the step goes on at once.

        Takes no lock and sends nothing, so a slow frontend or a busy widget lock
        (a click being handled) never holds a step up.
        """
        self._queue.append((run, row))
        if FLUSH_EVERY <= 0:
            self.flush()
            return
        if self._flusher is None:
            self._start_flusher()
        self._wake.set()

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher is None:
                args = (weakref.ref(self), self._wake)
                self._flusher = threading.Thread(target=_flushing, args=args, daemon=True)
                self._flusher.name = "timeline-flusher"
                self._flusher.start()
                weakref.finalize(self, self._wake.set)  # a collected widget's flusher ends

    def flush(self) -> None:
        """Send the queued checkpoints now, in order, as one message.

        The entries, the summary fields that changed, and any other trait that
        changed with them; the traits are updated here without being sent again.
        """
        with self._lock:
            rows = [self._queue.popleft() for _ in range(len(self._queue))]
            if not rows:
                return
            entries: list[dict] = []
            start = 0
            reloaded = snapshot = runs = approval = False
            for run, row in rows:
                change = self.timeline.add(run, row)
                reloaded = reloaded or change.reloaded
                runs = runs or change.runs
                approval = approval or row.kind == "approval"
                if change.entry is not None and not change.reloaded:
                    if not entries:
                        start = change.index
                    entries.append(change.entry)
                    self._appended += 1
                    snapshot = snapshot or self._appended % SNAPSHOT_EVERY == 0
            if reloaded:  # the whole state is sent again, these entries with it
                self._push()
                return
            state: dict[str, Any] = {}
            if snapshot:
                state["entries"] = self.timeline.snapshot(self.window)
            if runs:
                state["runs"] = self.timeline.tree()
            if approval or self.pending:
                pending = self.timeline.pending()
                if pending != self.pending:
                    state["pending"] = pending
            summary = self._summary()
            delta = {k: v for k, v in summary.items() if self.summary.get(k, _ABSENT) != v}
            message: dict[str, Any] = {"type": "append", "run": self.timeline.selected}
            if entries:
                message.update(start=start, entries=entries)
            elif not delta and not state:
                return
            else:
                message["type"] = "update"
            if delta:
                message["summary"] = delta
            if state:
                message["state"] = state
            self.send(message)
            self._set_sent(summary=summary, **state)

    def _set_sent(self, **values: Any) -> None:
        """Set traits to what a message of ours already told the frontends, without resending.

        Stored as traitlets stores a value, without its validation and change
        notification: nothing observes these traits here, and the notification
        is what would resend them (a third of the cost of a checkpoint's message).
        A frontend that asks for the state later gets these values.
        """
        for name, value in values.items():
            self._trait_values[name] = value

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

    def compare(self, run_id: str, step: int, other: str) -> dict:
        """Compare a checkpoint with ``other``: a checkpoint number of the same run,
        ``RUN@N`` or ``NAME@N`` (another agent's too); shown beside the opened checkpoint."""
        with self._lock:
            tl = self.timeline
            run = tl.run(run_id)
            here = points.state_at(tl.store, run, int(step), tl.segments(run, whole=True))
            there = views_diff.other_point(tl.store, here, other, tl.notebook)
            diff = views_diff.compare(tl.store, here, there)
            self.comparison = {
                "run": run_id,
                "step": int(step),
                "other": other,
                "text": views_diff.text(here, there, diff),
                **views_diff.as_dict(here, there, diff),
            }
            return self.comparison

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
            raise NotWaiting("That call is no longer waiting for approval.")
        store = self.timeline.store
        settings = self.options()
        if pending.get("parent"):  # a child's call: resuming this agent answers it
            run = self.timeline.run(pending["parent"])
            forwarded = self.runtime.child_approval(run, decision, store)
            if forwarded is None:
                raise NotWaiting("That call is no longer waiting for approval.")
            request = forwarded[1]
        else:
            run = self.timeline.run(pending["run"])
            request = CellRequest.continuing(run, decision=decision)

        def work(events: Events, cancel: threading.Event) -> Outcome:
            return self.runtime.resume(run, request, settings, events, cancel=cancel, store=store)

        return self.runtime.start_job(self.key, work, store=store)

    def fork(self, run_id: str, step: int, instruction: str = "", **edit: str | None) -> Job:
        """Start a new run from a checkpoint, on a background thread.

        ``edit``: a "what if" fork's ``reply``, ``output`` or ``model``, checked here first.
        """
        self.refresh()
        self.timeline.run(run_id)
        check_edit(self.timeline, run_id, int(step), **edit)

        def work(events: Events, cancel: threading.Event) -> Outcome:
            return self.runtime.fork(
                self.timeline,
                run_id,
                int(step),
                instruction=instruction,
                settings=self.options(),
                events=events,
                cancel=cancel,
                **edit,
            )

        return self.runtime.start_job(self.key, work, store=self.timeline.store)

    def rewind(self, run_id: str, step: int) -> Rewound:
        """Put the namespace variables back as they were at a checkpoint."""
        result = self.runtime.rewind(self.timeline, run_id, int(step), self.options())
        self.refresh()
        self.say(result.message())
        return result

    def pause(self) -> bool:
        return self.runtime.pause(self.key)

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
                child = self.pending.get("agent")
                self.approve(content.get("code"), content.get("call_id"))
                self.say(_decided("Approved", child, self.timeline.agent))
            elif kind == "reject":
                child = self.pending.get("agent")
                self.reject(content.get("note") or "", content.get("call_id"))
                self.say(_decided("Rejected", child, self.timeline.agent))
            elif kind == "fork":
                edit = {k: content.get(k) for k in ("reply", "output", "model")}
                edit["model"] = (edit["model"] or "").strip() or None
                self.fork(content["run"], content["step"], content.get("instruction") or "", **edit)
                self.say(f"Forking from checkpoint {content['step']}…")
            elif kind == "compare":
                self.compare(content["run"], content["step"], str(content.get("other") or ""))
            elif kind == "rewind":
                self.rewind(content["run"], content["step"])
            elif kind == "pause" and self.pause():
                self.say("Pausing after the current step…")
        except AgentError as exc:
            self.say(str(exc), "error")
        except Exception as exc:  # a bug must show up in the widget, not vanish in a log
            self.say(f"{type(exc).__name__}: {exc}", "error")


def _flushing(ref: weakref.ref[TimelineWidget], wake: threading.Event) -> None:
    """A timeline's flusher: sends what queued, then waits :data:`FLUSH_EVERY` before the
    next message, so a fast run costs a few messages a second, its rows in order.

    Holds the widget only while it flushes: an unused timeline is still collected
    (its finalizer wakes this thread, which then ends).
    """
    while True:
        wake.wait()
        widget = ref()
        if widget is None or widget.comm is None:  # collected or closed
            return
        wake.clear()
        with contextlib.suppress(Exception):  # a closed comm: the cell's output says it all
            widget.flush()
        del widget
        time.sleep(FLUSH_EVERY)


def _decided(verb: str, child: str | None, agent: str) -> str:
    if child:
        return f"{verb} the call of child agent {child}; it continues, then {agent}…"
    return f"{verb}; continuing…"


# -- every open timeline of an agent hears about its checkpoints (via the runtime) --------


def widgets_of(key: Key) -> list[TimelineWidget]:
    return [v for v in current().views(key) if isinstance(v, TimelineWidget)]


def display_timeline(
    store: Store,
    notebook: str,
    agent: str,
    *,
    shell: Any,
    options: Callable[[], Settings],
    replace: bool = False,
    lazy: bool | None = None,
    slot: Any = None,
    timeline: Timeline | None = None,
) -> TimelineWidget:
    """Show a timeline; with ``replace``, close the one an earlier run of the cell showed.

    With ``lazy`` (the default with ``replace``: a cell's own timeline) it is
    displayed once the run has begun — its first checkpoint or output, a
    background job starting, or the execution ending well — so a run that fails
    before it starts (a configuration error) shows its error and no empty timeline.
    ``slot``: the display handle whose place it takes (see :mod:`.slot`), not lazy;
    ``timeline``: the agent's, read already, shown without reading it again.
    """
    widget = TimelineWidget(store, notebook, agent, shell=shell, options=options, timeline=timeline)
    if replace:
        with _cell_lock:
            old = _CELL_WIDGETS.pop(widget.key, None)
            _CELL_WIDGETS[widget.key] = widget
        if old is not None and widget.runtime.job(old.key) is None:
            old.close()
    if slot is None and (replace if lazy is None else lazy):
        widget._pending_display = threading.current_thread()
    else:
        _display(widget, slot)
    return widget


def _display(widget: TimelineWidget, slot: Any = None) -> None:
    """Display a timeline, its output's metadata the store's id, for the notebook to keep."""
    from IPython.display import display

    store, store_id = widget.timeline.store, None
    with contextlib.suppress(AgentError):  # the timeline says what is wrong with the store
        # A brand-new store's id comes with its database: made now, its first run begun.
        if (store_id := store.store_id()) is None and store.exists():
            store.flush()
            store_id = store.store_id()
    metadata = output_metadata(store_id) if store_id else None
    if slot is not None:
        slot.update(widget, metadata=metadata)
    else:
        display(widget, metadata=metadata)


_CELL_WIDGETS: dict[Key, TimelineWidget] = {}  # the timeline each agent's cell shows
# Concurrency: its place in the lock order is in the docstring of jupyter_agent.loop.
_cell_lock = threading.Lock()
