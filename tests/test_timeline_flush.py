"""The timeline widget is updated off the step's path: checkpoints are queued, and its
flusher thread sends them, in order, a few messages a second at most."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from IPython.core.interactiveshell import InteractiveShell

from jupyter_agent.kernel import widget
from jupyter_agent.store.api import CheckpointRow, RunRow

from . import test_timeline
from .test_timeline import AGENT, Frontend, make_widget, notebook
from .test_timeline import Store as DuckStore

# The fixtures of the widget's other tests: a shell with the extension, its store.
scripted, shell, store = test_timeline.scripted, test_timeline.shell, test_timeline.store


def rows(n: int, first: int = 1) -> list[CheckpointRow]:
    kinds = ("model", "tool_call", "tool_result")
    return [
        CheckpointRow("r1", s, kinds[s % 3], "running", "s", time.time(), 1.0, 10, 100)
        for s in range(first, first + n)
    ]


def started(store: DuckStore, tmp_path: Path, shell: InteractiveShell) -> Any:
    """A widget following run r1, its first checkpoint sent, and what a browser would hold."""
    w = make_widget(store, tmp_path, shell)
    run = RunRow("r1", notebook(tmp_path), AGENT, None, "p", "h", "m", None, None, time.time())
    w.add(run, CheckpointRow("r1", 0, "start", "running", "p", time.time(), 1.0, 0, 10))
    w.flush()
    return w, run, Frontend(w)


def steps_sent(front: Frontend) -> list[int]:
    """The checkpoint numbers of the entries the appends carried, in the order received."""
    out: list[int] = []
    for m in front.messages:
        content = m.get("content") or {}
        if m["method"] == "custom" and content.get("type") == "append":
            assert content["start"] == len(out) + 1  # contiguous with what came before
            out.extend(e["step"] for e in content["entries"])
    return out


def settle(w: widget.TimelineWidget, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while w._queue and time.monotonic() < deadline:
        time.sleep(0.01)
    with w._lock:  # a flush in progress has ended
        pass


def test_a_fast_run_ends_with_every_checkpoint_in_few_messages(
    store: DuckStore, tmp_path: Path, shell: InteractiveShell
) -> None:
    w, run, front = started(store, tmp_path, shell)
    n = 3000
    t0 = time.perf_counter()
    for row in rows(n):
        w.add(run, row)
    elapsed = time.perf_counter() - t0
    settle(w)
    assert steps_sent(front) == list(range(1, n + 1))
    # Coalesced: far fewer messages than checkpoints, the summary as the kernel holds it.
    assert len(front.messages) < n / 10, len(front.messages)
    assert front.state["summary"] == w.summary and w.summary["total"] == n + 1
    assert elapsed / n < 0.001, f"{elapsed / n * 1e3:.3f} ms per add"
    w.close()


def test_a_step_does_not_wait_for_the_widget(
    store: DuckStore, tmp_path: Path, shell: InteractiveShell
) -> None:
    w, run, front = started(store, tmp_path, shell)
    release = threading.Event()
    receive = front.receive
    blocked = threading.Event()

    def stuck(data: dict, metadata: Any = None, buffers: Any = None) -> None:
        blocked.set()
        release.wait(30)  # a frontend (or the IOPub thread) that does not take the message
        receive(data, metadata, buffers)

    w.comm.send = stuck  # type: ignore[method-assign]
    batch = rows(300)
    w.add(run, batch[0])
    assert blocked.wait(10)  # the flusher is inside send, holding the widget's lock
    t0 = time.perf_counter()
    for row in batch[1:]:
        w.add(run, row)
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.05, f"{len(batch) - 1} checkpoints waited {elapsed:.3f} s for the widget"
    release.set()
    settle(w)
    assert steps_sent(front) == [r.step for r in batch]
    w.close()
