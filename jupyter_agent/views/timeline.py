"""One agent's checkpoint history as the timeline shows it (read only; fork and rewind are
:mod:`jupyter_agent.kernel.actions`).

The timeline of an agent holds all its runs — first runs, restarts, and forks,
a fork being a run whose history starts with its parent's checkpoints up to
the fork point — and the entries of one selected run's history. Entries are
built from store rows only (never payloads), so listing a long run stays cheap;
of a long history only the latest entries are read (a window; earlier ones when a
view asks for them), its totals come from the store, and a checkpoint's messages
are decoded only when it is opened (:func:`jupyter_agent.views.checkpoint.detail`).

This module only reads, and knows nothing about widgets: the kernel's widget
(:mod:`jupyter_agent.kernel.widget`) renders a :class:`Timeline`, and what its
buttons change (a fork, a rewind) is :mod:`jupyter_agent.kernel.actions`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .. import vocab
from ..core.history import Segments
from ..core.history import segments as history_of
from ..core.state import AWAITING_APPROVAL
from ..errors import NotFound
from ..model.base import OFFLINE_MODEL
from ..store.api import CheckpointRow, RunRow, Store
from . import kept
from .listing import awaited_child, status_from
from .render import Known, steps_known

#: Entries of the selected history sent to a frontend at first; more on request.
WINDOW = 100
#: Entries of a followed history kept in memory (at least what a view last asked for);
#: older ones are read from the store again when asked for, so a long run's stay bounded.
KEEP = 1_000
CODE_LIMIT = 2_000  # characters of code kept in an entry
_INFO_KEYS = (
    *("vars", "deleted", "unsaved", "error", "code", "decision", "instruction", "usage", "plan"),
    *("strategy", "before_tokens", "after_tokens", "messages_dropped"),  # compaction
    *("spent", "budget", "cost", "budget_cost", "reason"),  # budget, stuck
    *("delegate", "child", "child_run", "child_status"),  # delegation
)


def entry(row: CheckpointRow) -> dict:
    """A timeline entry: what a row shows and what opening it shows before payloads load."""
    e: dict[str, Any] = {
        "run": row.run_id,
        "step": row.step,
        "kind": row.kind,
        "status": row.status,
        "summary": row.summary,
        "time": row.created_at,
        "ms": row.duration_ms,
        "tokens": row.tokens,
        "size": row.size,
    }
    info = {k: row.info[k] for k in _INFO_KEYS if row.info.get(k) not in (None, "", [], {})}
    if isinstance(info.get("code"), str):
        info["code"] = clip(info["code"], CODE_LIMIT)
    if info:
        e["info"] = info
    text = vocab.checkpoint_text(row.kind, row.info)
    if text:
        e["text"] = text  # compaction, budget, stuck: what happened, in words
    return e


def clip(text: str, limit: int) -> str:
    """``text``, cut at ``limit`` characters with a note of how many more there were."""
    return (
        text if len(text) <= limit else text[:limit] + f"\n…[{len(text) - limit} more characters]"
    )


@dataclass
class Change:
    """What :meth:`Timeline.add` changed, so a view can send no more than that."""

    entry: dict | None = None  # appended to the selected history, at ``index``
    index: int = 0
    reloaded: bool = False  # the selection moved to a new run: resend everything
    runs: bool = False  # the list of runs or a run's status changed


@dataclass
class Timeline:
    """The runs of one agent, and the entries of the selected run's history."""

    store: Store
    notebook: str
    agent: str
    runs: list[RunRow] = field(default_factory=list)
    selected: str = ""
    history: list[dict] = field(default_factory=list)
    keep: int = KEEP  # entries kept in memory, at least
    _last: dict[str, CheckpointRow] = field(default_factory=dict)
    _live: set[str] = field(default_factory=set)
    _model_steps: dict[str, list[int]] = field(default_factory=dict)  # run -> model checkpoints
    _ledger: dict[str, Any] = field(default_factory=lambda: vocab.ledger([]))
    _plan: dict | None = None
    _size: int = 0
    #: Entries to read of a selected history (its latest); more as a view asks.
    window: int = WINDOW
    #: Entries of the selected history before ``history[0]``: not read, or let go of.
    dropped: int = 0
    #: Child agents' runs that the selected history delegated to, by run id.
    children: dict[str, RunRow] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.notebook, self.agent)

    def run(self, run_id: str) -> RunRow:
        for run in self.runs:
            if run.run_id == run_id:
                return run
        raise NotFound(f"Agent {self.agent!r} has no run {run_id!r}.")

    @property
    def latest(self) -> RunRow | None:
        return self.runs[-1] if self.runs else None

    # -- reading from the store ------------------------------------------------------

    @classmethod
    def loaded(cls, store: Store, notebook: str, agent: str) -> Timeline:
        """The agent's timeline as :meth:`load` reads it: its latest run selected."""
        timeline = cls(store, notebook, agent)
        timeline.load()
        return timeline

    def load(self, run_id: str | None = None) -> None:
        """Read the agent's runs from the store; select ``run_id``, else keep or take the latest.

        One store session for all of it: each read would otherwise open the store.
        A store that keeps what this read last found (:mod:`.kept`: DuckDB's timeline
        file, while nothing was written since) answers without a query, and is given
        what a read found to keep.
        """
        if kept.load(self, run_id):
            self._nest()
            return self._trim(self.keep)
        with self.store.session():
            if not self.store.runs(notebook=self.notebook, agent=self.agent):
                # A new agent (which the store may know without a query): nothing to read.
                self.runs, self._last, self._model_steps = [], {}, {}
                self._live = self.store.live_runs()
                return self.select("")
            as_of = kept.stamp(self.store)  # before the reads it vouches for
            self.runs = self.store.runs(notebook=self.notebook, agent=self.agent)
            self._last = self.store.latest_checkpoints([r.run_id for r in self.runs])
            self._live = self.store.live_runs()
            self._model_steps = self.store.model_steps([r.run_id for r in self.runs])
            ids = {r.run_id for r in self.runs}
            want = run_id if run_id in ids else self.selected if self.selected in ids else None
            self.select(want or (self.runs[-1].run_id if self.runs else ""))
            kept.keep(self, as_of)

    def select(self, run_id: str, *, stored: bool = True) -> None:
        """Make ``run_id``'s history (its ancestors' checkpoints up to each fork, then its own)
        current; ``stored=False``: it has none in the store yet (nothing is read)."""
        self.selected = run_id
        self.history, self.dropped = [], 0
        self._ledger, self._size, self._plan = vocab.ledger([]), 0, None
        if not run_id or not stored:
            return self._nest()
        segments = self.segments(self.run(run_id))
        tail = getattr(self.store, "history_tail", None)
        if tail is not None:  # the latest entries and the totals, not every row
            rows, totals = tail(segments, max(self.window, WINDOW))
            self.history = [entry(r) for r in rows]
            self.dropped = totals["checkpoints"] - len(rows)
            self._ledger = {k: totals[k] for k in self._ledger}
            self._size = totals["size"]
            self._plan = vocab.plan_progress(totals["plan"]) if totals["plan"] else None
            return self._nest()
        for seg_run, upto in segments:  # a backend without it: the whole history
            rows = self.store.checkpoints(seg_run)
            self.history.extend(entry(r) for r in rows if upto is None or r.step <= upto)
        self._ledger = vocab.ledger(self.history)
        self._size = sum(e["size"] for e in self.history)
        for e in reversed(self.history):
            if "plan" in (e.get("info") or {}):
                self._plan = vocab.plan_progress(e["info"]["plan"])
                break
        self._nest()
        self._trim(self.keep)

    @property
    def total(self) -> int:
        """Checkpoints of the selected history, read or not."""
        return self.dropped + len(self.history)

    def _nest(self) -> None:
        """Link the history's ``delegate`` rows to their child runs, as branches to open.

        The first row of a delegation (its call) carries the child's checkpoints,
        the later ones (its result, a pause for it) a link only. Children are not
        part of this agent's ledger: their tokens are in the call's result already.
        """
        self.children = {}
        linked = [e for e in self.history if {"delegate", "child_run"} & set(e.get("info") or {})]
        if not linked:
            return  # no store read for a run that never delegated
        ids = {seg for seg, _ in self.segments(self.run(self.selected))}
        kids = [
            r for r in self.store.runs(notebook=self.notebook) if r.info.get("parent_run") in ids
        ]
        self.children = {r.run_id: r for r in kids}
        by_call = {(r.info["parent_run"], r.info.get("parent_call")): r for r in kids}
        last = self.store.latest_checkpoints(list(self.children))
        steps = self.store.model_steps(list(self.children))
        shown: set[str] = set()
        for e in linked:
            info = e["info"]
            call = (info.get("delegate") or {}).get("call_id")
            child = by_call.get((e["run"], call)) or self.children.get(info.get("child_run", ""))
            if child is None:
                continue
            items = None if child.run_id in shown else self._child_entries(child)
            shown.add(child.run_id)
            done = len(steps.get(child.run_id, []))
            e["child"] = self._branch(child, last.get(child.run_id), done, items)

    def _child_entries(self, child: RunRow) -> list[dict]:
        return [entry(r) for r in self.store.checkpoints(child.run_id)]

    def _branch(
        self, child: RunRow, last: CheckpointRow | None, steps: int, items: list[dict] | None
    ) -> dict:
        """A child run as a delegate row shows it: its name, status and (once) its checkpoints."""
        status, text = status_from(child, last, self._live, steps)
        out: dict[str, Any] = {
            "agent": child.agent,
            "run": child.run_id,
            "status": status,
            "text": text,
        }
        if items is not None:
            out["items"] = items
        return out

    def segments(self, run: RunRow, *, whole: bool = False) -> Segments:
        """The run's history (:func:`jupyter_agent.core.history.segments`), from the runs
        already loaded; ``whole`` where a state is folded from it."""
        loaded = {r.run_id: r for r in self.runs}
        return history_of(run, loaded.get, whole=whole)

    # -- following a live execution --------------------------------------------------

    def add(self, run: RunRow, row: CheckpointRow) -> Change:
        """Take in a checkpoint just written by an execution of this agent."""
        new = all(r.run_id != run.run_id for r in self.runs)
        if new:
            self.runs.append(run)
        old = self._last.get(run.run_id)
        self._last[run.run_id] = row
        self._live.add(run.run_id)
        if row.kind == "model":
            seqs = self._model_steps.setdefault(run.run_id, [])
            if not seqs or seqs[-1] < row.step:
                seqs.append(row.step)
        if new:  # a run started here (new, restarted or forked): follow it
            # A run without a parent, at its first checkpoint, has nothing stored before it.
            self.select(run.run_id, stored=bool(run.parent_run) or row.step > 0)
            self._append(row)  # unless the store already had it
            return Change(reloaded=True, runs=True)
        runs_changed = old is None or old.status != row.status
        if run.run_id != self.selected:
            return Change(runs=runs_changed)
        e = self._append(row)
        if e is None:
            return Change(runs=runs_changed)
        if "child_run" in row.info:  # a child's work ended: show its branch
            self.select(self.selected)
            return Change(reloaded=True, runs=True)
        return Change(entry=e, index=self.total - 1, runs=runs_changed)

    def _append(self, row: CheckpointRow) -> dict | None:
        last = self.history[-1] if self.history else {}
        if last.get("run") == row.run_id and last["step"] >= row.step:
            return None  # already read from the store
        e = entry(row)
        self.history.append(e)
        if len(self.history) > 2 * self.keep:  # now and then, not at every append
            self._trim(self.keep)
        self._ledger = vocab.added(self._ledger, vocab.ledger([e]))
        self._size += row.size
        if "plan" in (e.get("info") or {}):
            self._plan = vocab.plan_progress(e["info"]["plan"])
        return e

    def _trim(self, keep: int) -> None:
        cut = len(self.history) - keep
        if cut > 0:
            del self.history[:cut]
            self.dropped += cut

    # -- what a view shows -----------------------------------------------------------

    def status(self, run_id: str) -> tuple[str, int]:
        """The run's effective status (stalled included) and its last checkpoint's number."""
        last = self._last.get(run_id)
        status, _ = status_from(self.run(run_id), last, self._live, 0)
        return status, -1 if last is None else last.step

    def steps(self, run_id: str) -> int:
        """Model calls in the run's history, its parents' up to each fork point included."""
        return vocab.history_steps(self.segments(self.run(run_id)), self._model_steps)

    def known_steps(self) -> Known:
        """:func:`~jupyter_agent.views.render.steps_known` of every run, as read here."""
        return steps_known(self.runs, self._last, lambda run: self.steps(run.run_id))

    def status_text(self, run_id: str) -> str:
        """The run's sentence: "done after 3 steps", "paused at the budget: …"."""
        return status_from(
            self.run(run_id), self._last.get(run_id), self._live, self.steps(run_id)
        )[1]

    def tree(self) -> list[dict]:
        """Runs as branches: each fork right under its parent, indented one level deeper."""
        label = {r.run_id: f"#{i}" for i, r in enumerate(self.runs, 1)}
        children: dict[str | None, list[RunRow]] = {}
        for r in self.runs:
            parent = r.parent_run if r.parent_run in label else None
            children.setdefault(parent, []).append(r)
        rows: list[dict] = []

        def visit(parent: str | None, depth: int) -> None:
            for r in children.get(parent, []):
                status, step = self.status(r.run_id)
                rows.append(
                    {
                        "id": r.run_id,
                        "label": label[r.run_id],
                        "parent": label.get(r.parent_run or ""),
                        "parent_step": r.parent_step,
                        "what_if": vocab.what_if_text(r.info.get("what_if")),
                        "depth": depth,
                        "status": status,
                        "text": self.status_text(r.run_id),
                        "steps": self.steps(r.run_id),
                        "checkpoints": step + 1,
                        "latest": r is self.runs[-1],
                    }
                )
                visit(r.run_id, depth + 1)

        visit(None, 0)
        return rows

    def summary(self) -> dict:
        run = self.run(self.selected) if self.selected else None
        if run is None:
            return {"status": "", "text": "not run yet", "step": -1, "steps": 0, "total": 0,
                    **vocab.ledger([]), "cache_hit_rate": None, "size": 0, "model": "",
                    "estimated": False,
                    "plan": None, "latest": False}  # fmt: skip
        status, step = self.status(run.run_id)
        return {
            "status": status,
            "text": self.status_text(run.run_id),
            "step": step,  # the last checkpoint's number
            "steps": self.steps(run.run_id),
            "total": self.total,  # checkpoints of the history
            **self._ledger,
            "cache_hit_rate": vocab.cache_hit_rate(
                self._ledger["prompt_tokens"], self._ledger["cached_tokens"]
            ),
            "size": self._size,
            "model": run.model,
            # The offline model counts no tokens: its numbers are estimates.
            "estimated": run.model == OFFLINE_MODEL,
            "plan": self._plan,
            "latest": run is self.runs[-1],
        }

    def snapshot(self, window: int = WINDOW) -> dict:
        """The latest ``window`` entries (read from the store first if not read yet)."""
        self.keep = max(self.keep, window)
        if window > len(self.history) and self.dropped:
            self.window = window
            self.select(self.selected)
        items = self.history[-window:] if window > 0 else []
        return {
            "run": self.selected,
            "first": self.total - len(items),
            "items": items,
        }

    def pending(self) -> dict:
        """The tool call the selected run waits on for approval, if any.

        Also one a delegated child of it waits on, while the selected run is paused
        only for that: then ``run`` is the child's, ``agent`` names the child and
        ``parent`` is the selected run, whose resume answers it.
        """
        row = self._last.get(self.selected)
        if not self.history or row is None:
            return {}
        if self.status(self.selected)[0] != AWAITING_APPROVAL:
            found = awaited_child(self.store, self.run(self.selected), row)
            if found is None:
                return {}
            child, row = found
            return {**_call_waiting(row), "agent": child.agent, "parent": self.selected}
        info = self.history[-1].get("info") or {}
        return {**_call_waiting(row), "code": row.info.get("code", info.get("code", ""))}


def _call_waiting(row: CheckpointRow) -> dict:
    """The tool call an approval checkpoint waits on, as the timeline offers it."""
    return {
        "run": row.run_id,
        "step": row.step,
        "call_id": row.info.get("call_id", ""),
        "tool": row.info.get("tool", "python"),
        "code": row.info.get("code", ""),
    }


def notebook_name(path: str) -> str:
    return os.path.basename(path) or path
