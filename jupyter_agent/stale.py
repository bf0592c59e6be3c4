"""What a polling reader shows while a writer holds the DuckDB file.

DuckDB lets one process hold the file read-write and excludes every other, so
while a kernel folds its journal a reader can only wait. The REST API and
``%agent list`` answer with the agent summaries they read last, brought up to
date from the journals (live ones, finished ones not folded yet, and folded
ones, which the store keeps for :attr:`DuckDBStore.FOLDED_KEEP` seconds)
without folding anything: at once while the DuckDB file is unchanged since
that read (the answer is then exact), else after waiting :data:`WAIT` seconds
for the file (the answer is then the store "as of" that read).

Only an exact answer is given that way: when the journals cannot tell what
happened since the last read (the answer is older than the folded journals
kept, or a run forks from the middle of a history), the reader waits for the
store as before. So a stale answer can miss nothing but a deletion or a rename, and never
shows a wrong status for a finished run.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from . import journal
from .errors import StoreBusy
from .store_api import (
    CHECKPOINT_COLUMNS,
    RUN_COLUMNS,
    TIMELINE_LIMIT,
    AgentDetail,
    AgentSummary,
    CheckpointRow,
    RunDetail,
    RunRow,
    RunStats,
    RunSummary,
)
from .store_rows import checkpoint_from_row, malformed, run_from_row
from .vocab import Kind

#: Seconds a reader waits for the file before it answers from the journals: a REST
#: call or `%agent list` answers within a tenth of a second however busy the store.
WAIT = 0.08
#: An answer older than this says when it was true ("as of HH:MM:SS").
STALE_AFTER = 1.0


class Unknown(Exception):
    """The journals cannot bring the last answer up to date exactly."""


@dataclasses.dataclass
class Answer:
    """Agent summaries, and when they were read from DuckDB if that was not just now."""

    agents: list[AgentSummary]
    as_of: float | None = None

    def stale_since(self) -> str | None:
        """``HH:MM:SS`` of the last read, if the answer is stale beyond :data:`STALE_AFTER`."""
        if self.as_of is None or time.time() - self.as_of <= STALE_AFTER:
            return None
        return time.strftime("%H:%M:%S", time.localtime(self.as_of))


class LastGood:
    """A store's agent summaries per notebook, served from the journals while it is held.

    While the DuckDB file is as it was at the last read, that read and the
    journals are the whole truth: the file is not opened at all, so polling
    readers neither wait for writers nor make them wait.
    """

    def __init__(self, store: object) -> None:
        self.store = store
        #: notebook -> (time of the read, its answer, the file's state then or None).
        self._last: dict[str, tuple[float, list[AgentSummary], tuple | None]] = {}
        self._resolved: dict[str, str] = {}
        #: Each journal's rows by its size (see :func:`journaled`).
        self._seen: dict[Path, tuple[int, list]] = {}
        self._lock = threading.Lock()

    def notebook(self, path: str) -> str:
        """Where the notebook known as ``path`` lives now; while the store is held, as last read."""
        waiting = getattr(self.store, "waiting", None)
        known = self._resolved.get(path)
        if waiting is None or known is None:
            resolved = self.store.resolve_notebook(path)
        else:
            try:
                with waiting(0.0):  # one attempt: a rename seen a moment late is harmless
                    resolved = self.store.resolve_notebook(path)
            except StoreBusy:
                return known
        self._resolved[path] = resolved
        return resolved

    def agent_summaries(self, notebook: str) -> Answer:
        """The agents of ``notebook``: read now, or the last read brought up to date."""
        waiting = getattr(self.store, "waiting", None)
        with self._lock:
            cached = self._last.get(notebook)
        if waiting is None or cached is None:
            return self._read(notebook)
        at, agents, state = cached
        recent = time.time() - at < self.store.FOLDED_KEEP / 2
        journal_dir = self.store.journal_dir
        if recent and state is not None and state == self.store.file_state():
            try:
                return Answer(brought_up_to_date(agents, notebook, journal_dir, self._seen))
            except Unknown:
                pass
        try:
            with waiting(WAIT):
                return self._read(notebook)
        except StoreBusy:
            if not recent:
                return self._read(notebook)
        try:
            return Answer(brought_up_to_date(agents, notebook, journal_dir, self._seen), at)
        except Unknown:
            return self._read(notebook)

    def agent_detail(self, notebook: str, name: str) -> AgentDetail | None:
        """An agent the journals hold and the DuckDB file not yet, with its latest run."""
        for agent in self.agent_summaries(notebook).agents:
            if agent.name == name:
                return AgentDetail(agent, [agent.latest])
        return None

    def run_detail(self, run_id: str) -> RunDetail | None:
        """A run the journals hold and the DuckDB file not yet: what the list showed can be opened.

        Its checkpoints' metadata only (payloads stay in the journal until it is folded).
        """
        journal_dir = getattr(self.store, "journal_dir", None)
        if journal_dir is None:
            return None
        runs, checkpoints = journaled(journal_dir, self._seen)
        run = runs.get(run_id)
        if run is None:
            return None
        rows = checkpoints.get(run_id, [])
        live = run_id in journal.live_run_ids(journal_dir)
        return RunDetail(RunSummary(run, _added(None, run, rows), live), rows)

    def forget(self) -> None:
        """Drop the answers kept (after a change made through this reader)."""
        with self._lock:
            self._last.clear()

    def _read(self, notebook: str) -> Answer:
        state = getattr(self.store, "file_state", None)
        at = time.time()  # before the read: anything journaled later is newer
        before = state() if state is not None else None
        agents = self.store.agent_summaries(notebook)
        after = state() if state is not None else None
        with self._lock:
            # A file written meanwhile (this read may fold) is read again next time.
            self._last[notebook] = (at, agents, before if before == after else None)
        return Answer(agents)


def journaled(
    journal_dir: Path, seen: dict[Path, tuple[int, list]] | None = None
) -> tuple[dict[str, RunRow], dict[str, list[CheckpointRow]]]:
    """Runs and checkpoint metadata of every journal on disk, folded or not (no payload).

    ``seen`` keeps each journal's records by its size, so one that did not grow
    since the last call is not decoded again.
    """
    seen = {} if seen is None else seen
    runs: dict[str, RunRow] = {}
    checkpoints: dict[str, dict[int, CheckpointRow]] = {}
    present: set[Path] = set()
    for suffix in (journal.SUFFIX, journal.FOLDED_SUFFIX):
        for jf in journal.scan(journal_dir, suffix=suffix):
            try:
                if jf.owner != os.getuid() or jf.mode & 0o022:
                    continue  # what the store would not fold is not shown either
                size = os.fstat(jf.fd).st_size
                present.add(jf.path)
                if seen.get(jf.path, (-1,))[0] != size:
                    seen[jf.path] = (size, _rows(jf.read()))
                for row in seen[jf.path][1]:
                    if isinstance(row, RunRow):
                        runs[row.run_id] = row
                    else:
                        checkpoints.setdefault(row.run_id, {})[row.step] = row
            except OSError:
                continue
            finally:
                jf.close()
    for gone in set(seen) - present:
        del seen[gone]
    return runs, {r: [cps[s] for s in sorted(cps)] for r, cps in checkpoints.items()}


def _rows(data: bytes) -> list[RunRow | CheckpointRow]:
    """The run and checkpoint rows of a journal's bytes (blobs and payloads left out)."""
    out: list[RunRow | CheckpointRow] = []
    for rec in journal.decode(data).records:
        if malformed(rec):
            continue
        if rec.table == "runs":
            out.append(run_from_row([rec.row.get(c) for c in RUN_COLUMNS]))
        elif rec.table == "checkpoints":
            out.append(checkpoint_from_row([rec.row.get(c) for c in CHECKPOINT_COLUMNS]))
    return out


