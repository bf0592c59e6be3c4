"""``%agent replay NAME``: the agent's latest run again, from its stored replies, in this kernel.

The replay itself is :func:`jupyter_agent.loop.replay.replay_run`; here it is
reported: a paragraph in the cell, and, when ``jupyter agent replay`` runs the
notebook, a JSON line in the file it names (:data:`~jupyter_agent.vocab.ENV_REPLAY_REPORT`),
which is how the command learns each agent's verdict without reading outputs.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..config import Settings
from ..loop.replay import ReplayReport, replay_run
from ..store.api import RunRow, Store
from ..vocab import ENV_REPLAY_REPORT


def replay_agent(store: Store, run: RunRow, shell: Any, settings: Settings) -> ReplayReport:
    """Replay ``run`` in ``shell`` and say what it found (see the module)."""
    report = replay_run(store, run, shell, settings)
    print(report.text())
    target = os.environ.get(ENV_REPLAY_REPORT)
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(json.dumps(report.as_dict()) + "\n")
    return report
