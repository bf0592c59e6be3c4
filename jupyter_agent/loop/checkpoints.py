"""The single place where a run's state changes: write a checkpoint, then apply it.

Every step of an execution ends in :meth:`Recorder.checkpoint`, which writes
the checkpoint to the run's journal and only then applies it to the
:class:`~jupyter_agent.core.state.RunState` and tells the :class:`Events`. A
checkpoint is written whole or not at all: Ctrl-C is held back while it is
written (:func:`shield_from_interrupt`).

One exception to "written before the next step begins": a ``tool_result``
whose large changed values are still being serialized (:class:`Later`) is
applied at once, so the model can be asked for the next step meanwhile, and
written by :meth:`Recorder.write_saved` once they are: before any other
checkpoint, and so before code runs again. Until then its call is in flight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..core.redaction import StreamRedactor, redact
from ..core.state import RUNNING, Delta, FileRecord, RunState, encode_delta
from ..namespace import tracking as namespace
from ..namespace.baseline import Baselines
from ..namespace.files import Hashing, Saved, Watch
from ..namespace.lock import NamespaceLock
from ..store.api import MAX_ROW_TOKENS, CheckpointRow, RunRow, RunWriterLike, Store
from ..tools.base import ToolResult
from ..tools.delegate import Children

if TYPE_CHECKING:
    from .notify import Notifier

SUMMARY_LIMIT = 120

try:  # the C function: ``signal.signal`` wraps it in enum conversions, 12 µs a checkpoint
    from _signal import signal as _set_handler
except ImportError:  # not CPython
    _set_handler = signal.signal


class Events(Protocol):
    """Where a run reports progress: the text renderer, the timeline widget, or both."""

    def text(self, chunk: str) -> None: ...
    def info(self, message: str) -> None: ...
    def notice(self, message: str) -> None: ...
    def checkpoint(self, run: RunRow, row: CheckpointRow, delta: Delta) -> None: ...


class RedactedEvents:
    """A run's events with its secrets redacted: the one way its own text reaches a cell.

    The model's streamed reply is redacted a line at a time (a secret may be
    split between chunks); notices and info at once. A checkpoint's delta is
    redacted already (it is what the store holds). What tools print is redacted
    by :func:`~jupyter_agent.tools.python.redacting` on its way to the cell.
    """

    def __init__(self, events: Events, secrets: list[str]) -> None:
        self._events = events
        self._secrets = secrets
        self._stream = StreamRedactor(secrets)

    def text(self, chunk: str) -> None:
        shown = self._stream.feed(chunk)
        if shown:
            self._events.text(shown)

    def _end_text(self) -> None:
        rest = self._stream.drain()
        if rest:
            self._events.text(rest)

    def info(self, message: str) -> None:
        self._end_text()
        self._events.info(redact(message, self._secrets))

    def notice(self, message: str) -> None:
        self._end_text()
        self._events.notice(redact(message, self._secrets))

    def checkpoint(self, run: RunRow, row: CheckpointRow, delta: Delta) -> None:
        self._end_text()
        self._events.checkpoint(run, row, delta)


@dataclass(frozen=True)
class Collaborators:
    """What an execution works with besides its settings: given, never configured."""

    store: Store
    #: The IPython shell whose namespace the agent's code runs in (``user_ns``).
    shell: Any
    events: Events
    #: Set to pause the execution after its current step (None: a fresh, unset one).
    cancel: threading.Event | None = None
    #: Asked between two steps, as ``cancel`` is: True pauses the execution the same way.
    #: For a stop told from outside the kernel's process, which cannot set ``cancel``
    #: (None: only ``cancel`` stops it). Cheap: it is asked before every step.
    stop_asked: Callable[[], bool] | None = None
    #: Runs children for the ``delegate`` tool; None: neither it nor ``read_agent`` is offered.
    children: Children | None = None
    #: The kernel's namespace lock: one agent's code runs at a time (the runtime's).
    namespace: NamespaceLock | None = None
    #: What the kernel's runs last saved there, so a restore keeps the user's changes
    #: (the runtime's; None: a restore puts every saved value back).
    baselines: Baselines | None = None
    #: Says a warning about an agent (notebook, agent) where its status is read, for what
    #: happens after its execution ended, e.g. a dropped notification (the runtime's: the
    #: agent's open timelines; None: only the run's output says it).
    warn: Callable[[tuple[str, str], str], None] | None = None
    #: Tells the webhooks where an execution stopped; one per kernel (the runtime's), so an
    #: event on its way is not sent again by a re-run meanwhile. None: no webhook is told.
    notifier: Notifier | None = None


class Stop(Exception):
    """Ends an execution at a checkpoint that has already been written."""


def one_line(text: str, limit: int = SUMMARY_LIMIT) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: How a ``tool_result``'s delta, info and blobs are made from its values and files saved.
Compose = Callable[[namespace.Snapshot, Saved], tuple[Delta, dict, dict[str, bytes]]]


@dataclass
class Later:
    """A ``tool_result`` applied before its large values were serialized or its files
    hashed (see :meth:`Recorder.checkpoint`): their :class:`namespace.Saving` and
    :class:`Hashing`, and how to make the checkpoint's delta, info and blobs once done."""

    saving: namespace.Saving | None
    compose: Compose
    files: Hashing | None = None
    row: CheckpointRow | None = None  # the row as applied; written with the values' info


