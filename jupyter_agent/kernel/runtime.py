"""The agent runtime of a kernel: its store, its executions, and who may run what.

One :class:`AgentRuntime` per kernel (:func:`current`; ``AgentMagics.runtime``)
owns the store handles, the registry of agents executing
in the kernel (in a cell, in the background, from a timeline click), and the
views that follow them. It starts, resumes, forks and rewinds runs; the
timeline widget only renders and calls it, so ``--background`` and
``%agent pause`` need no widget, e.g. in terminal IPython.

The registry holds one :class:`Claim` per executing agent. A background
:class:`Job` carries its claim and gives it back as the very last thing its
thread does, and only that claim: an agent is either free or claimed by one
execution, never "free but still listed", so a job started as another ends
is never lost to ``pause`` or :meth:`AgentRuntime.wait_all`.

Its threads and locks, and the order they are taken in, are those of
:mod:`jupyter_agent.loop` (Concurrency); children of ``delegate`` calls run in
:mod:`.delegation`, agents that wait for others in :mod:`.after`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from ..config import Settings
from ..core.state import Delta
from ..errors import AgentBusy, AgentError
from ..loop.checkpoints import Collaborators, Events
from ..loop.notify import Notifier
from ..namespace.baseline import Baselines
from ..namespace.lock import NamespaceLock
from ..store.api import CheckpointRow, RunRow, Store
from ..store.open import configured_target, open_store
from ..views.listing import awaited_child
from ..views.render import TextEvents
from ..views.timeline import Timeline
from ..vocab import ENV_STOP_FILE
from . import actions, runner
from .delegation import Delegation
from .detached import ViewOutput, detached_output
from .runner import CellRequest, Outcome

Key = tuple[str, str]  # (notebook, agent)


def stop_file() -> Callable[[], bool] | None:
    """Whether the stop file the kernel was started with exists (None: it has none).

    A headless run's cancel is told from another process (:data:`~jupyter_agent.vocab.ENV_STOP_FILE`):
    the interrupt that also tells it can be missed, and its agents must not go on
    meanwhile. Read once per execution; the check is one ``stat`` per step.
    """
    path = os.environ.get(ENV_STOP_FILE)
    return None if not path else lambda: os.path.exists(path)


RESULT_LINES = 12  # lines of a tool's output echoed into the background output


class View(Protocol):
    """What follows an agent live (the timeline widget)."""

    key: Key

    def show(self) -> None: ...
    def add(self, run: RunRow, row: CheckpointRow) -> None: ...
    def write(self, text: str) -> None: ...
    def refresh(self) -> None: ...
    def say(self, text: str, level: str = "info") -> None: ...
    def job_changed(self) -> None: ...


@dataclass(eq=False)
class Claim:
    """The right to execute one agent in this kernel; given back exactly once.

    Never waited for: a second claim raises ``AgentBusy`` (see :mod:`jupyter_agent.loop`).
    """

    key: Key
    job: Job | None = None


@dataclass(eq=False)
class Job:
    """An execution of an agent on a background thread of this kernel (see :mod:`jupyter_agent.loop`)."""

    key: Key
    cancel: threading.Event
    thread: threading.Thread
    claim: Claim
    outcome: Any = None
    error: BaseException | None = None

    def join(self, timeout: float | None = None) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


@dataclass
class AgentRuntime:
    """The executions of one kernel; see the module docstring."""

    shell: Any = None
    #: The store path; None: $JUPYTER_AGENT_STORE or the Jupyter data dir.
    store_path: str | None = None
    #: One agent's code at a time in this kernel's namespace; the others wait, saying so.
    namespace: NamespaceLock = field(default_factory=NamespaceLock, repr=False)
    #: What each run last saved in this namespace: a restore keeps what the user changed since.
    baselines: Baselines = field(default_factory=Baselines, repr=False)
    #: The webhook events on their way from this kernel's runs (waited for as it exits).
    notifier: Notifier = field(default_factory=Notifier, repr=False)
    #: Claims, views and store handles; a leaf lock (see :mod:`jupyter_agent.loop`).
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _claims: dict[Key, Claim] = field(default_factory=dict, repr=False)
    _views: dict[Key, weakref.WeakSet] = field(default_factory=dict, repr=False)
    _stores: dict[str, Store] = field(default_factory=dict, repr=False)

    def store(self) -> Store:
        """The store of the configuration; one handle per path."""
        spec = configured_target(self.store_path)
        with self._lock:
            store = self._stores.get(spec)
            if store is None:
                store = self._stores[spec] = open_store(spec)
            return store

    def _shell(self) -> Any:
        return self.shell if self.shell is not None else _ipython()

    # -- claims -----------------------------------------------------------------------

    def claim(self, key: Key) -> Claim:
        """Mark the agent as executing here, or raise :class:`AgentBusy`."""
        with self._lock:
            if key in self._claims:
                raise AgentBusy.here(key[1])
            claim = self._claims[key] = Claim(key)
            return claim

    def release(self, claim: Claim) -> None:
        """Give ``claim`` back; a claim given back already, or replaced, changes nothing."""
        with self._lock:
            if self._claims.get(claim.key) is claim:
                del self._claims[claim.key]
        for view in self.views(claim.key):
            view.job_changed()

    @contextlib.contextmanager
    def claimed(self, key: Key) -> Iterator[Claim]:
        claim = self.claim(key)
        try:
            yield claim
        finally:
            self.release(claim)

    def busy(self, key: Key) -> bool:
        with self._lock:
            return key in self._claims

    def claimed_agents(self, notebook: str) -> frozenset[str]:
        """The agents of ``notebook`` executing here now, in a cell or in the background."""
        with self._lock:
            return frozenset(agent for nb, agent in self._claims if nb == notebook)

    def job(self, key: Key) -> Job | None:
        """The background job executing the agent, if one does."""
        with self._lock:
            claim = self._claims.get(key)
            return claim.job if claim is not None else None

    def jobs(self) -> list[Job]:
        with self._lock:
            return [c.job for c in self._claims.values() if c.job is not None]

    # -- views ------------------------------------------------------------------------

    def register(self, view: View) -> None:
        with self._lock:
            self._views.setdefault(view.key, weakref.WeakSet()).add(view)

    def unregister(self, view: View) -> None:
        with self._lock:
            self._views.get(view.key, weakref.WeakSet()).discard(view)

    def views(self, key: Key) -> list[View]:
        with self._lock:
            return list(self._views.get(key, ()))

    def warn(self, key: Key, message: str) -> None:
        """Say ``message`` as a warning in the agent's open views (a dropped notification:
        it comes after the execution, when the cell's output is no longer where anyone looks)."""
        for view in self.views(key):
            with contextlib.suppress(Exception):  # a closed widget: the cell's output said it
                view.say(message, "warning")

    def refresh(self, key: Key, *, reread: bool = True) -> None:
        """Bring the agent's views up to date after an execution; ``reread=False``: it
        wrote nothing, so only show a view whose display waited for it."""
        for view in self.views(key):
            with contextlib.suppress(Exception):
                view.refresh() if reread else view.show()

    def events(
        self, key: Key, text: TextEvents, *, echo_results: bool = False, store: Store | None = None
    ) -> LiveEvents:
        if text.store is None:  # it counts the steps of resumed runs from the store
            text.store = store or self.store()
        return LiveEvents(self, key, text, echo_results=echo_results)

    # -- runs -----------------------------------------------------------------------

    def _collaborators(
        self,
        events: Events,
        cancel: threading.Event | None = None,
        store: Store | None = None,
        decisions: Mapping[str, dict] | None = None,
    ) -> Collaborators:
        """What a run executed here works with: children run in this runtime, and the
        namespace is shared (``decisions``: answers for delegated runs, by run id)."""
        return Collaborators(
            store=store or self.store(),
            shell=self._shell(),
            events=events,
            cancel=cancel,
            stop_asked=stop_file(),
            children=Delegation(self, decisions),
            namespace=self.namespace,
            baselines=self.baselines,
            warn=self.warn,
            notifier=self.notifier,
        )

    def run(
        self,
        request: CellRequest,
        settings: Settings,
        events: Events,
        *,
        cancel: threading.Event | None = None,
        reads: contextlib.ExitStack | None = None,
    ) -> Outcome:
        """Start, resume or restore the agent of a cell (:func:`runner.run_cell`).

        ``reads``: a session of :meth:`store` opened by the caller, e.g. around the
        cell's timeline (:meth:`reads`); the run closes it before its first model request.
        """
        collaborators = self._collaborators(events, cancel, decisions=request.child_decisions)
        return runner.run_cell(request, collaborators, settings, reads)

    def child_approval(
        self, run: RunRow, decision: dict, store: Store | None = None
    ) -> tuple[RunRow, CellRequest] | None:
        """Answer the approval a delegated run under ``run`` waits on, by resuming ``run``.

        For a run paused only because its child (or a child of it) waits for an
        approval: that child's run, and the request under which resuming ``run``
        hands ``decision`` to the child as it resumes it, so the child continues
        and then ``run``, in one execution, and the delegate call's result is
        written once. None when no child of ``run`` waits for an approval.
        """
        found = awaited_child(store or self.store(), run)
        if found is None:
            return None
        child, _ = found
        return child, CellRequest.continuing(run, child_decisions={child.run_id: decision})

    def reads(self) -> contextlib.ExitStack:
        """A session of :meth:`store` for :meth:`run` to close: what a cell reads before
        its first model request (its timeline's first load too) opens the store once.

        Use it as a context manager around building the timeline and :meth:`run`, so
        it is closed also when the run never starts.
        """
        reads = contextlib.ExitStack()
        reads.enter_context(self.store().session())
        return reads

    def resume(
        self,
        run: RunRow,
        request: CellRequest,
        settings: Settings,
        events: Events,
        *,
        cancel: threading.Event | None = None,
        store: Store | None = None,
    ) -> Outcome:
        """Continue a run from its last checkpoint (:func:`runner.resume_run`)."""
        decisions = request.child_decisions
        collaborators = self._collaborators(events, cancel, store, decisions)
        return runner.resume_run(run, request, collaborators, settings)

    def fork(
        self,
        source: Timeline,
        run_id: str,
        step: int,
        *,
        instruction: str,
        settings: Settings,
        events: Events,
        cancel: threading.Event | None = None,
        **edit: str | None,
    ) -> Outcome:
        """A new run from a checkpoint, from a view of its own (``source`` may change meanwhile).

        ``edit``: the ``reply``, ``output`` or ``model`` of a "what if" fork (:func:`actions.fork`).
        """
        view = Timeline(source.store, *source.key)
        view.load(run_id)
        collaborators = self._collaborators(events, cancel, view.store)
        return actions.fork(
            view,
            run_id,
            step,
            instruction=instruction,
            collaborators=collaborators,
            settings=settings,
            **edit,
        )

    def rewind(
        self, source: Timeline, run_id: str, step: int, settings: Settings
    ) -> actions.Rewound:
        """Put the namespace variables back as they were at a checkpoint (and, by
        ``settings.files``, the files)."""
        with self.claimed(source.key):
            source.load()
            return actions.rewind(source, self._shell(), run_id, step, settings.files)

    # -- background jobs --------------------------------------------------------------

    def start_job(
        self,
        key: Key,
        work: Callable[[Events, threading.Event], Any],
        *,
        done: Callable[[Any, TextIO], None] | None = None,
        store: Store | None = None,
    ) -> Job:
        """Run ``work`` on a thread, one per agent; its text goes to the agent's views."""
        claim = self.claim(key)
        for view in self.views(key):
            view.show()  # the cell returns now: its deferred timeline shows the progress
        out = ViewOutput(self.views, key, None if self.views(key) else sys.stdout)
        events = self.events(key, TextEvents(out), echo_results=True, store=store)  # type: ignore[arg-type]
        cancel = threading.Event()

        def main() -> None:
            try:
                with detached_output(_ipython()):
                    job.outcome = work(events, cancel)
                    if done is not None:
                        done(job.outcome, out)  # type: ignore[arg-type]
            except BaseException as exc:
                job.error = exc
                if not isinstance(exc, AgentError):
                    out.write(
                        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                    )
                    self._tell(key, f"{type(exc).__name__}: {exc}", "error", out)
                else:
                    self._tell(key, str(exc), "error", out)
            finally:
                self.refresh(key)
                if job.error is None:
                    for view in self.views(key):
                        view.say("")
                self.release(claim)  # the last thing: the agent is free from here on

        thread = threading.Thread(target=main, daemon=True, name=f"jupyter-agent {key[1]}")
        job = Job(key, cancel, thread, claim)
        claim.job = job
        for view in self.views(key):
            view.job_changed()
        thread.start()
        return job

    def _tell(self, key: Key, text: str, level: str, out: Any) -> None:
        views = self.views(key)
        for view in views:
            view.say(text, level)
        if not views and out is not None:
            out.write(text + "\n")

    def pause(self, key: Key) -> bool:
        """Ask a background execution to stop after its current step; False if none runs."""
        job = self.job(key)
        if job is None:
            return False
        job.cancel.set()
        return True

    def wait_all(self, timeout: float = 60.0) -> bool:
        """Wait for every background execution of this kernel to end (True if they all did)."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs()
            if not jobs:
                return True
            for job in jobs:
                if not job.join(max(0.0, deadline - time.monotonic())):
                    return False


class LiveEvents:
    """Progress of a run: as text (cell output, or background output), and to its views."""

    def __init__(
        self, runtime: AgentRuntime, key: Key, text: TextEvents, *, echo_results: bool = False
    ) -> None:
        self.runtime = runtime
        self.key = key
        self._text = text
        self._echo = echo_results

    def _show(self) -> None:
        """The run has begun: deferred views of the agent appear now, above its output."""
        for view in self.runtime.views(self.key):
            view.show()

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
        for view in self.runtime.views(self.key):
            view.add(run, row)


def _ipython() -> Any:
    from IPython import get_ipython

    return get_ipython()


_current: AgentRuntime | None = None
#: Makes the kernel's one runtime; a leaf lock (see :mod:`jupyter_agent.loop`).
# Concurrency: its place in the lock order is in the docstring of jupyter_agent.loop.
_current_lock = threading.Lock()


def current() -> AgentRuntime:
    """This kernel's runtime (the one the ``%%agent`` magics use)."""
    global _current
    with _current_lock:
        if _current is None:
            _current = AgentRuntime(shell=_ipython())
        return _current
