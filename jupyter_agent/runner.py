"""What running an agent cell does: start, resume or restore.

* A cell whose last run did not finish (kernel killed, interrupted, error,
  step limit, awaiting approval) resumes that run from its last checkpoint.
* A finished cell with an unchanged prompt restores its answer and variables
  from the store and calls no model.
* A changed prompt, or ``--restart``, starts a new run; older runs stay stored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from . import namespace
from .agent import Events, Execution, RunOptions, effective_status, load_state, new_run
from .identity import AgentIdentity
from .model import Endpoint, ModelClient
from .state import AWAITING_APPROVAL, DONE, RunState, prompt_hash
from .store import RunRow, Store, StoreError


class AgentBusy(StoreError):
    """The agent is running elsewhere (another kernel, or in the background here)."""


@dataclass
class Outcome:
    run: RunRow
    state: RunState
    action: str  # "new", "resume", "restore" or "waiting"
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
) -> Outcome:
    previous = None if restart else latest_run(store, identity.notebook, identity.agent)
    if previous is not None and previous.prompt_hash != prompt_hash(prompt):
        previous = None
    if previous is None:
        run = new_run(identity, prompt, model, info={"approve": options.approve})
        execution = _execution(store, shell, run, RunState(), model, options, events, endpoint_args)
        execution.execute(first=True)
        return Outcome(run, execution.state, "new", [], {})

    live = store.live_runs()
    if previous.run_id in live:
        raise AgentBusy(
            f"Agent {identity.agent!r} is running in another kernel or in the background. "
            "Wait for it, or stop it there, before running it here."
        )
    state = load_state(store, previous)
    status = effective_status(state.status, previous.run_id, live)
    if status == AWAITING_APPROVAL and decision is None:
        restored, failed = restore_variables(store, shell, state, events)
        return Outcome(previous, state, "waiting", restored, failed)
    if status == DONE:
        restored, failed = restore_variables(store, shell, state, events)
        return Outcome(previous, state, "restore", restored, failed)
    # The approval policy belongs to the run: a resumed run keeps asking.
    options = replace(options, approve=options.approve or bool(previous.info.get("approve")))
    # Resolve the endpoint before touching the namespace, so a configuration
    # error leaves everything as it was.
    execution = _execution(
        store, shell, previous, state, previous.model or model, options, events, endpoint_args
    )
    restored, failed = restore_variables(store, shell, state, events)
    execution.execute(first=False, decision=decision)
    return Outcome(previous, execution.state, "resume", restored, failed)


def _execution(
    store: Store,
    shell: Any,
    run: RunRow,
    state: RunState,
    model: str,
    options: RunOptions,
    events: Events,
    endpoint_args: dict | None,
) -> Execution:
    endpoint = Endpoint.resolve(model, **(endpoint_args or {}))
    client = ModelClient(
        endpoint, timeout=options.model_timeout, retries=options.retries, backoff=options.backoff
    )
    return Execution(store, run, state, shell, client, events, options)
