"""What running an agent cell does: start, resume or restore.

* A cell whose last run did not finish (kernel killed, interrupted, error,
  step limit, awaiting approval) resumes that run from its last checkpoint.
* A finished cell with an unchanged prompt restores its answer and variables
  from the store and calls no model.
* A changed prompt, or ``--restart``, starts a new run; older runs stay stored.

One agent is executed by at most one thread of a kernel at a time (the
claims of :class:`~jupyter_agent.kernel.runtime.AgentRuntime`), and by at most one process: :meth:`Store.agent_lock` is taken
before the agent's latest run is read and held until its execution ends.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, replace
from typing import Any

from ..core.state import AWAITING_APPROVAL, DONE, RunState, prompt_hash
from ..errors import AgentBusy
from ..loop.execution import (
    Events,
    Execution,
    RunOptions,
    approve_policy,
    effective_status,
    load_state,
    new_run,
)
from ..model.base import OFFLINE_MODEL, Endpoint, ModelClient
from ..model.chat import ChatCompletionsClient
from ..model.offline import OfflineClient
from ..namespace import tracking as namespace
from ..store.api import CheckpointRow, RunRow, Store
from .identity import AgentIdentity


@dataclass
class Outcome:
    run: RunRow
    state: RunState
    action: str  # "new", "resume", "restore", "waiting" or "fork"
    restored: list[str]
    failed: dict[str, str]


def latest_run(store: Store, notebook: str, agent: str) -> RunRow | None:
    runs = store.runs(notebook=notebook, agent=agent)
    return runs[-1] if runs else None


def restore_variables(
    store: Store, shell: Any, state: RunState, events: Events
) -> tuple[list[str], dict[str, str]]:
    """Put the run's saved variables back into the namespace, and say which."""
    restored, failed = namespace.restore(shell.user_ns, state.vars, store.blobs)
    if restored:
        events.info("Variables restored from the store: " + ", ".join(restored))
    for name, why in failed.items():
        events.notice(f"{name} {why}")
    for name, why in sorted(state.unsaved.items()):
        if name not in shell.user_ns:  # e.g. a generator, after a kernel restart
            events.notice(f"{name} is not restored: {why}")
    return restored, failed


def run_cell(
    *,
    store: Store,
    shell: Any,
    identity: AgentIdentity,
    prompt: str,
    model: str,
    options: RunOptions,
    events: Events,
    restart: bool = False,
    decision: dict | None = None,
    endpoint_args: dict | None = None,
    cancel: threading.Event | None = None,
    cell_options: bool = False,
    info: dict | None = None,
    reads: contextlib.ExitStack | None = None,
) -> Outcome:
    """Start, resume or restore the agent of a cell.

    ``model`` (empty: the run's latest) and ``options`` apply to this execution;
    ``cell_options`` says they are what the cell's line says now, so they also
    replace the run's approval policy (see :func:`resume_run`). ``info`` is
    recorded on a new run (e.g. the agents it waits for, or its parent).
    ``reads``: a store session the caller opened already (around its timeline's
    first load), closed here with this function's own reads, before the first
    model request.
    """
    # Everything read before the first model request shares one store connection.
    reads = reads if reads is not None else contextlib.ExitStack()
    reads.enter_context(store.session())
    with reads:
        # The kernel learns its notebook's path at start; follow renames made since.
        identity = replace(identity, notebook=store.resolve_notebook(identity.notebook))
        with store.agent_lock(identity.notebook, identity.agent):
            previous = None if restart else latest_run(store, identity.notebook, identity.agent)
            # The stored prompt has its secrets redacted; `%agent resume` passes that text back.
            if previous is not None and prompt_hash(prompt) not in (
                previous.prompt_hash,
                prompt_hash(previous.prompt),
            ):
                previous = None
            if previous is None:
                info = {**(info or {}), "approve": approve_policy(options), "plan": options.plan}
                run = new_run(identity, prompt, model, info=info)
                execution = make_execution(
                    store, shell, run, RunState(), model, options, events, endpoint_args, cancel
                )
                reads.close()
                execution.execute(first=True)
                return Outcome(run, execution.state, "new", [], {})
            return resume_run(
                store=store,
                shell=shell,
                run=previous,
                model=model,
                options=options,
                events=events,
                decision=decision,
                endpoint_args=endpoint_args,
                cancel=cancel,
                cell_options=cell_options,
                reads=reads,
            )


