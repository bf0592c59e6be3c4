"""Runs as stored: a new run's row, the history it continues, and its state now.

A run's history is its own checkpoints after those of the runs it was forked
from, each up to its fork point (:func:`chain`). Its state is the fold of that
history (:func:`load_state`), from the latest compaction's snapshot on
(:func:`resume_point`), so loading a long run reads a window's worth of
checkpoints.
"""

from __future__ import annotations

import contextlib
import gc
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, fields
from typing import Any, Protocol

import orjson

from ..core.redaction import redact
from ..core.state import RunState, fold, fold_from_snapshot, placeholders, prompt_hash
from ..errors import AgentBusy, StoreError
from ..store.api import RunRow, Store


class Named(Protocol):
    """Where a run belongs: its notebook, agent and cell (an agent's identity)."""

    @property
    def notebook(self) -> str: ...
    @property
    def agent(self) -> str: ...
    @property
    def cell_id(self) -> str | None: ...


def new_run(
    identity: Named,
    prompt: str,
    model: str,
    *,
    parent: tuple[str, int] | None = None,
    info: dict | None = None,
) -> RunRow:
    return RunRow(
        run_id=uuid.uuid4().hex[:16],
        notebook=identity.notebook,
        agent=identity.agent,
        cell_id=identity.cell_id,
        prompt=prompt,
        prompt_hash=prompt_hash(prompt),
        model=model,
        parent_run=parent[0] if parent else None,
        parent_step=parent[1] if parent else None,
        created_at=time.time(),
        info=info or {},
    )


def chain(store: Store, run: RunRow) -> list[tuple[str, int | None]]:
    """The (run, up-to-step) segments whose checkpoints make up ``run``'s history."""
    segments: list[tuple[str, int | None]] = [(run.run_id, None)]
    current = run
    while current.parent_run:
        segments.insert(0, (current.parent_run, current.parent_step))
        parent = store.run(current.parent_run)
        if parent is None:
            raise StoreError(
                f"Run {run.run_id} was forked from run {current.parent_run}, which was deleted."
            )
        current = parent
    return segments


def owner_of(store: Store, run: RunRow, step: int) -> str:
    """The run whose checkpoint ``step`` of ``run``'s history is (a parent's, up to a fork point)."""
    for run_id, upto in chain(store, run):
        if upto is None or step <= upto:
            return run_id
    return run.run_id


def load_state(store: Store, run: RunRow, *, full: bool = False) -> RunState:
    """The run's state now; ``full``: with every message, not only those its view shows.

    Without ``full`` the fold starts at the latest compaction's snapshot, so a
    resume reads a window's worth of checkpoints however long the run is; the
    messages compacted away are :data:`~jupyter_agent.core.state.COMPACTED` placeholders.
    Its reads share one connection (the caller's session, if it has one). Without
    ``full``, the agent's state file answers for its latest run while it is current
    (see :func:`saved_latest`): no checkpoint is read, and nothing of DuckDB.
    """
    if not full:
        saved = _saved(store, run.notebook, run.agent)
        if saved is not None and saved[0].run_id == run.run_id:
            return saved[1]
    with store.session():
        segments = chain(store, run)
        since = 0 if full else resume_point(store, segments)
        if since:
            state = fold_from_snapshot(store.payloads(segments, since))
            if state is not None:
                return state
        return fold(store.payloads(segments))


def idle_state(store: Store, run: RunRow, doing: str) -> tuple[RunState, set[str]]:
    """``run``'s state, and the runs a process executes, unless one executes ``run``.

    Under the agent's store lock, a run another process executes cannot be
    continued or answered here: :class:`AgentBusy`, ending "before ``doing``".
    """
    live = store.live_runs()
    if run.run_id in live:
        raise AgentBusy(
            f"Agent {run.agent!r} is running in another kernel or in the background. "
            f"Wait for it, or stop it there, before {doing}."
        )
    return load_state(store, run), live


def resume_point(store: Store, segments: list[tuple[str, int | None]]) -> int:
    """The step the fold from the history's latest snapshot starts at; 0: from the start."""
    for run_id, upto in reversed(segments):
        for row in reversed(store.checkpoints(run_id, kind="compaction")):
            if (upto is None or row.step <= upto) and "resume_from" in row.info:
                return int(row.info["resume_from"])
    return 0


