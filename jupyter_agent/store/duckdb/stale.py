"""What a polling reader shows without waiting for the DuckDB file.

DuckDB lets one process hold the file read-write and excludes every other, so
while a kernel folds its journal a reader that opens the file can only wait,
and on a busy machine even an uncontended open and fold takes tens of
milliseconds. The REST API and ``%agent list`` therefore answer from what they
read last, brought up to date from the journals (live ones, finished ones not
folded yet, and folded ones, which the store keeps for
:attr:`DuckDBStore.FOLDED_KEEP` seconds) without folding anything. While the
file is unchanged since that read the answer is exact; once it changed, the
answer is still exact but for a deletion or a rename another process made, and
the reader reads the file again on a thread of its own, so the next answer
starts from the new read. A request waits for the store only for the first
answer, or when the journals cannot tell what happened since the last read
(the read is older than the folded journals kept, or a run forks from the
middle of a history).

So an answer can miss nothing but another process's deletion or rename, for
one poll, and never shows a wrong status for a finished run.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, cast

from ... import vocab
from ...errors import StoreBusy
from ...vocab import Kind
from ..api import (
    CHECKPOINT_COLUMNS,
    RUN_COLUMNS,
    TIMELINE_LIMIT,
    AgentDetail,
    AgentSummary,
    Capability,
    CheckpointRow,
    JournaledStore,
    RunDetail,
    RunRow,
    RunStats,
    RunSummary,
    Store,
    payload_messages,
)
from ..rows import checkpoint_from_row, malformed, run_from_row
from . import journal

#: How many runs' messages a reader keeps (see :meth:`LastGood.messages`).
MESSAGES_KEPT = 32
#: An answer older than this says when it was true ("as of HH:MM:SS").
STALE_AFTER = 1.0


_T = TypeVar("_T")


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
    """A store's answers, kept and brought up to date from the journals between reads.

    A polling reader never waits for the DuckDB file while its last read is
    recent: it answers from that read and the journals (exact but for a
    deletion or a rename another process made since), and when the file changed
    it reads it again on a thread of its own for the next answer. Only the first
    answer, or one the journals cannot bring up to date, waits for the store.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        #: The store, if it declares journals: else every answer is read from it.
        self.journals: JournaledStore | None = (
            cast(JournaledStore, store) if Capability.JOURNALS in store.capabilities else None
        )
        #: key -> (time of the read, its answer, the file's state then or None).
        self._last: dict[tuple, tuple[float, Any, tuple | None]] = {}
        self._resolved: dict[str, str] = {}
        #: Each journal's rows by its size (see :func:`journaled`).
        self._seen: dict[Path, tuple[int, list]] = {}
        #: Keys being read again on a thread, and those whose last such read found the store busy.
        self._refreshing: set[tuple] = set()
        self._behind: set[tuple] = set()
        #: Each run's messages by step, for the runs opened last (see :meth:`messages`).
        self._messages: dict[str, dict[int, list[dict]]] = {}
        #: Bumped by :meth:`forget`, so a read started before it is not kept.
        self._generation = 0
        # Concurrency: its place in the lock order is in the docstring of jupyter_agent.loop.
        self._lock = threading.Lock()

    def notebook(self, path: str) -> str:
        """Where the notebook known as ``path`` lives now; while the store is held, as last read."""
        known = self._resolved.get(path)
        if self.journals is None or known is None:
            resolved = self.store.resolve_notebook(path)
        else:
            try:
                with self.journals.waiting(0.0):  # one attempt: a rename seen late is harmless
                    resolved = self.store.resolve_notebook(path)
            except StoreBusy:
                return known
        self._resolved[path] = resolved
        return resolved

    def agent_summaries(self, notebook: str) -> Answer:
        """The agents of ``notebook``: the last read brought up to date, or read now."""
        agents, as_of = self._answer(
            ("agents", notebook),
            lambda: self.store.agent_summaries(notebook),
            lambda agents: brought_up_to_date(agents, notebook, self._journaled()),
        )
        return Answer(agents, as_of)

    def agent_detail(self, notebook: str, name: str) -> AgentDetail | None:
        """One agent with all its runs, as :meth:`Store.agent_detail`; None if there is none.

        An agent the journals hold and the DuckDB file not yet is found too, with its latest run.
        """

        def update(detail: AgentDetail | None) -> AgentDetail | None:
            return detail and detail_up_to_date(detail, notebook, self._journaled())

        detail, _ = self._answer(
            ("agent", notebook, name), lambda: self.store.agent_detail(notebook, name), update
        )
        if detail is not None:
            return detail
        for agent in self.agent_summaries(notebook).agents:
            if agent.name == name:
                return AgentDetail(agent, [agent.latest])
        return None

    def run_detail(self, run_id: str) -> RunDetail | None:
        """One run's metadata and checkpoints, as :meth:`Store.run_detail`; None if there is none.

        A run the journals hold and the DuckDB file not yet is found too (what the
        list showed can be opened), with its checkpoints' metadata only.
        """

        def update(detail: RunDetail | None) -> RunDetail | None:
            return detail and run_up_to_date(detail, self._journaled())

        detail, _ = self._answer(("run", run_id), lambda: self.store.run_detail(run_id), update)
        if detail is not None or self.journals is None:
            return detail
        journals = self._journaled()
        run = journals.runs.get(run_id)
        if run is None:
            return None
        rows = journals.checkpoints.get(run_id, [])
        return RunDetail(RunSummary(run, _added(None, run, rows), run_id in journals.live), rows)

    def messages(self, detail: RunDetail) -> dict[int, list[dict]]:
        """The messages each of the run's own checkpoints added, by step.

        A checkpoint never changes, so each is read once: the new ones from the
        run's journals, the rest from the store in one read of the run's own steps.
        """
        run_id = detail.summary.run.run_id
        with self._lock:
            known = dict(self._messages.get(run_id, {}))
        missing = [c.step for c in detail.checkpoints if c.step not in known]
        if missing and self.journals is not None:
            known.update(_journaled_messages(self.journals.journal_dir, run_id, set(missing)))
            missing = [s for s in missing if s not in known]
        if missing:
            pairs = self.store.payloads([(run_id, None)], since=min(missing))
            known.update((cp.step, payload_messages(p)) for cp, p in pairs)
        with self._lock:
            self._messages.pop(run_id, None)
            self._messages[run_id] = known  # the newest last: the oldest is dropped first
            while len(self._messages) > MESSAGES_KEPT:
                del self._messages[next(iter(self._messages))]
        return {c.step: known.get(c.step, []) for c in detail.checkpoints}

    def forget(self) -> None:
        """Drop the answers kept (after a change made through this reader)."""
        with self._lock:
            self._last.clear()
            self._messages.clear()
            self._generation += 1

    def _journaled(self) -> Journaled:
        assert self.journals is not None
        return journaled(self.journals.journal_dir, self._seen)

    def _answer(
        self, key: tuple, read: Callable[[], _T], update: Callable[[_T], _T]
    ) -> tuple[_T, float | None]:
        """``read()``'s answer: the last one brought up to date with ``update`` while it is recent.

        Also when the file changed since (its answer is then read again in the
        background); the time of the last read comes with it when that re-read
        found the store busy.
        """
        with self._lock:
            cached = self._last.get(key)
        if self.journals is None or cached is None:
            return self._read(key, read), None
        at, value, state = cached
        if time.time() - at < self.journals.FOLDED_KEEP / 2:  # the journals since are all kept
            try:
                fresh = update(value)
            except Unknown:
                pass
            else:
                if state is not None and state == self.journals.file_state():
                    return fresh, None  # nothing but the journals changed: exact
                self._refresh(key, read)
                return fresh, (at if key in self._behind else None)
        return self._read(key, read), None

    def _read(self, key: tuple, read: Callable[[], _T]) -> _T:
        state = self.journals.file_state if self.journals is not None else None
        generation = self._generation
        at = time.time()  # before the read: anything journaled later is newer
        before = state() if state is not None else None
        value = read()
        after = state() if state is not None else None
        with self._lock:
            if value is not None and generation == self._generation:
                # A file written meanwhile (this read may fold) is read again next time.
                self._last[key] = (at, value, before if before == after else None)
        return value

    def _refresh(self, key: tuple, read: Callable[[], object]) -> None:
        """Read ``key``'s answer again on a thread, unless that is already under way."""
        with self._lock:
            if key in self._refreshing:
                return
            self._refreshing.add(key)

        def work() -> None:
            try:
                self._read(key, read)
                with self._lock:
                    self._behind.discard(key)
            except StoreBusy:
                with self._lock:  # the answers meanwhile say how old their base is
                    self._behind.add(key)
            except Exception:
                with self._lock:  # the next request reads itself, and reports the error
                    self._last.pop(key, None)
            finally:
                with self._lock:
                    self._refreshing.discard(key)

        threading.Thread(target=work, name="jupyter-agent-refresh", daemon=True).start()


