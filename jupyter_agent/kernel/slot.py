"""A cell's timeline before its widget exists: its place in the output, and what it missed.

Building the timeline widget imports ipywidgets, which a new kernel's first agent
cell would otherwise wait for before its first model request. So a ``%%agent``
cell starts with a :class:`TimelineSlot` in the agent's views instead: when the
run begins it displays the timeline's fallback line where the widget will be
(above the cell's text, as before), and it keeps what the execution reports
meanwhile. The widget is built once the first model request has gone out
(:func:`~jupyter_agent.model.http.after_sending`), while the endpoint works on the
reply; it takes the slot's place in the output (a display update), shows the
timeline the cell read before its run (read once: the cell's step count came from
it too), and is handed the checkpoints and lines the slot kept since, so it shows
what it would have shown from the start. A run that sends no request (a
restore, a client that does not announce its requests) gets its widget at its
next checkpoint or when it ends.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..store.api import CheckpointRow, RunRow
from .runtime import AgentRuntime

if TYPE_CHECKING:
    from ..views.timeline import Timeline

#: The text/plain of the widget: shown only where the widget is not (no widget
#: manager, nbconvert, a terminal), and what nbval compares, so deterministic on
#: purpose (no ids, times or counts). docs/timeline.md quotes it. It names no
#: command: in a terminal, the command just run is what printed it.
TEXT_REPR = (
    "Agent timeline of {agent} (a widget: shown in JupyterLab and Notebook 7 with its kernel)"
)
#: Marks a timeline's output for the lab extension (labextension/src/fallback.ts).
TIMELINE_MIME = "application/vnd.jupyter-agent.timeline+json"
#: Its text/html, for notebook viewers without widgets (nbconvert, GitHub).
HTML_REPR = (
    "<div class='jp-agent-timeline-fallback'>Agent timeline of <b>{agent}</b> "
    "(a widget: shown in JupyterLab and Notebook 7 with its kernel)</div>"
)


def fallbacks(agent: str) -> dict[str, Any]:
    """A timeline's output where its view is not rendered (yet): the lab extension's
    renderer shows its line until the view renders, and instead of "model not found"
    in a notebook reopened without its kernel."""
    text = TEXT_REPR.format(agent=agent)
    return {
        "text/plain": text,
        "text/html": HTML_REPR.format(agent=html.escape(agent)),
        TIMELINE_MIME: {"agent": agent, "text": text},
    }


#: Checkpoints that open an execution: the model request follows them.
_OPENING = ("start", "resume")


class TimelineSlot:
    """Stands in the agent's views for a cell's timeline until the widget is built.

    ``build(slot, timeline)`` builds the widget on ``timeline`` (the agent's, as the
    cell read it before its run), displayed in the display handle ``slot`` (or anew
    when None), and returns it. Called in the cell's thread only.
    """

    def __init__(
        self, runtime: AgentRuntime, timeline: Timeline, build: Callable[[Any, Timeline], Any]
    ) -> None:
        self.runtime, self.timeline, self._build = runtime, timeline, build
        self.key = timeline.key
        self.widget: Any = None
        self.handle: Any = None  # the display held for the widget
        self._rows: list[tuple[RunRow, CheckpointRow]] = []
        self._said: list[tuple[str, Any]] = []  # ("write", text) or ("say", (text, level))
        runtime.register(self)

    def show(self) -> None:
        """The run has begun: hold the widget's place in the output; build it if a
        checkpoint past the execution's opening one came (no request was announced)."""
        if self.widget is not None:
            return
        if any(row.kind not in _OPENING for _, row in self._rows):
            self.build()
        elif self.handle is None:
            from IPython.display import display

            self.handle = display(fallbacks(self.key[1]), raw=True, display_id=True)

    def add(self, run: RunRow, row: CheckpointRow) -> None:
        self._rows.append((run, row))

    def write(self, text: str) -> None:
        self._said.append(("write", text))

    def say(self, text: str, level: str = "info") -> None:
        self._said.append(("say", (text, level)))

    def refresh(self) -> None:
        self.build()

    def job_changed(self) -> None:
        """Nothing to show: the widget reads whether a job runs when it is built."""

    def end(self, failed: bool) -> None:
        """The execution ended: build the widget, unless the run failed before it began
        (its error shows, and no empty timeline); building it never hides that error."""
        if failed and self.handle is None:
            return
        try:
            self.build()
        except Exception:
            if not failed:
                raise

    def build(self) -> Any:
        """The widget, built now if it was not: in the held place, told what it missed."""
        if self.widget is None:
            self.runtime.unregister(self)
            self.widget = widget = self._build(self.handle, self.timeline)
            for run, row in self._rows:
                widget.add(run, row)
            for kind, what in self._said:
                widget.write(what) if kind == "write" else widget.say(*what)
            self._rows, self._said = [], []
        return self.widget
