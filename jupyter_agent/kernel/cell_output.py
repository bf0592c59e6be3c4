"""An agent cell's bounded output, shown in a kernel as one display updated in place.

The text and HTML are :class:`~jupyter_agent.views.cell.CellOutput`'s; this
module only displays them: once, with a display id, then by updating that
display (``update_display_data``), at most every :data:`EVERY` seconds, and at
once when the run ends or a checkpoint stops it. What a throttled write or
checkpoint left unshown is shown by a timer when nothing follows it: a tool
call or a model request may take long, and what led to it shows within
:data:`EVERY` seconds meanwhile. A step's checkpoint is not shown at once:
displaying costs the step's thread about half a millisecond (the formatters,
the message to the frontend), and a fast run writes hundreds of checkpoints a
second. A frontend and nbclient keep the last update only, so the notebook
holds one small output per cell. Under nbval, which drops display updates
(``in_place`` false), the output is displayed once, when the run ends.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..views.cell import CellOutput
from ..vocab import Status

EVERY = 0.25  # seconds between updates of the display while output streams in


class LiveCell(CellOutput):
    """A :class:`CellOutput` displayed in the running cell, and kept up to date there.

    Written by the cell's thread; the timer's thread only shows it. Concurrency:
    ``_lock`` is a leaf lock (see :mod:`jupyter_agent.loop`), held while the
    state changes or is shown.
    """

    def __init__(self, agent: str, *, every: float = EVERY, in_place: bool = True) -> None:
        super().__init__(agent)
        self.every = every
        self.in_place = in_place
        self._ended = False  # finished or failed: shown whatever ``in_place`` says
        self._handle: Any = None
        self._shown_at = 0.0
        # Concurrency: its place in the lock order is in the docstring of jupyter_agent.loop.
        self._lock = threading.RLock()
        #: Shows what a throttled update left unshown, when ``_due`` comes: one thread for
        #: the output's life, not one per update (starting a thread waits for it to run,
        #: which on a busy machine takes the step's thread a millisecond).
        self._timer: threading.Thread | None = None
        self._due: float | None = None
        self._wake = threading.Event()
        self._dirty = False
        # Displaying flushes the kernel's streams, which may write here again.
        self._updating = False

    def write(self, text: str) -> int:
        with self._lock:
            n = super().write(text)
        if text:
            self.update()
        return n

    def flush(self) -> None:
        # Displaying anything flushes the streams: a flush alone shows nothing new,
        # or this display would come before the one being shown (the timeline).
        if self._handle is not None:
            self.update()

    def reached(self, step: int, status: str, info: Any = None) -> None:
        with self._lock:
            super().reached(step, status, info)
        # A step's checkpoint waits for the throttle (the timer shows it if nothing
        # follows); one where the run stops (done, waiting for approval) shows at once.
        self.update(force=Status.of(status) is not Status.RUNNING)

    def show_now(self) -> None:
        """Show what was written at once, not within :data:`EVERY` seconds: a warning."""
        self.update(force=True)

    def finish(self, status: str, steps: int, answer: str | None) -> None:
        with self._lock:
            super().finish(status, steps, answer)
            self._ended = True
        self._wake.set()  # the timer's thread ends
        self.update(force=True)

    def failed(self) -> None:
        with self._lock:
            super().failed()
            self._ended = True
        self._wake.set()
        if self._handle is not None or not self.in_place:
            self.update(force=True)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, str]:
        with self._lock:
            return super()._repr_mimebundle_(**kwargs)

    def update(self, *, force: bool = False) -> None:
        """Show the output now: first displayed, then updated in place (throttled)."""
        with self._lock:
            if self._updating or not (self.in_place or self._ended):
                return
            if self._handle is not None and not force:
                wait = self.every - (time.monotonic() - self._shown_at)
                if wait > 0:
                    self._dirty = True
                    if self._due is None:  # show it then, unless a write does first
                        self._due = time.monotonic() + wait
                        if self._timer is None:
                            self._timer = threading.Thread(
                                target=self._trailing, name="jupyter-agent-cell", daemon=True
                            )
                            self._timer.start()
                        else:
                            self._wake.set()
                    return
            from IPython.display import display

            self._updating = True
            try:
                if self._handle is None:
                    self._handle = display(self, display_id=True)
                else:
                    self._handle.update(self)
                self._shown_at = time.monotonic()
                self._dirty = False
            finally:
                self._updating = False

    def _trailing(self) -> None:
        """The timer's thread: waits for ``_due``, shows what is unshown, until the run
        has ended with nothing unshown.

        ``_wake`` only says "look again": the state is read under the lock each time,
        so a wake-up cleared unseen loses nothing.
        """
        while True:
            with self._lock:
                if self._ended and not self._dirty:
                    self._timer = self._due = None
                    return
                due = self._due
            delay = None if due is None else due - time.monotonic()
            if delay is None or delay > 0:
                self._wake.wait(delay)
                self._wake.clear()
                continue
            with self._lock:
                self._due = None
                if self._dirty:
                    self.update(force=True)
