"""An agent's python calls in the notebook: its outputs shown again, its code as cells.

A restored cell shows the rich outputs its calls had (:func:`show_restored`);
``%agent cells`` puts the calls into the notebook as code cells with their
outputs (:func:`insert_cells`). Both read the run through
:mod:`jupyter_agent.views.cells`.
"""

from __future__ import annotations

from typing import Any

from ..errors import AgentError
from ..store.api import RunRow, Store
from ..tools import rich
from ..views.cells import python_calls


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