@dataclasses.dataclass
class Journaled:
    """What every journal on disk holds, folded or not: rows without payloads, and the live runs."""

    runs: dict[str, RunRow]
    checkpoints: dict[str, list[CheckpointRow]]
    live: set[str]


def journaled(journal_dir: Path, seen: dict[Path, tuple[int, list]] | None = None) -> Journaled:
    """Runs and checkpoint metadata of every journal on disk, folded or not (no payload).

    ``seen`` keeps each journal's records by its size, so one that did not grow
    since the last call is not decoded again.
    """
    seen = {} if seen is None else seen
    live = journal.live_run_ids(journal_dir)  # sampled before and after, as the store does
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
    ordered = {r: [cps[s] for s in sorted(cps)] for r, cps in checkpoints.items()}
    return Journaled(runs, ordered, live | journal.live_run_ids(journal_dir))


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


def _journaled_messages(journal_dir: Path, run_id: str, steps: set[int]) -> dict[int, list[dict]]:
    """The messages the journals of ``run_id`` hold for ``steps`` (from the payloads)."""
    out: dict[int, list[dict]] = {}
    for suffix in (journal.SUFFIX, journal.FOLDED_SUFFIX):
        for jf in journal.scan(journal_dir, suffix=suffix):
            try:
                if jf.run_id != run_id or jf.owner != os.getuid() or jf.mode & 0o022:
                    continue
                for rec in journal.decode(jf.read()).records:
                    if rec.table == "checkpoints" and not malformed(rec):
                        step = rec.row.get("step")
                        if step in steps and rec.row.get("run_id") == run_id:
                            out[step] = payload_messages(rec.payload)
            except OSError:
                continue
            finally:
                jf.close()
    return out


