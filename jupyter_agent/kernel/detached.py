"""A background run's output: into its agent's views, and out of whichever cell runs meanwhile.

Used by :meth:`jupyter_agent.kernel.runtime.AgentRuntime.start_job` for the thread of a
``--background`` run.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TextIO

Key = tuple[str, str]  # (notebook, agent)


class ViewOutput:
    """A text stream into the background output of an agent's views."""

    def __init__(
        self, views: Callable[[Key], list[Any]], key: Key, fallback: TextIO | None
    ) -> None:
        self.views = views
        self.key = key
        self.fallback = fallback

    def write(self, text: str) -> int:
        views = self.views(self.key)
        for view in views:
            view.write(text)
        if not views and self.fallback is not None:
            self.fallback.write(text)
        return len(text)

    def flush(self) -> None:
        if self.fallback is not None:
            self.fallback.flush()


@contextlib.contextmanager
def detached_output(ip: Any) -> Iterator[None]:
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
    targets: list[Any] = [sys.stdout, sys.stderr, getattr(ip, "display_pub", None)]
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
