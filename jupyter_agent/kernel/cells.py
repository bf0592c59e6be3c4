"""An agent's python calls in the notebook: its outputs shown again, its code as cells.

A restored cell shows the rich outputs its calls had (:func:`show_restored`);
``%agent cells`` puts the calls into the notebook as code cells with their
outputs (:func:`insert_cells`). Both read the run through
:mod:`jupyter_agent.views.cells`.
"""

from __future__ import annotations

from typing import Any

from ..core.redaction import secrets_in_environment
from ..errors import AgentError
from ..store.api import RunRow, Store
from ..tools import rich
from ..views.cells import agent_cells, python_calls, python_script, redacted
from ..vocab import plural


def show_restored(store: Store, run: RunRow, shell: Any) -> None:
    """Display again what the run's python calls displayed (saved redacted, as they were shown)."""
    try:
        calls = python_calls(store, run)
    except AgentError as exc:  # the answer and variables are restored all the same
        print(f"The calls' outputs are not shown: {exc}")
        return
    for call in calls:
        for output in rich.shown(call.outputs):
            rich.publish(shell, output, [])
            for note in rich.dropped(output):
                print(f"[{note}]")


#: The comm target the lab extension registers: it inserts the cells it is sent.
COMM_TARGET = "jupyter_agent.cells"


def insert_cells(store: Store, run: RunRow, shell: Any, *, replace: bool = False) -> int:
    """Send the run's python calls to the frontend as code cells for below the agent's cell.

    JupyterLab and Notebook 7 with the extension insert them (or, with
    ``replace``, show them as the agent cell's output instead); a kernel
    without a frontend (terminal IPython) prints them as a script. Returns how many.
    """
    secrets = secrets_in_environment()
    data = agent_cells(store, run.notebook, run.agent, secrets)
    count = len(data["cells"])
    if not count:
        print(f"Agent {run.agent} ran no python code.")
        return 0
    if getattr(shell, "kernel", None) is None:
        calls = [redacted(c, secrets) for c in python_calls(store, run)]
        print(python_script([(f"Agent {run.agent}", calls)]))
        return count
    from comm import create_comm

    channel = create_comm(target_name=COMM_TARGET, data={**data, "replace": replace})
    channel.close()
    where = "as the output of its cell" if replace else "below its cell"
    print(
        f"{plural(count, 'python call')} of agent {run.agent} sent to the notebook, {where} "
        "(JupyterLab and Notebook 7 with the jupyter-agent extension). Elsewhere, `jupyter "
        f"agent export NOTEBOOK --format ipynb --agent {run.agent}` writes them out."
    )
    return count
