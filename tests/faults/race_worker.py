"""A plain process that runs agents with :func:`jupyter_agent.kernel.runner.run_cell` in lockstep.

Two of these race for the same agent, trial after trial: each waits at a shared
barrier, then runs (or re-runs) the cell at the same instant as its rival. What
each got — an outcome or the busy error — goes back on a queue.
"""

from __future__ import annotations

import io
import os
import time
import traceback
from types import SimpleNamespace
from typing import Any

NOTEBOOK = "/race/notebook.ipynb"


def prompt(agent: str) -> str:
    return f"Race task of {agent}."


def race(store_path: str, url: str, api_key: str, barrier: Any, results: Any, rounds: int) -> None:
    """Run ``rounds`` races, two per agent: race ``2k`` starts ``a<k>``, race ``2k+1`` re-runs it."""
    from jupyter_agent.config import ClientSettings, Settings
    from jupyter_agent.kernel.identity import AgentIdentity
    from jupyter_agent.kernel.runner import AgentBusy, CellRequest, run_cell
    from jupyter_agent.loop.checkpoints import Collaborators
    from jupyter_agent.store.duckdb.store import DuckDBStore as Store
    from jupyter_agent.views.render import TextEvents

    shell = SimpleNamespace(user_ns={})
    client = ClientSettings(base_url=url, api_key=api_key, timeout=30, retries=0, backoff=0.0)
    settings = Settings(client=client)
    for i in range(rounds):
        agent = f"a{i // 2}"
        identity = AgentIdentity(NOTEBOOK, agent, "cell", "cell id")
        barrier.wait(timeout=120)
        started = time.time()
        try:
            outcome = run_cell(
                CellRequest(identity, prompt(agent), model="scripted"),
                Collaborators(Store(store_path, busy_timeout=60), shell, TextEvents(io.StringIO())),
                settings,
            )
            results.put((i, os.getpid(), outcome.action, outcome.run.run_id, started, time.time()))
        except AgentBusy as exc:
            results.put((i, os.getpid(), "busy", str(exc), started, time.time()))
        except BaseException:  # reported, never hidden: the test fails on it
            results.put((i, os.getpid(), "error", traceback.format_exc(), started, time.time()))
