"""Plain-text progress in the cell output.

Shown everywhere, including where widgets cannot render (nbclient, nbval,
terminal IPython). It is deterministic — no times, ids or sizes — so notebooks
with agent cells can be checked with nbval.
"""

from __future__ import annotations

import sys
import textwrap
from typing import TextIO

from .state import (
    AWAITING_APPROVAL,
    BUDGET,
    DONE,
    ERROR,
    INTERRUPTED,
    LIMIT,
    RUNNING,
    STALLED,
    STUCK,
    Delta,
)
from .store import CheckpointRow, RunRow

STATUS_TEXT = {
    DONE: "done",
    INTERRUPTED: "interrupted",
    AWAITING_APPROVAL: "awaiting approval",
    ERROR: "paused after an error",
    LIMIT: "stopped at the step limit",
    STALLED: "stalled (no checkpoint for a long time)",
    BUDGET: "paused at the budget",
    STUCK: "stuck",
}


def status_text(status: str, step: int) -> str:
    """A run's status as users read it: "done", "interrupted at step 4"."""
    if status in (DONE, RUNNING):
        return status
    return f"{STATUS_TEXT.get(status, status)} at step {step}"


class TextEvents:
    """Writes a run's progress as readable text."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out
        self._mid_line = False

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    def _line(self, text: str) -> None:
        if self._mid_line:
            self.out.write("\n")
            self._mid_line = False
        self.out.write(text + "\n")
        self.out.flush()

    def text(self, chunk: str) -> None:
        self.out.write(chunk)
        self.out.flush()
        self._mid_line = not chunk.endswith("\n")

    def info(self, message: str) -> None:
        self._line(message)

    def notice(self, message: str) -> None:
        self._line(f"⚠ {message}")

    def checkpoint(self, run: RunRow, row: CheckpointRow, delta: Delta) -> None:
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
                self._line(f"  · step {row.step}: " + "; ".join(parts))
        elif row.kind == "approval" and row.status == AWAITING_APPROVAL:
            self._line(
                f"⏸ step {row.step}: waiting for your approval of this python call. Approve it "
                f"in the timeline, or run %agent approve {run.agent} (or reject/edit)."
            )
        elif row.kind == "approval":
            self._line(f"  · step {row.step}: {row.summary}")
        elif row.kind == "fork":
            self._line(f"⋔ {row.summary}")
        elif row.kind == "resume":
            self._line(f"↻ resuming after step {row.info.get('from_step')}")
        elif row.kind == "compaction":
            self._line(f"⇣ {row.summary}")
        if row.status in (BUDGET, STUCK):
            self._line(f"■ {row.summary}")
            self._line(
                f"  Re-run the cell (with a larger --budget, if that is what stopped it) "
                f"to continue, or %agent resume {run.agent}."
            )
        elif row.status in (INTERRUPTED, ERROR, LIMIT):
            self._line(f"■ {STATUS_TEXT[row.status]} at step {row.step}: {row.summary}")
            self._line(f"  Re-run the cell (or %agent resume {run.agent}) to continue.")
        elif row.status == DONE:
            self._line(f"■ done after {row.step} steps")


def format_call(call: dict) -> str:
    fn = call.get("function") or {}
    name = fn.get("name") or "?"
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
    return f"→ {name}({args[:200]})"
