"""The bounded output of an agent cell: a header, a tail of recent activity, the answer.

A cell's output is saved in its notebook, so it must not grow with the run: a
10,000-step agent, or one call printing megabytes, would otherwise write
megabytes into the ``.ipynb``. :class:`CellOutput` is a text stream that keeps
only what the cell shows: one header line (agent, status, checkpoint), the last
:data:`TAIL` lines of activity (each clipped to :data:`WIDTH` characters), the
final answer (clipped to :data:`ANSWER_LIMIT`) and where the full transcript is
(``%agent show``, the timeline). The kernel shows it as one display it updates
in place (:mod:`jupyter_agent.kernel.cell_output`).

Its text form is deterministic, like :mod:`.render` (no times, ids or sizes),
so nbval can compare it; its HTML form reads well in a notebook reopened
without its kernel, where the timeline widget cannot render.
"""

from __future__ import annotations

import html
from collections import deque
from collections.abc import Mapping
from typing import Any

from ..core.state import Delta
from ..store.api import CheckpointRow, RunRow
from ..vocab import Status, clipped, plural, printable, status_text
from .render import TextEvents

TAIL = 12  # lines of recent activity shown
WIDTH = 500  # characters of one shown line: a notice naming a file path fits whole
ANSWER_LIMIT = 8_000  # characters of the answer shown in the cell
NEWLINE = "\n"


def clip_line(line: str, width: int = WIDTH) -> str:
    return clipped(line, width)


class CellOutput:
    """What one agent cell shows, however long its run: a text stream of bounded size."""

    def __init__(self, agent: str, *, tail: int = TAIL) -> None:
        self.agent = printable(agent)
        self.status = Status.RUNNING.label()
        self.checkpoint: int | None = None
        self.answer: str | None = None
        self._info: Mapping[str, Any] | None = None  # the last checkpoint's
        self._tail: deque[str] = deque(maxlen=tail)
        self._partial = ""  # the line being written, clipped
        self._lines = 0  # complete lines written

    # -- a text stream ---------------------------------------------------------------

    def write(self, text: str) -> int:
        """Keep the tail of ``text``; a line longer than :data:`WIDTH` keeps its start."""
        *complete, rest = (self._partial + text).split("\n")
        for line in complete:
            self._tail.append(clip_line(line))
        self._lines += len(complete)
        self._partial = rest[: WIDTH + 1]
        return len(text)

    def flush(self) -> None:
        """Nothing to flush here; the kernel's display updates (see its subclass)."""

    # -- what happened ----------------------------------------------------------------

    def reached(self, step: int, status: str, info: Mapping[str, Any] | None = None) -> None:
        """A checkpoint was written: its number and the run's status there."""
        self.checkpoint = step
        self._info = info
        st = Status.of(status)
        if st is Status.BUDGET or st is Status.STUCK:
            self.status = status_text(status, 0, info)
        else:
            self.status = st.label() if st is not None else str(status)

    def finish(self, status: str, steps: int, answer: str | None) -> None:
        """The execution ended at ``status`` after ``steps`` steps, with its answer if any."""
        self.status = status_text(status, steps, self._info)
        if self._tail and not self._partial and self._tail[-1] == f"■ {self.status}":
            self._tail.pop()  # the header says it
            self._lines -= 1
        if answer:
            self.answer = answer if len(answer) <= ANSWER_LIMIT else answer[:ANSWER_LIMIT] + "…"
            self._drop_echo(answer)

    def failed(self) -> None:
        """The execution ended with an error, shown after this output."""
        self.status = "stopped by the error below"

    def _drop_echo(self, answer: str) -> None:
        """The answer was streamed into the tail as it came: show it once, below."""
        lines = [clip_line(line) for line in answer.rstrip("\n").split("\n")]
        shown = [*self._tail, *([self._partial] if self._partial else [])]
        ends = 0  # the status lines written after the answer ("■ done after 3 steps")
        while ends < len(shown) and shown[len(shown) - ends - 1].startswith("■"):
            ends += 1
        before, after = shown[: len(shown) - ends], shown[len(shown) - ends :]
        for n in range(min(len(lines), len(before)), 0, -1):
            if before[-n:] == lines[-n:]:
                self._lines = max(0, self._lines - n)
                self._partial = ""
                self._tail.clear()
                self._tail.extend([*before[:-n], *after])
                return

    # -- shown --------------------------------------------------------------------------

    def header(self) -> str:
        where = f" · checkpoint {self.checkpoint}" if self.checkpoint is not None else ""
        return f"Agent {self.agent} · {self.status}{where}"

    def recent(self) -> list[str]:
        return [*self._tail, *([clip_line(self._partial)] if self._partial else [])]

    def earlier(self) -> int:
        """Lines written that are no longer shown."""
        return max(0, self._lines + (1 if self._partial else 0) - len(self.recent()))

    def pointer(self) -> str:
        return f"Full transcript: %agent show {self.agent}, or %agent timeline {self.agent}."

    def text(self) -> str:
        lines = [self.header()]
        if self.earlier():
            lines.append(f"  … {plural(self.earlier(), 'earlier line')}")
        lines += ["  " + line for line in self.recent()]
        if self.answer is not None:
            lines += ["Answer:", self.answer.rstrip("\n")]
        lines.append(self.pointer())
        return "\n".join(lines)

    def html(self) -> str:
        e = html.escape
        parts = [f"<div class='jp-agent-cell'><div><b>{e(self.header())}</b></div>"]
        recent = self.recent()
        if recent:
            if self.earlier():
                recent = [f"… {plural(self.earlier(), 'earlier line')}", *recent]
            parts.append(f"<pre>{e(NEWLINE.join(recent))}</pre>")
        if self.answer is not None:
            parts.append(f"<div><b>Answer</b></div><pre>{e(self.answer.rstrip())}</pre>")
        parts.append(f"<div><i>{e(self.pointer())}</i></div></div>")
        return "".join(parts)

    def _repr_mimebundle_(self, **_kwargs: Any) -> dict[str, str]:
        return {"text/plain": self.text(), "text/html": self.html()}

    def __repr__(self) -> str:
        return self.text()


class CellEvents(TextEvents):
    """A run's progress as text into a :class:`CellOutput`, which also learns its checkpoints."""

    def __init__(self, cell: CellOutput, **kwargs: Any) -> None:
        super().__init__(cell, **kwargs)  # type: ignore[arg-type]  # a text stream
        self.cell = cell

    def checkpoint(self, run: RunRow, row: CheckpointRow, delta: Delta) -> None:
        super().checkpoint(run, row, delta)
        self.cell.reached(row.step, row.status, row.info)