def resume_run(
    *,
    store: Store,
    shell: Any,
    run: RunRow,
    options: RunOptions,
    events: Events,
    model: str = "",
    decision: dict | None = None,
    endpoint_args: dict | None = None,
    cancel: threading.Event | None = None,
    cell_options: bool = False,
    reads: contextlib.ExitStack | None = None,
) -> Outcome:
    """Continue ``run`` from its last checkpoint, or restore it when it has nothing left to do.

    The continuation uses ``model``, or without one the model of the run's
    latest execution, so a corrected ``--model`` takes effect. Its approval
    policy is the cell's with ``cell_options``, else the run's latest. What it
    reads before executing shares one store session (``reads``, the caller's
    if it has one), closed before the first model request.
    """
    if reads is None:
        reads = contextlib.ExitStack()
        reads.enter_context(store.session())
    with store.agent_lock(run.notebook, run.agent), reads:
        live = store.live_runs()
        if run.run_id in live:
            raise AgentBusy(
                f"Agent {run.agent!r} is running in another kernel or in the background. "
                "Wait for it, or stop it there, before running it here."
            )
        state = load_state(store, run)
        status = effective_status(state.status, run.run_id, live)
        if status == AWAITING_APPROVAL and decision is None:
            restored, failed = restore_variables(store, shell, state, events)
            return Outcome(run, state, "waiting", restored, failed)
        if status == DONE:
            restored, failed = restore_variables(store, shell, state, events)
            return Outcome(run, state, "restore", restored, failed)
        last = last_settings(store, run)
        if not cell_options:
            options = run_options(run, options, last["approve"])
        # Resolve the endpoint before touching the namespace, so a configuration
        # error leaves everything as it was.
        execution = make_execution(
            store, shell, run, state, model or last["model"], options, events, endpoint_args, cancel
        )
        restored, failed = restore_variables(store, shell, state, events)
        reads.close()
        # Killed after the run row was written but before its first checkpoint:
        # start it properly, or the model would be called with no conversation.
        own_first = run.parent_step + 1 if run.parent_run and run.parent_step is not None else 0
        execution.execute(first=state.step < own_first, decision=decision)
        return Outcome(run, execution.state, "resume", restored, failed)


def last_settings(
    store: Store, run: RunRow, rows: list[CheckpointRow] | None = None
) -> dict[str, Any]:
    """The model and approval policy of the run's latest execution (its latest resume).

    ``rows``: the run's checkpoints to look in (default: its resumes).
    """
    if rows is None:
        rows = store.checkpoints(run.run_id, kind="resume")
    for cp in reversed(rows):
        if cp.run_id == run.run_id and cp.kind == "resume" and "model" in cp.info:
            return {"model": cp.info["model"], "approve": cp.info.get("approve", False)}
    return {"model": run.model, "approve": run.info.get("approve", False)}


def settings_at(store: Store, run: RunRow, step: int) -> dict[str, Any]:
    """The model and approval policy in effect at checkpoint ``step`` of ``run``, e.g. for a fork.

    Those of the run's latest resume at or before it, else the run's own (a
    fork's own are those at its fork point).
    """
    rows = [cp for cp in store.checkpoints(run.run_id, kind="resume") if cp.step <= step]
    return last_settings(store, run, rows)


def run_options(
    run: RunRow, options: RunOptions, policy: bool | list[str] | None = None
) -> RunOptions:
    """Continuations the cell does not start keep asking: a run's approval policy stays on.

    ``policy``: the run's latest (:func:`last_settings`); default, the one it started with.
    """
    if policy is None:
        policy = run.info.get("approve")
    if not policy:
        return options
    tools = tuple(policy) if isinstance(policy, list) else ()
    if options.approve and not options.approve_tools:
        tools = ()
    return replace(options, approve=True, approve_tools=tools)


def make_execution(
    store: Store,
    shell: Any,
    run: RunRow,
    state: RunState,
    model: str,
    options: RunOptions,
    events: Events,
    endpoint_args: dict | None,
    cancel: threading.Event | None = None,
) -> Execution:
    """The one place an :class:`Execution` is built: the endpoint resolved, its client made."""
    endpoint = Endpoint.resolve(model, **(endpoint_args or {}))
    client: ModelClient
    if endpoint.model == OFFLINE_MODEL:
        client = OfflineClient(endpoint, cancel=cancel)
    else:
        client = ChatCompletionsClient(
            endpoint,
            timeout=options.model_timeout,
            retries=options.retries,
            backoff=options.backoff,
            cancel=cancel,
        )
    return Execution(store, run, state, shell, client, events, options)
