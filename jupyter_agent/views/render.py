"""Plain-text progress in the cell output.

Shown everywhere, including where widgets cannot render (nbclient, nbval,
terminal IPython). It is deterministic — no times, ids or sizes — so notebooks
with agent cells can be checked with nbval.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping
from typing import TextIO

from .. import vocab
from ..core.state import AWAITING_APPROVAL, DONE, Delta
from ..store.api import CheckpointRow, RunRow, Store
from ..vocab import RESUMABLE, Status, printable, status_text
from .listing import history_steps

#: Per run: its last checkpoint's number and the steps of its history up to it.
Known = dict[str, tuple[int, int]]


def steps_known(
    runs: Iterable[RunRow], last: Mapping[str, CheckpointRow], steps: Callable[[RunRow], int]
) -> Known:
    """What :class:`TextEvents` would otherwise read again once a run continues right after
    its last checkpoint, from what a reader has: ``last`` (each run's last checkpoint) and
    ``steps`` (a run's history's steps). The timeline's
    :meth:`~jupyter_agent.views.timeline.Timeline.known_steps` and :func:`known_steps`."""
    return {r.run_id: (last[r.run_id].step, steps(r)) for r in runs if r.run_id in last}


def known_steps(store: Store, notebook: str, agent: str) -> Known:
    """:func:`steps_known` for the agent's latest run, read from the store: where no
    timeline was read (outside a kernel, or with the timeline off), inside the session
    the cell opened."""
    runs = store.runs(notebook=notebook, agent=agent)[-1:] if store.exists() else []
    last = store.latest_checkpoints([r.run_id for r in runs]) if runs else {}
    return steps_known(runs, last, lambda run: history_steps(store, run))


class TextEvents:
    """Writes a run's progress as readable text."""

    def __init__(
        self,
        out: TextIO | None = None,
        *,
        store: Store | None = None,
        known: Known | None = None,
        label: str = "",
    ) -> None:
        self._out = out
        self._mid_line = False
        #: Starts each line: a child agent's name, so its lines read apart from its parent's.
        self._prefix = f"[{printable(label)}] " if label else ""
        self.store = store  # to count the steps a resumed or forked run had done
        #: Per run, its last checkpoint's number and its steps, as already read
        #: (:meth:`jupyter_agent.views.timeline.Timeline.known_steps`): used when the run
        #: continues right after that checkpoint, instead of reading the store again.
        self.known = known or {}
        self._steps: dict[str, int | None] = {}

    def _count(self, run: RunRow, row: CheckpointRow) -> int | None:
        """Steps of the run's history up to ``row``; None when that cannot be known."""
        if run.run_id not in self._steps:
            last, known = self.known.get(run.run_id, (None, 0))
            if row.kind == "start" and not run.parent_run:
                self._steps[run.run_id] = 0
            elif last is not None and last == row.step - 1:
                self._steps[run.run_id] = known
            elif self.store is not None:
                self._steps[run.run_id] = history_steps(self.store, run, below=row.step)
            else:
                self._steps[run.run_id] = None
        steps = self._steps[run.run_id]
        if steps is not None and row.kind == "model":
            steps = self._steps[run.run_id] = steps + 1
        return steps

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    def _line(self, text: str) -> None:
        if self._mid_line:
            self.out.write("\n")
            self._mid_line = False
        self._write(text + "\n")
        self._flush()

    def text(self, chunk: str) -> None:
        if chunk:
            self._write(chunk)
            self._flush()
            self._mid_line = not chunk.endswith("\n")

    def _write(self, text: str) -> None:
        """Write whole or partial lines, each line started with the label, if any."""
        if self._prefix:
            first, *rest = text.splitlines(keepends=True)
            text = ("" if self._mid_line else self._prefix) + first
            text += "".join(self._prefix + line for line in rest)
        self.out.write(text)

    def _flush(self) -> None:
        """Show what was written now, unless the stream does so by itself.

        A kernel's stream sends what it holds every ``flush_interval`` seconds
        (and before any display); flushing it per line made each checkpoint
        wait for the kernel's IOPub thread. A terminal or a pipe is flushed.
        """
        if getattr(self.out, "flush_interval", None) is None:
            self.out.flush()

    def info(self, message: str) -> None:
        self._line(message)

    def notice(self, message: str) -> None:
        self._line(f"⚠ {message}")
        # A warning (a retry, a dropped notification) is rare and must be read: an output
        # that updates itself at most so often (an agent cell's) shows it now.
        show_now = getattr(self.out, "show_now", None)
        if show_now is not None:
            show_now()

    def checkpoint(self, run: RunRow, row: CheckpointRow, delta: Delta) -> None:
        steps = self._count(run, row)
        if row.kind == "model":
            for msg in delta.messages:
                for call in msg.get("tool_calls") or []:
                    self._line(format_call(call))
        elif row.kind == "tool_result":
            saved = sorted(n for n, h in delta.vars.items() if h)
            deleted = sorted(n for n, h in delta.vars.items() if h is None)
            parts = []
            if saved:
                parts.append("saved " + ", ".join(saved))
            if deleted:
                parts.append("deleted " + ", ".join(deleted))
            if parts:
                self._line(f"  · checkpoint {row.step}: " + "; ".join(parts))
        elif row.kind == "approval" and row.status == AWAITING_APPROVAL:
            self._line(
                f"⏸ checkpoint {row.step}: waiting for your approval of this "
                f"{printable(str(row.info.get('tool', 'python')))} call. Approve it in the "
                f"timeline, or run %agent approve {printable(run.agent)} (or reject/edit)."
            )
        elif row.kind == "approval":
            self._line(f"  · checkpoint {row.step}: {printable(row.summary)}")
        elif row.kind == "fork":
            self._line(f"⋔ {printable(row.summary)}")
        elif row.kind == "resume":
            after = f"step {steps}" if steps is not None else "its last step"
            self._line(f"↻ resuming after {after} (checkpoint {row.info.get('from_step')})")
        elif row.kind == "compaction":
            self._line(f"  · {vocab.checkpoint_text(row.kind, row.info)}")
        paused = Status.of(row.status)
        if row.status == DONE:
            self._line(f"■ {status_text(DONE, steps or 0)}")
        elif paused is not None and paused in RESUMABLE - {Status.RUNNING, AWAITING_APPROVAL}:
            # With the count unknown, say only what happened.
            text = paused.label() if steps is None else status_text(paused, steps, row.info)
            detail = (
                f": {printable(row.summary)}"
                if row.summary and row.kind not in ("limit", "budget", "stuck")
                else ""
            )
            self._line(f"■ {text}{detail}")
            self._line(f"  Re-run the cell (or %agent resume {printable(run.agent)}) to continue.")


def format_call(call: dict) -> str:
    fn = call.get("function") or {}
    name = printable(str(fn.get("name") or "?"))
    args = fn.get("arguments") or ""
    if name == "python":
        import json

        try:
            code = json.loads(args)["code"]
        except Exception:
            code = args
        if not isinstance(code, str):  # a malformed call: show it as sent
            code = args
        return "→ python\n" + textwrap.indent(code.rstrip(), "    ")
    return f"→ {name}({printable(str(args)[:200])})"