def brought_up_to_date(
    agents: list[AgentSummary], notebook: str, journals: Journaled
) -> list[AgentSummary]:
    """``agents`` with what the journals hold since they were read; :class:`Unknown` if inexact."""
    by_name = {a.name: _agent_up_to_date(a, [a.latest], journals)[0] for a in agents}
    mine = sorted(
        (r for r in journals.runs.values() if r.notebook == notebook), key=lambda r: r.created_at
    )
    for run in mine:
        if run.agent not in by_name:  # an agent new since the read
            runs, new = _runs_up_to_date([], notebook, run.agent, journals)
            by_name[run.agent] = AgentSummary(run.agent, runs[-1], len(runs), new[-TIMELINE_LIMIT:])
    return list(by_name.values())


def detail_up_to_date(detail: AgentDetail, notebook: str, journals: Journaled) -> AgentDetail:
    """An agent's detail with what the journals hold since it was read."""
    summary, runs = _agent_up_to_date(detail.summary, detail.runs, journals, notebook)
    return AgentDetail(summary, runs)


def run_up_to_date(detail: RunDetail, journals: Journaled) -> RunDetail:
    """A run's detail with the checkpoints the journals hold since it was read."""
    summary, new = _run_up_to_date(detail.summary, journals)
    return RunDetail(summary, [*detail.checkpoints, *new])


def _agent_up_to_date(
    agent: AgentSummary, runs: list[RunSummary], journals: Journaled, notebook: str | None = None
) -> tuple[AgentSummary, list[RunSummary]]:
    """``agent`` and its ``runs`` (oldest first, ending with its latest) brought up to date."""
    notebook = agent.latest.run.notebook if notebook is None else notebook
    caught, new = _runs_up_to_date(runs, notebook, agent.name, journals)
    latest = caught[-1]
    timeline = [*agent.timeline, *new] if latest.run.run_id == agent.latest.run.run_id else new
    added = len(caught) - len(runs)
    summary = AgentSummary(agent.name, latest, agent.runs + added, timeline[-TIMELINE_LIMIT:])
    return summary, caught


def _runs_up_to_date(
    runs: list[RunSummary], notebook: str, agent: str, journals: Journaled
) -> tuple[list[RunSummary], list[CheckpointRow]]:
    """An agent's runs (oldest first) with their new checkpoints, and the runs begun since;
    and the checkpoints the last of them gained (all of its own, for a run begun since)."""
    out: list[RunSummary] = []
    new: list[CheckpointRow] = []
    for r in runs:
        summary, new = _run_up_to_date(r, journals)
        out.append(summary)
    mine = (r for r in journals.runs.values() if r.notebook == notebook and r.agent == agent)
    for run in sorted(mine, key=lambda r: r.created_at):
        latest = out[-1] if out else None
        if latest is not None and run.created_at <= latest.run.created_at:
            continue  # this run or an older one: already counted
        base = None
        if run.parent_run:
            if latest is None or latest.run.run_id != run.parent_run:
                raise Unknown(f"run {run.run_id} continues a run not in the last answer")
            base = latest.stats
        summary, new = _run_up_to_date(RunSummary(run, _continued(base, run), False), journals)
        out.append(summary)
    return out, new


def _run_up_to_date(
    summary: RunSummary, journals: Journaled
) -> tuple[RunSummary, list[CheckpointRow]]:
    """``summary`` with the run's checkpoints journaled since, and those checkpoints."""
    run, stats = summary.run, summary.stats
    last = stats.last_step if stats is not None and stats.run_id == run.run_id else -1
    new = [c for c in journals.checkpoints.get(run.run_id, []) if c.step > last]
    return RunSummary(run, _added(stats, run, new), run.run_id in journals.live), new


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
        found = cp.info.get("usage")
        usage: dict = found if isinstance(found, dict) else {}
        base = stats or RunStats(run.run_id, 0, 0, 0, 0, 0, run.created_at, -1, "running", {})
        stats = dataclasses.replace(
            base,
            checkpoints=base.checkpoints + 1,
            tokens=base.tokens + int(cp.tokens or 0),
            prompt_tokens=base.prompt_tokens + int(usage.get("prompt_tokens") or 0),
            completion_tokens=base.completion_tokens + int(usage.get("completion_tokens") or 0),
            cached_tokens=base.cached_tokens + int(usage.get("cached_tokens") or 0),
            cache_write_tokens=base.cache_write_tokens + int(usage.get("cache_write_tokens") or 0),
            cost_usd=vocab.add_cost(base.cost_usd, cp.info.get("cost_usd")),
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
