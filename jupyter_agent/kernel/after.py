"""``%%agent --after A,B``: an agent that starts once other agents of its notebook are done.

The agents waited for are named on the cell's line, checked before anything
runs (no waiting for itself, for an unknown agent, or in a cycle), and recorded
on the new run (``info["after"]``), so the cycle check sees what each agent
waits for. Their status is read from the store, so they may run in another
kernel too; an agent this kernel has claimed (started or resumed, in the
background too) counts as running even before its job has written anything, so
Run All of a notebook waits for it rather than calling it unknown or stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Set

from ..core.state import DONE, RUNNING, STALLED
from ..errors import Cancelled, UsageProblem
from ..store.api import Store
from ..views.listing import run_status


class After:
    """The agents of ``notebook`` named by ``after``, which an agent waits for."""

    def __init__(
        self,
        store: Store,
        notebook: str,
        after: list[str],
        here: Callable[[], Set[str]] = frozenset,
    ) -> None:
        self.store = store
        self.notebook = notebook
        self.after = after
        #: The agents of the notebook claimed in this kernel now (running, or about to).
        self.here = here

    def check(self, agent: str) -> None:
        """Refuse ``--after`` naming the agent itself, an unknown agent, or making a cycle."""
        after = self.after
        if agent in after:
            raise UsageProblem(f"--after {agent}: an agent cannot wait for itself.")
        latest = {r.agent: r for r in self.store.runs(notebook=self.notebook)}
        here = self.here()
        unknown = [name for name in after if name not in latest and name not in here]
        if unknown:
            known = ", ".join(sorted(latest)) or "none yet"
            raise UsageProblem(
                f"--after {unknown[0]}: no agent of that name in this notebook (agents here: "
                f"{known}). Run it first, or correct the name."
            )
        waits = {name: list(run.info.get("after") or []) for name, run in latest.items()}
        waits[agent] = after
        path = cycle(waits, agent)
        if path:
            raise UsageProblem(
                "--after makes a cycle: " + " → ".join(path) + "; an agent waits for itself."
            )

    def pending(self) -> dict[str, tuple[str, str]]:
        """The agents waited for whose latest run is not done: name → (status, its words)."""
        here = self.here()  # before the store: a job that ends meanwhile has written its end
        store = self.store
        latest = {r.agent: r for r in store.runs(notebook=self.notebook) if r.agent in self.after}
        live = store.live_runs()
        last = store.latest_checkpoints([r.run_id for r in latest.values()])
        out: dict[str, tuple[str, str]] = {}
        for name in self.after:
            run = latest.get(name)
            if name in here:
                out[name] = (RUNNING, "running in this kernel")
                continue
            if run is None:
                out[name] = ("missing", "deleted")
                continue
            status, text, _ = run_status(store, run, live, last.get(run.run_id))
            if status != DONE:
                out[name] = (status, text)
        return out

    def wait(
        self,
        say: Callable[[str], None],
        *,
        cancel: threading.Event | None = None,
        until_done: bool = False,
        poll: float = 0.2,
    ) -> dict[str, tuple[str, str]]:
        """Wait while the agents waited for run; what is still pending, empty once all are done.

        A dependency that stopped unfinished (interrupted, paused, failed) ends
        the wait at once, unless ``until_done``: a background agent keeps
        waiting for it to be resumed, here or in another kernel. What is
        returned is what the wait saw last, so a sentence about it names them.
        """
        said: dict[str, str] = {}
        while True:
            pending = self.pending()
            if not pending:
                return pending
            for name, (_status, text) in pending.items():
                if said.get(name) != text:
                    say(f"waiting for {name} ({text})")
                    said[name] = text
            stopped = all(status not in (RUNNING, STALLED) for status, _ in pending.values())
            if stopped and not until_done:
                return pending
            if cancel is not None and cancel.wait(poll):
                raise Cancelled()
            if cancel is None:
                time.sleep(poll)


def cycle(waits: dict[str, list[str]], start: str) -> list[str]:
    """A path ``start → … → start`` through the waits-for graph, or [] if there is none."""
    path: list[str] = [start]
    seen: set[str] = set()

    def visit(name: str) -> bool:
        for dep in waits.get(name, []):
            if dep == start:
                path.append(dep)
                return True
            if dep not in seen:
                seen.add(dep)
                path.append(dep)
                if visit(dep):
                    return True
                path.pop()
        return False

    return path if visit(start) else []