def brought_up_to_date(
    agents: list[AgentSummary],
    notebook: str,
    journal_dir: Path,
    seen: dict[Path, tuple[int, list]] | None = None,
) -> list[AgentSummary]:
    """``agents`` with what the journals hold since they were read; :class:`Unknown` if inexact."""
    runs, checkpoints = journaled(journal_dir, seen)
    live = journal.live_run_ids(journal_dir)

    def caught_up(agent: AgentSummary) -> AgentSummary:
        latest = agent.latest
        stats = latest.stats
        last = stats.last_step if stats is not None and stats.run_id == latest.run.run_id else -1
        new = [c for c in checkpoints.get(latest.run.run_id, []) if c.step > last]
        return dataclasses.replace(
            agent,
            latest=RunSummary(
                latest.run, _added(stats, latest.run, new), latest.run.run_id in live
            ),
            timeline=[*agent.timeline, *new][-TIMELINE_LIMIT:],
        )

    by_name = {a.name: caught_up(a) for a in agents}
    mine = sorted((r for r in runs.values() if r.notebook == notebook), key=lambda r: r.created_at)
    for run in mine:
        known = by_name.get(run.agent)
        if known is not None and run.created_at <= known.latest.run.created_at:
            continue  # this run or an older one: already counted
        base = None
        if run.parent_run:
            if known is None or known.latest.run.run_id != run.parent_run:
                raise Unknown(f"run {run.run_id} continues a run not in the last answer")
            base = known.latest.stats
        started = RunSummary(run, _continued(base, run), run.run_id in live)
        runs_before = known.runs if known is not None else 0
        by_name[run.agent] = caught_up(AgentSummary(run.agent, started, runs_before + 1, []))
    return list(by_name.values())


def _continued(parent: RunStats | None, run: RunRow) -> RunStats | None:
    """A new run's starting aggregates: its parent's steps if it continues from its end."""
    if parent is None:
        return None
    if run.parent_step is None or run.parent_step < parent.last_step:
        raise Unknown(f"run {run.run_id} forks from the middle of a history")
    return RunStats(run.run_id, 0, 0, 0, 0, 0, run.created_at, -1, "running", {}, parent.steps)


def _added(stats: RunStats | None, run: RunRow, new: Iterable[CheckpointRow]) -> RunStats | None:
    """``stats`` of ``run`` with its checkpoints ``new`` (those after ``stats.last_step``)."""
    for cp in new:
        usage = cp.info.get("usage") if isinstance(cp.info.get("usage"), dict) else {}
        base = stats or RunStats(run.run_id, 0, 0, 0, 0, 0, run.created_at, -1, "running", {})
        stats = dataclasses.replace(
            base,
            checkpoints=base.checkpoints + 1,
            tokens=base.tokens + int(cp.tokens or 0),
            prompt_tokens=base.prompt_tokens + int(usage.get("prompt_tokens") or 0),
            completion_tokens=base.completion_tokens + int(usage.get("completion_tokens") or 0),
            size=base.size + int(cp.size or 0),
            updated_at=cp.created_at,
            last_step=cp.step,
            last_status=cp.status,
            last_info=cp.info,
            steps=base.steps + (cp.kind == Kind.MODEL),
            plan=cp.info.get("plan", base.plan),
        )
    if stats is not None and stats.last_step < 0:
        return None  # no checkpoint yet
    return stats
