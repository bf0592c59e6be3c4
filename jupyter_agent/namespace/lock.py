"""The kernel's namespace lock: agents' code runs in the one namespace one at a time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..errors import Cancelled


class NamespaceLock:
    """Agents of a kernel run code in its namespace one at a time; a waiting one says so.

    Several agents may run at once (their model calls overlap), but two
    agents' code must never interleave in the one namespace. One lock per
    kernel, held by :class:`jupyter_agent.kernel.runtime.AgentRuntime`; its place in the
    lock order is in the docstring of :mod:`jupyter_agent.loop`. Re-entrant for
    its thread, so code that runs an agent (or a child in the same thread) does
    not wait for itself.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._thread: int | None = None
        self._holder = ""
        self._tool = ""
        self._depth = 0
        self._last = ""  # the agent whose code ran in the namespace last
        self._saving: dict[str, int] = {}  # agent -> steps whose values are being serialized

    @property
    def holder(self) -> str:
        """The agent running code in the namespace now ("" if none)."""
        with self._cond:
            return self._holder

    @contextmanager
    def turn(
        self,
        agent: str,
        say: Callable[[str], None],
        cancel: threading.Event | None = None,
        tool: str = "python",
    ) -> Iterator[bool]:
        """Hold the namespace for ``agent``; while another holds it, wait (``cancel`` ends that).

        Yields whether another agent's code ran in the namespace since ``agent``'s
        last turn: what changed meanwhile is that agent's, not this one's to save.
        """
        me = threading.get_ident()
        with self._cond:
            said = ""
            while self._thread not in (None, me) or (self._saving and self._thread != me):
                saver = next(iter(self._saving), "")
                doing = (
                    f"{self._holder} is running {self._tool}"
                    if self._holder
                    else (f"{saver} is saving its variables")
                )
                if said != doing:
                    said = doing
                    say(f"waiting for the namespace (agent {doing})")
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                self._cond.wait(0.1)
            others_ran = False
            if self._thread is None:
                self._thread, self._holder, self._tool = me, agent, tool
                others_ran, self._last = self._last not in ("", agent), agent
            self._depth += 1
        try:
            yield others_ran
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._thread, self._holder = None, ""
                    self._cond.notify_all()

    def saving(self, agent: str) -> Callable[[], None]:
        """Keep code out of the namespace while ``agent``'s values are serialized on a thread.

        Called while ``agent`` holds its turn; the returned function ends the wait.
        """
        with self._cond:
            self._saving[agent] = self._saving.get(agent, 0) + 1

        def saved() -> None:
            with self._cond:
                left = self._saving.pop(agent, 1) - 1
                if left:
                    self._saving[agent] = left
                self._cond.notify_all()

        return saved