def save_latest(
    store: Store,
    run: RunRow,
    state: RunState,
    secrets: list[str],
    settings: dict[str, Any] | None = None,
) -> None:
    """Keep the run and its state where the next resume reads them without a query.

    Called as an execution ends, after its journal is folded in: the store
    trusts the copy only while nothing written since contradicts it. What is
    kept is what :func:`load_state` gives, the messages from the latest
    compaction's snapshot on, so reading it costs a window's worth of messages
    however long the run. Redacted as the checkpoints it folds from were
    (``secrets``: the execution's writer's). ``settings``: the model and approval
    policy in effect after the execution (:func:`execution_settings`), what
    :func:`saved_settings` gives for the run then; None: not known, the store answers.
    Raises TypeError for a state JSON cannot hold.
    """
    values = {f.name: getattr(state, f.name) for f in fields(state)}
    values["messages"] = _view(state)
    kept = redact(
        {"v": _SAVED_VERSION, "run": asdict(run), "state": values, "settings": settings}, secrets
    )
    store.save_latest(run.notebook, run.agent, run.run_id, orjson.dumps(kept))


def execution_settings(run: RunRow, resumed: dict[str, Any] | None) -> dict[str, Any]:
    """The model and approval policy a later resume of ``run`` continues with, as the
    store's checkpoints give them (``kernel.runner.last_settings``): those recorded on
    this execution's resume checkpoint (``resumed``, its info), else the run's own
    (a first execution, which resumed nothing)."""
    if resumed is not None and "model" in resumed:
        return {"model": resumed["model"], "approve": resumed.get("approve", False)}
    return {"model": run.model, "approve": run.info.get("approve", False)}


#: The layout of :func:`save_latest`'s body; a file of another is ignored.
_SAVED_VERSION = 3


def _view(state: RunState) -> dict:
    """The state's messages as a fold from its latest snapshot has them (see :meth:`RunState.snapshot`).

    ``{"length", "kept", "later"}``: ``length`` placeholders, but for ``kept``, then ``later``.
    """
    upto = state.compaction.get("upto")
    point = state.snapshot(int(upto)) if upto else None
    if point is None:
        return {"length": 0, "kept": [], "later": state.messages}
    length = int(point[1]["length"])
    return {"length": length, "kept": point[1]["kept"], "later": state.messages[length:]}


def saved_latest(store: Store, notebook: str, agent: str) -> tuple[RunRow, RunState] | None:
    """The agent's latest run and its state as :func:`save_latest` kept them, if still current."""
    found = _saved(store, notebook, agent)
    return None if found is None else (found[0], found[1])


def saved_settings(store: Store, run: RunRow) -> dict[str, Any] | None:
    """The model and approval policy of ``run``'s latest execution, from the agent's state
    file while it is current and about ``run`` (None: ask the store's checkpoints).

    The file was parsed moments ago by the same cell's :func:`load_state`, as a rule:
    its settings are kept with the text they came from, so it is not parsed twice."""
    found = store.saved_latest(run.notebook, run.agent)
    if found is None or found[0] != run.run_id:
        return None
    memo = _settings_memo
    if memo is not None and memo[0] == found[1]:
        return dict(memo[1]) if memo[1] is not None else None
    parsed = _parse(found)
    return None if parsed is None or parsed[2] is None else dict(parsed[2])


def _saved(
    store: Store, notebook: str, agent: str
) -> tuple[RunRow, RunState, dict[str, Any] | None] | None:
    found = store.saved_latest(notebook, agent)
    return None if found is None else _parse(found)


#: The last state file parsed, and the settings in it (see :func:`saved_settings`).
_settings_memo: tuple[bytes, dict[str, Any] | None] | None = None


def _parse(found: tuple[str, bytes]) -> tuple[RunRow, RunState, dict[str, Any] | None] | None:
    global _settings_memo
    try:
        with _collection_paused():
            data = orjson.loads(found[1])
            if data.get("v") != _SAVED_VERSION:
                return None  # written by another version: DuckDB answers
            run = RunRow(**data["run"])
            values = data["state"]
            view = values["messages"]
            values["messages"] = placeholders(int(view["length"]), view["kept"]) + view["later"]
            values["message_steps"] = [tuple(pair) for pair in values["message_steps"]]
            state = RunState(**values)
            settings = data.get("settings")
            if not (isinstance(settings, dict) and {"model", "approve"} <= settings.keys()):
                settings = None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None  # damaged in a way its frame cannot tell: DuckDB answers
    if run.run_id != found[0]:
        return None
    _settings_memo = (found[1], settings)
    return run, state, settings


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """No garbage collection while a state's thousands of dicts are built.

    They are all alive when built, so a collection frees nothing; yet each one
    the allocations trigger walks the objects of the whole kernel, the user's
    too, and would cost a resume more than the parse itself. The pause is the
    process's, for the parse's milliseconds: another thread's garbage waits for
    the next collection, none is lost.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
