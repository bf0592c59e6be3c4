"""``jupyter agent replay``: run a notebook's agents again from their stored replies, in CI too.

A fresh headless kernel runs the notebook's cells up to the agent's cell, as
``resume`` does, but each agent cell is replaced by ``%agent replay NAME``
(:mod:`jupyter_agent.kernel.replay`): earlier agents are replayed too, so
nothing continues or writes a run, and nothing calls a model. The notebook
file is not written. Each replay adds its verdict to a temporary file as a
JSON line, read back here. Exit 0: the same; 1: a replay diverged (the
checkpoint is named) or a cell failed; 2: a usage error (docs/replay.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
from typing import Any

from ..errors import NotebookError
from ..store.api import Store
from ..vocab import ENV_NOTEBOOK, ENV_REPLAY_REPORT
from .commands import Partial, Refused, Usage, agents_of, notebook_arg
from .resume import read_notebook, run_notebook

#: What an agent cell with no stored run becomes: it is not run (it would call a model).
NOT_RUN = "# jupyter agent replay: this agent cell has no stored run; not run"
_LOAD = 'get_ipython().extension_manager.load_extension("jupyter_agent")\n'


def _targets(args: argparse.Namespace, cells: dict[str, str], order: list[str]) -> list[str]:
    """The agents to report on, in notebook order (a :class:`Usage` error if unclear)."""
    names = [cells[cid] for cid in order if cid in cells]
    if args.all and args.agent:
        raise Usage("Give --agent NAME or --all, not both.")
    if not names:
        raise Usage(f"{os.path.basename(args.notebook)} has no agent with a stored run to replay.")
    if args.all:
        return names
    if args.agent:
        matches = [n for n in names if n == args.agent] or [
            n for n in names if n.startswith(args.agent)
        ]
        if len(matches) != 1:
            what = "is ambiguous" if matches else "is not an agent of this notebook"
            raise Usage(f"{args.agent!r} {what}; its agents: {', '.join(names)}.")
        return matches
    if len(names) > 1:
        raise Usage(f"The notebook has agents {', '.join(names)}: give --agent NAME or --all.")
    return names


def replay_notebook(nb: Any, cells: dict[str, str], targets: list[str]) -> Any:
    """``nb`` up to the last target's cell, each agent cell replaced by its replay."""
    out = copy.deepcopy(nb)
    last = max(i for i, c in enumerate(out.cells) if cells.get(c.get("id", "")) in targets)
    out.cells = out.cells[: last + 1]
    for cell in out.cells:
        if cell.get("cell_type") != "code":
            continue
        name = cells.get(cell.get("id", ""))
        if name is not None:
            cell.source = f"{_LOAD}%agent replay {name}"
        elif cell.get("source", "").lstrip().startswith("%%agent"):
            cell.source = NOT_RUN
        cell.outputs = []
    return out


def cmd_replay(store: Store, args: argparse.Namespace) -> Any:
    path = notebook_arg(args.notebook)
    assert path is not None
    try:
        nb = read_notebook(path)
    except NotebookError as exc:
        raise Usage(str(exc)) from None
    where = store.resolve_notebook(path) if store.exists() else path
    latest = {agent: runs[-1] for (_, agent), runs in agents_of(store, where).items()}
    order = [c.get("id", "") for c in nb.cells if c.get("cell_type") == "code"]
    cells = {r.cell_id: a for a, r in latest.items() if r.cell_id and r.cell_id in order}
    targets = _targets(args, cells, order)
    with tempfile.TemporaryDirectory(prefix="jupyter-agent-replay-") as folder:
        report = os.path.join(folder, "report.jsonl")
        env = {ENV_NOTEBOOK: path, "JUPYTER_AGENT_STORE": store.location, ENV_REPLAY_REPORT: report}
        replayed = replay_notebook(nb, cells, targets)
        run_notebook(
            path,
            replayed,
            env=env,
            timeout=args.timeout,
            write=lambda path, text: None,
            written=False,
        )
        with open(report, encoding="utf-8") as f:
            found = {r["agent"]: r for r in map(json.loads, f.read().splitlines())}
    for name in targets:
        if name not in found:  # its cell said why (e.g. a tool that cannot be offered)
            raise Refused(f"Agent {name} was not replayed: {_said(replayed, cells, name)}")
    results = [found[name] for name in targets]
    if not args.json:
        for r in results:
            print(_text(r))
    if any(not r["same"] for r in results):
        raise Partial(results if args.json else None)
    return results if args.json else None


def _said(nb: Any, cells: dict[str, str], name: str) -> str:
    """The last line the agent's replay cell printed."""
    cell = next(c for c in nb.cells if cells.get(c.get("id", "")) == name)
    text = "".join(
        o.get("text", "") or f"{o.get('ename', '')}: {o.get('evalue', '')}"
        for o in cell.get("outputs", [])
    )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "it printed nothing."


def _text(result: dict) -> str:
    where = f"agent {result['agent']} (run {result['run_id']})"
    counts = f"{result['compared']} tool calls compared, 0 model requests, {result['seconds']} s"
    d = result["divergence"]
    if d is None:
        return f"{where}: the same ({counts})."
    return (
        f"{where} diverged at checkpoint {d['step']}: the {d['what']} differs\n"
        f"  recorded: {d['recorded']}\n  replay:   {d['replayed']}"
    )
