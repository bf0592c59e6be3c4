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
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import Settings
from ..core.state import AWAITING_APPROVAL, DONE, RunState, prompt_hash
from ..errors import (
    AgentBusy,  # noqa: F401  (raised by idle_state; callers catch it from here)
    AgentError,
    ConfigError,
    UsageProblem,
)
from ..loop.checkpoints import Collaborators
from ..loop.execution import SYSTEM_PROMPT, Execution
from ..loop.fingerprint import restored_change
from ..loop.notify import Delivery, notebook_link
from ..loop.runs import idle_state, new_run, saved_settings
from ..model.base import OFFLINE_MODEL, Endpoint, ModelClient, with_api
from ..model.offline import OfflineClient
from ..namespace import tracking as namespace
from ..namespace.baseline import restore_in_kernel
from ..store.api import CheckpointRow, RunRow, Store
from ..vocab import effective_status
from .identity import AgentIdentity


@dataclass
class Outcome:
    run: RunRow
    state: RunState
    action: str  # "new", "resume", "restore", "waiting" or "fork"
    restored: list[str]
    failed: dict[str, str]


@dataclass(frozen=True)
class CellRequest:
    """What one execution of an agent is asked to do (a cell, a resume, a child's task)."""

    identity: AgentIdentity
    prompt: str
    #: The model of this execution; empty: the model of the run's latest execution.
    model: str = ""
    #: Start a new run even if the latest one could continue.
    restart: bool = False
    #: The user's answer to the tool call the run waits on, if any.
    decision: dict | None = None
    #: Answers for runs delegated under this one, by run id; each given once, as it resumes.
    child_decisions: Mapping[str, dict] = field(default_factory=dict)
    #: The settings are what the cell's line says now, so they also replace the
    #: run's approval policy (see :func:`resume_run`).
    cell_options: bool = False
    #: Recorded on a new run (e.g. the agents it waits for, or its parent).
    info: dict | None = None

    @classmethod
    def continuing(cls, run: RunRow, **changes: Any) -> CellRequest:
        """A request to continue ``run``, as it is stored (its identity and prompt)."""
        identity = AgentIdentity(run.notebook, run.agent, run.cell_id, "store")
        return cls(identity, run.prompt, **changes)


def latest_run(store: Store, notebook: str, agent: str) -> RunRow | None:
    runs = store.runs(notebook=notebook, agent=agent)
    return runs[-1] if runs else None


def restore_variables(
    run: RunRow, state: RunState, collaborators: Collaborators
) -> tuple[list[str], dict[str, str]]:
    """Put the run's saved variables back into the namespace, and say which.

    A value changed in this kernel since the run last saved it here (the user's,
    while the agent waited) is the kernel's to keep: it is not overwritten, and
    a difference from the agent's saved value is said (see
    :mod:`jupyter_agent.namespace.baseline`).
    """
    store, ns, events = collaborators.store, collaborators.shell.user_ns, collaborators.events
    baselines = collaborators.baselines
    kept: list[str] = []
    if baselines is None:
        restored, failed = namespace.restore(ns, state.vars, store.blobs)
    else:
        restored, failed, kept = restore_in_kernel(
            ns, state.vars, store.blobs, baselines, run.run_id
        )
    if restored:
        events.info("Variables restored from the store: " + ", ".join(restored))
    for name in kept:
        events.notice(
            f"{name} was changed in this kernel since the agent saved it: the kernel's value "
            "is kept, and differs from the agent's saved one"
        )
    for name, why in failed.items():
        events.notice(f"{name} {why}")
    for name, why in sorted(state.unsaved.items()):
        if name not in ns:  # e.g. a generator, after a kernel restart
            events.notice(f"{name} is not restored: {why}")
    return restored, failed


def run_cell(
    request: CellRequest,
    collaborators: Collaborators,
    settings: Settings,
    reads: contextlib.ExitStack | None = None,
) -> Outcome:
    """Start, resume or restore the agent of a cell.

    The request's ``model`` (empty: the run's latest) and ``settings`` apply to
    this execution. ``reads``: a store session the caller opened already
    (around its timeline's first load), closed here with this function's own
    reads, before the first model request.
    """
    store = collaborators.store
    # Everything read before the first model request shares one store connection.
    reads = reads if reads is not None else contextlib.ExitStack()
    reads.enter_context(store.session())
    with reads:
        # The kernel learns its notebook's path at start; follow renames made since.
        identity = request.identity
        identity = replace(identity, notebook=store.resolve_notebook(identity.notebook))
        with store.agent_lock(identity.notebook, identity.agent):
            latest = latest_run(store, identity.notebook, identity.agent)
            parent = latest.info.get("parent_agent") if latest is not None else None
            if parent and request.cell_options:
                # A cell's runs would become the child's latest: the parent's next
                # delegation to it would be refused. (`%agent resume` continues the child.)
                raise UsageProblem(
                    f"{identity.agent!r} is a child agent of {parent!r} in this notebook; "
                    "choose another --name for this cell."
                )
            previous = None if request.restart else latest
            # The stored prompt has its secrets redacted; `%agent resume` passes that text back.
            if previous is not None and prompt_hash(request.prompt) not in (
                previous.prompt_hash,
                prompt_hash(previous.prompt),
            ):
                previous = None
            if previous is None:
                policy = settings.policy
                info = {
                    **(request.info or {}),
                    "approve": policy.recorded_approval(),
                    "plan": policy.plan,
                }
                run = new_run(identity, request.prompt, request.model, info=info)
                execution = make_execution(run, RunState(), request.model, collaborators, settings)
                reads.close()
                execution.execute(first=True)
                return stopped(
                    Outcome(run, execution.state, "new", [], {}), collaborators, settings
                )
            return resume_run(previous, request, collaborators, settings, reads)


