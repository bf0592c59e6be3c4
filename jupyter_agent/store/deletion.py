"""Deleting an agent, the same for every backend, on the other verbs of :class:`Store`.

Kept apart from :mod:`.api` (the records and the protocol) because it is logic, not
interface: :meth:`jupyter_agent.store.sql.SQLStore.delete_agent` calls it.
"""

from __future__ import annotations

from .api import Store, history_chain


def delete_agent_runs(
    store: Store, notebook: str, agent: str, *, keep_latest: bool = False
) -> list[str]:
    """:meth:`Store.delete_agent` for every backend, on the other verbs.

    The rules live here once: forks keep their ancestors, live runs are not
    touched, a run's ``delegate`` children (and theirs) go with it, and the backend's :meth:`Store.delete_runs` collects the blobs.
    The agent's lock is held while its runs are read and deleted: an execution
    that has taken it but not yet written its run owns the agent too.
    """
    from ..errors import AgentBusy, Conflict, NotFound

    if not (store.exists() and store.runs(notebook=notebook, agent=agent)):
        raise NotFound(f"No agent named {agent!r} in this notebook.")
    try:
        with store.agent_lock(notebook, agent):  # only taking it raises AgentBusy
            runs = store.runs(notebook=notebook, agent=agent)
            doomed = [r.run_id for r in runs]
            if keep_latest:
                keep = {seg for seg, _ in history_chain(runs[-1], {r.run_id: r for r in runs})}
                doomed = [r for r in doomed if r not in keep]
            doomed += children_of(store, notebook, doomed)
            busy = sorted(store.live_runs() & set(doomed))
            if busy:
                raise Conflict(
                    f"Agent {agent!r} is running (run {busy[0]}); stop it before deleting it."
                )
            forks = store.forks(doomed)
            if forks:
                raise Conflict(
                    f"Run {forks[0].run_id} of agent {forks[0].agent!r} was forked from a run that "
                    "would be deleted; delete that agent first."
                )
            store.delete_runs(doomed)
            return doomed
    except AgentBusy as exc:
        raise Conflict(
            f"Agent {agent!r} is running {exc.where}; stop it before deleting it."
        ) from None


def children_of(store: Store, notebook: str, run_ids: list[str]) -> list[str]:
    """The runs delegated under ``run_ids``, at any depth: a child never outlives its parent."""
    runs = store.runs(notebook=notebook)
    found: list[str] = []
    parents = set(run_ids)
    while parents:
        kids = [r.run_id for r in runs if r.info.get("parent_run") in parents]
        kids = [k for k in kids if k not in found and k not in run_ids]
        found += kids
        parents = set(kids)
    return found
