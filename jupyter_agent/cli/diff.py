"""``jupyter agent diff A B``: what differs between two points of agents' histories.

A and B are ``RUN``, ``RUN@CHECKPOINT``, an agent's name (its latest run) or
``NAME@CHECKPOINT`` (:mod:`jupyter_agent.views.points`), of one agent or of two.
It reads only: the messages and calls after the common prefix, the variables and
the files that differ (:mod:`jupyter_agent.views.diff`). Small values are read
for a unified diff only from a store :meth:`Store.check_trusted` accepts.
Exit 0: compared (whether or not anything differs); 1: an unknown run, agent or
checkpoint; 2: a malformed point.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import UsageProblem
from ..store.api import Store
from ..views import diff as views
from .commands import Usage, notebook_arg


def cmd_diff(store: Store, args: argparse.Namespace) -> Any:
    try:
        a, b, diff = views.compare_points(store, args.a, args.b, notebook_arg(args.notebook))
    except UsageProblem as exc:
        raise Usage(str(exc)) from None
    if args.json:
        return views.as_dict(a, b, diff)
    print(views.text(a, b, diff))
    return None