class Recorder:
    """Writes one execution's checkpoints to its journal and applies them to its state."""

    #: Changed values this large in memory are serialized while the model is asked (None: never).
    save_later_from: int | None = namespace.SAVE_LATER_BYTES

    def __init__(
        self, run: RunRow, state: RunState, collaborators: Collaborators, secrets: list[str]
    ) -> None:
        self.run, self.state = run, state
        self.shell = collaborators.shell
        self.events = RedactedEvents(collaborators.events, secrets)
        self.lock = collaborators.namespace
        self.secrets = secrets
        self.writer: RunWriterLike | None = None
        baselines = collaborators.baselines
        self.tracker = namespace.Tracker(baselines.of(run.run_id) if baselines else None)
        self._last = time.monotonic()
        #: A checkpoint applied, not written yet (see :meth:`checkpoint`).
        self._later: Later | None = None
        #: The notebook folder's files, watched around code calls (None: not watched).
        self.files: Watch | None = None
        self._told: set[str] = set()  # what about files the cell was told, once each

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
        later: Later | None = None,
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
        tokens = min(max(int(tokens), 0), MAX_ROW_TOKENS)  # what the column holds
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
        with shield_from_interrupt():
            for digest, data in (blobs or {}).items():
                self.writer.put_blob(digest, data)
            self.writer.put_checkpoint(row, payload, durable=durable)

    def write_saved(self) -> None:
        """Write the checkpoint applied before its large values were serialized, once they are."""
        later, self._later = self._later, None
        if later is None or later.row is None:
            return
        with shield_from_interrupt():
            saved = later.saving.result() if later.saving else namespace.Snapshot()
            files = later.files.result() if later.files else Saved()
        delta, info, blobs = later.compose(saved, files)
        payload = encode_delta(delta)
        size = len(payload) + sum(len(b) for b in blobs.values())
        row = dataclasses.replace(later.row, info=info, size=size)
        self._write(row, payload, blobs, durable=True)
        self.state.bind(saved.vars, saved.unsaved)
        self.state.bind_files(delta.files)
        self.events.checkpoint(self.run, row, delta)
        for name, why in saved.unsaved.items():
            self.events.notice(f"not saved: {name}: {why}")
        self._tell_unversioned(files)

    @property
    def sending(self) -> Callable[[], None] | None:
        """What starts the serializing of large values pending, as the model request goes out."""
        saving = self._later.saving if self._later is not None else None
        return saving.go if saving is not None else None

    def files_before(self) -> None:
        """Scan the notebook's folder as code is about to run (see :mod:`..namespace.files`)."""
        if self.files is not None:
            self.files.before()

    def _files_of_call(self, ran: bool) -> tuple[bool, Saved, Hashing | None]:
        """Whether a call's files were watched; those hashed now, and those being hashed.

        Files up to :attr:`save_later_from` bytes in all are hashed at once, so
        the call's result is durable before the model is asked, as without files;
        more are hashed on a thread meanwhile (its result is written once they are).
        """
        watch = self.files
        if watch is None or not ran:
            return False, Saved(), None
        changes = watch.after()
        if watch.truncated and "limit" not in self._told:
            self._told.add("limit")
            self.events.notice(
                f"the notebook's folder holds more than {watch.folder.policy.scan_limit:,} "
                "files: the files past them (in name order) are not versioned"
            )
        if not changes:
            return changes is not None, Saved(), None
        assert self.writer is not None
        hashing = watch.hash(changes, self.writer.prepare_blob)
        size = sum(stat[0] for stat in changes.written.values())
        if self.save_later_from is None or size < self.save_later_from:
            return True, hashing.result(), None
        return True, Saved(), hashing

    def _tell_unversioned(self, files: Saved) -> None:
        """Say once per execution which files were not versioned (over the cap, unreadable)."""
        if files.unversioned and "cap" not in self._told:
            self._told.add("cap")
            listed = ", ".join(f"{p} ({why})" for p, why in files.unversioned.items())
            self.events.notice(
                f"files not versioned: {listed}; they are listed with the checkpoint, and a "
                "rewind or fork leaves them as they are"
            )

    def tool_result(
        self,
        call_id: str,
        result: ToolResult,
        status: str = RUNNING,
        *,
        tokens: int = 0,
        info: dict | None = None,
        in_kernel: bool = True,
    ) -> None:
        """A call's result as a checkpoint, with what it changed in the namespace.

        Changed values of :attr:`save_later_from` bytes and more are serialized on
        a thread while the model is asked for the next step (see :meth:`checkpoint`);
        other agents' code waits meanwhile (:meth:`NamespaceLock.saving`).
        """
        ran = in_kernel and result.executed  # nothing else can change the namespace
        secrets = self.secrets
        snap = self.tracker.snapshot(
            self.shell.user_ns,
            self.state.vars,
            secrets,
            result.touched,
            ran=ran,
            later_from=self.save_later_from if ran else None,
        )
        watched, now, hashing = self._files_of_call(ran)
        output = redact(result.output, secrets)
        outputs = redact(result.outputs, secrets)
        message = {"role": "tool", "tool_call_id": call_id, "content": output}
        first = output.strip().splitlines()[-1] if output.strip() else ""

        def compose(
            saved: namespace.Snapshot, later: Saved
        ) -> tuple[Delta, dict, dict[str, bytes]]:
            """The checkpoint's delta, info and blobs with the values and files saved later."""
            files = Saved({**now.records, **later.records}, {**now.blobs, **later.blobs})
            vars = {**snap.vars, **saved.vars}
            unsaved = {**snap.unsaved, **saved.unsaved}
            delta = Delta(
                messages=[message],
                vars=vars,
                unsaved=unsaved,
                tool_call_id=call_id,
                outputs=outputs or None,
                files=files.records,
            )
            values: dict = {
                "vars": {**snap.info, **saved.info},
                "deleted": [n for n, h in vars.items() if h is None],
                "unsaved": unsaved,
                "blobs": [*(h for h in vars.values() if h), *_versions(files.records)],
                "error": result.error,
            }
            if watched:  # the replay compares the files written
                values["files"] = sorted(files.records)
            blobs = {**snap.blobs, **saved.blobs, **files.blobs}
            return delta, {**values, **(info or {})}, blobs

        later = Later(None, compose, hashing) if hashing is not None else None
        if snap.later:
            lock = self.lock
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
            later = Later(saving, compose, hashing)
        delta, values, blobs = compose(namespace.Snapshot(), Saved())
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
        self._tell_unversioned(now)
        if snap.unsaved:
            for name, why in snap.unsaved.items():
                self.events.notice(f"not saved: {name}: {why}")
        for mime, why in result.dropped:
            self.events.notice(f"not saved: {mime} of this call's output: {why}")


def _versions(files: dict[str, FileRecord | None]) -> list[str]:
    """The blobs a call's files refer to, so that pruning keeps them."""
    return [str(r["sha256"]) for r in files.values() if r and "sha256" in r]


@contextlib.contextmanager
def shield_from_interrupt() -> Iterator[None]:
    """Hold Ctrl-C back until a checkpoint is written whole (main thread only).

    Only the main thread gets signals; see :mod:`jupyter_agent.loop` for the others.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple] = []
    previous = _set_handler(signal.SIGINT, lambda *args: received.append(args))
    try:
        yield
    finally:
        _set_handler(signal.SIGINT, previous)
        if received and callable(previous):
            previous(*received[0])
