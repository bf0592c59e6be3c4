"""The agent runtime of a kernel: one registry of executions, claims that jobs carry."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

from jupyter_agent.config import RunPolicy
from jupyter_agent.errors import AgentBusy
from jupyter_agent.kernel.runtime import current


def test_a_job_started_as_another_ends_is_never_dropped(tmp_path: Path) -> None:
    """The moment an ending job frees its agent, a new job of it starts; it must stay known.

    Every line the ending job's thread runs tries to start the next job, so the
    next one starts at the first moment the agent is free, whatever the code in
    between; pause and wait_all must then still see it.
    """
    key = (str(tmp_path), "x")
    release = threading.Event()
    second: list[Any] = []

    def blocked(events: Any, cancel: threading.Event) -> None:
        release.wait(20)

    def quick(events: Any, cancel: threading.Event) -> None:
        return None

    def try_next(frame: Any, event: str, arg: Any) -> Any:
        """At each line (and the return) of the job thread's own function, start the next job."""
        if second or threading.current_thread() is threading.main_thread():
            return None
        caller = frame.f_back
        if event == "call":  # trace only the function the thread runs, not what it calls
            outermost = caller is not None and caller.f_code.co_name == "run"
            return try_next if outermost and "threading" in caller.f_code.co_filename else None
        with contextlib.suppress(AgentBusy):  # not free yet: try again at the next line
            second.append(current().start_job(key, blocked))
        return try_next

    threading.settrace(try_next)
    try:
        first = current().start_job(key, quick)
        assert first.join(20)
    finally:
        threading.settrace(None)  # type: ignore[arg-type]
    assert second, "the second job never started"
    try:
        assert current().pause(key), "a running job was reported as not running"
        assert not current().wait_all(0.2), "wait_all returned while a job still runs"
    finally:
        release.set()
    assert current().wait_all(20)


def test_a_continuation_the_cell_does_not_start_keeps_asking_for_approvals() -> None:
    """A run that asked for approvals goes on asking, for the same tools, unless told every tool."""
    quiet = RunPolicy()
    assert quiet.recorded_approval() is False
    assert quiet.continuing(False) is quiet
    assert quiet.continuing(True) == RunPolicy(approve=True)
    assert quiet.continuing(["python"]) == RunPolicy(approve=True, approve_tools=("python",))
    every = RunPolicy(approve=True)
    assert every.recorded_approval() is True
    assert every.continuing(["python"]) == every
    assert RunPolicy(approve=True, approve_tools=("python",)).recorded_approval() == ["python"]