def resume_run(
    run: RunRow,
    request: CellRequest,
    collaborators: Collaborators,
    settings: Settings,
    reads: contextlib.ExitStack | None = None,
) -> Outcome:
    """Continue ``run`` from its last checkpoint, or restore it when it has nothing left to do.

    The continuation uses the request's model, or without one the model of the
    run's latest execution, so a corrected ``--model`` takes effect. Its approval
    policy is that of ``settings`` with the request's ``cell_options``, else the
    run's latest. What it reads before executing shares one store session
    (``reads``, the caller's if it has one), closed before the first model request.
    """
    store = collaborators.store
    if reads is None:
        reads = contextlib.ExitStack()
        reads.enter_context(store.session())
    with store.agent_lock(run.notebook, run.agent), reads:
        state, live = idle_state(store, run, "running it here")
        status = effective_status(state.status, run.run_id, live)
        if status == AWAITING_APPROVAL and request.decision is None:
            restored, failed = restore_variables(run, state, collaborators)
            # Its event may not have reached anyone before the kernel stopped: see notify.
            outcome = Outcome(run, state, "waiting", restored, failed)
            return stopped(outcome, collaborators, settings)
        if status == DONE:
            restored, failed = restore_variables(run, state, collaborators)
            _say_changes(run, state, settings, collaborators, last_settings(store, run)["model"])
            return Outcome(run, state, "restore", restored, failed)
        last = last_settings(store, run)
        if not request.cell_options:
            settings = replace(settings, policy=settings.policy.continuing(last["approve"]))
        # Resolve the endpoint before touching the namespace, so a configuration
        # error leaves everything as it was.
        model = request.model or last["model"]
        execution = make_execution(run, state, model, collaborators, settings)
        restored, failed = restore_variables(run, state, collaborators)
        reads.close()
        # Killed after the run row was written but before its first checkpoint:
        # start it properly, or the model would be called with no conversation.
        own_first = run.parent_step + 1 if run.parent_run and run.parent_step is not None else 0
        execution.execute(first=state.step < own_first, decision=request.decision)
        return stopped(
            Outcome(run, execution.state, "resume", restored, failed), collaborators, settings
        )


def stopped(outcome: Outcome, collaborators: Collaborators, settings: Settings) -> Outcome:
    """``outcome``, once the webhooks are told where it stopped (on threads; see loop.notify)."""
    notifier = collaborators.notifier
    if settings.notify and notifier is not None:
        run = outcome.run
        link = notebook_link(settings.server_url, run.notebook, os.environ.get("JPY_SESSION_NAME"))
        delivery = Delivery(
            settings.notify,
            _said_in_timeline(collaborators, (run.notebook, run.agent)),
            retries=settings.client.retries,
            backoff=settings.client.backoff,
            link=link,
        )
        try:
            notifier.stopped(collaborators.store, run, delivery, settings.secrets)
        except AgentError as exc:  # never fails the agent: at worst it is told again later
            collaborators.events.notice(f"notifications not sent: {exc}")
    return outcome


def _said_in_timeline(collaborators: Collaborators, key: tuple[str, str]) -> Callable[[str], None]:
    """A notice for the run's output and a warning where the agent's status is read.

    A notification is dropped seconds after the execution ended, when its cell's
    output is no longer where anyone looks: its open timelines' headers are
    (``Collaborators.warn``, the runtime's).
    """

    def say(message: str) -> None:
        collaborators.events.notice(message)
        if collaborators.warn is not None:
            collaborators.warn(key, message)

    return say


def _say_changes(
    run: RunRow, state: RunState, settings: Settings, collaborators: Collaborators, model: str
) -> None:
    """Say what changed since a finished run's last execution, as it is restored (one line)."""
    config = settings.client
    try:
        endpoint = Endpoint.resolve(model, base_url=config.base_url, api_key=config.api_key)
    except ConfigError:  # restoring needs no endpoint: compare the model's name only
        endpoint = Endpoint(model, None, "", "")
    ns = collaborators.shell.user_ns
    if change := restored_change(state, run, ns, endpoint, SYSTEM_PROMPT):
        collaborators.events.notice(change)


def last_settings(
    store: Store, run: RunRow, rows: list[CheckpointRow] | None = None
) -> dict[str, Any]:
    """The model and approval policy of the run's latest execution (its latest resume).

    ``rows``: the run's checkpoints to look in (default: its resumes, or what the agent's
    state file kept of them while it is current).
    """
    if rows is None:
        if (saved := saved_settings(store, run)) is not None:
            return saved
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


def make_execution(
    run: RunRow, state: RunState, model: str, collaborators: Collaborators, settings: Settings
) -> Execution:
    """The one place an :class:`Execution` is built: the endpoint resolved, its client made."""
    config, cancel = settings.client, collaborators.cancel
    named = with_api(model, config.api)
    endpoint = Endpoint.resolve(named, base_url=config.base_url, api_key=config.api_key)
    client: ModelClient
    if endpoint.model == OFFLINE_MODEL:
        client = OfflineClient(endpoint, cancel=cancel)
    else:
        # Imported here: the SDK takes half a second, which `%load_ext` would otherwise
        # wait for (its warm-up imports it in the background meanwhile).
        from ..model.clients import client_class

        client = client_class(endpoint.api)(
            endpoint,
            timeout=config.timeout,
            retries=config.retries,
            backoff=config.backoff,
            cancel=cancel,
            headers=config.headers,
            query=config.query,
            extra_body=config.extra_body,
        )
    return Execution(run, state, client, collaborators, settings)
