"""``jupyter agent export``: an agent's transcript and checkpoints, or its code as cells.

The only command that decodes payloads: it folds the latest run's history the
way the kernel does (after :meth:`Store.check_trusted`, since an older store's
payloads unpickle), then redacts the secrets of its own environment too.
``--format ipynb|py`` writes a notebook's agents' python calls as code cells
with the outputs they had (:mod:`jupyter_agent.views.cells`), to run without the agent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from typing import Any

from ..core import history
from ..core.redaction import redact, secrets_in_environment
from ..core.state import call_code, fold
from ..store.api import Store
from ..views import cells as cell_views
from ..vocab import plural, printable, tokens
from .commands import Refused, agents_of, checkpoint_dict, find, latest_row, notebook_arg

#: The formats that write code cells rather than a transcript.
CELL_FORMATS = ("ipynb", "py")


class BadOptions(Refused):
    """A combination of options that means nothing: exit code 2, one line."""


def cmd_export(store: Store, args: argparse.Namespace) -> Any:
    if args.format in CELL_FORMATS:
        return _emit(args, _export_cells(store, args))
    if args.agent:
        raise BadOptions("--agent is for --format ipynb or py; give the agent's name instead.")
    notebook, agent, runs = find(store, args.name, notebook_arg(args.notebook))
    run = runs[-1]
    pairs = store.payloads(history.segments(run, store.run, whole=True))
    state = fold(pairs)
    row = latest_row(store, run)
    data = redact(
        {
            "notebook": notebook,
            "agent": agent,
            "run_id": run.run_id,
            "model": run.model,
            "prompt": run.prompt,
            "status": row["status"],
            "steps": sum(1 for cp, _ in pairs if cp.kind == "model"),
            "tokens": state.tokens,
            "answer": state.final_answer(),
            "messages": state.messages,
            "checkpoints": [{"run_id": cp.run_id, **checkpoint_dict(cp)} for cp, _ in pairs],
        },
        secrets_in_environment(),
    )
    if args.format == "json":
        text = json.dumps(data, indent=2, default=str)
    else:
        text = _markdown(data, row["label"])
    return _emit(args, text)


def _emit(args: argparse.Namespace, text: str) -> None:
    """Write the export to ``-o`` (atomically) or standard output."""
    if args.output:
        try:
            write_atomic(args.output, text + "\n")
        except OSError as exc:
            raise Refused(f"Cannot write {args.output}: {exc.strerror or exc}.") from None
        print(f"Wrote {args.output}.", file=sys.stderr)
    else:
        print(text)


def _export_cells(store: Store, args: argparse.Namespace) -> str:
    """The python calls of the notebook's agents (or ``--agent``'s) as a notebook or a script."""
    if args.notebook:
        raise BadOptions("--notebook is for --format json or md; the notebook is the argument.")
    notebook = notebook_arg(args.name) or ""
    agents = agents_of(store, notebook)
    if not agents:
        raise Refused(f"No agents in {notebook}. `jupyter agent list` shows the notebooks.")
    if args.agent:
        _, name, runs = find(store, args.agent, notebook)
        chosen = [(name, runs)]
    else:  # in the order they were first run
        chosen = sorted(((a, r) for (_, a), r in agents.items()), key=lambda x: x[1][0].created_at)
    sections = []
    for name, runs in chosen:
        calls = cell_views.python_calls(store, runs[-1])
        prompt = runs[-1].prompt.strip().splitlines()[0] if runs[-1].prompt.strip() else ""
        sections.append((f"Agent {printable(name)}: {printable(prompt)}", calls))
    if not any(calls for _, calls in sections):
        raise Refused(f"The agents of {notebook} ran no python code.")
    secrets = secrets_in_environment()
    sections = [
        (redact(h, secrets), [cell_views.redacted(c, secrets) for c in cs]) for h, cs in sections
    ]
    if args.format == "py":
        return cell_views.python_script(sections)
    cells: list[dict] = []
    count = 0
    for heading, calls in sections:
        cells.append(cell_views.markdown_cell(f"## {heading}"))
        for call in calls:
            count += 1
            cells.append(cell_views.code_cell(call, count))
    return json.dumps(cell_views.notebook(cells), indent=1, ensure_ascii=False)


def _markdown(data: dict[str, Any], label: str) -> str:
    lines = [
        f"# Agent {printable(data['agent'])}",
        "",
        f"- notebook: `{printable(data['notebook'])}`",
        f"- run: `{data['run_id']}` · model `{data['model']}`",
        f"- status: {label} · {plural(data['steps'], 'step')} · {tokens(data['tokens'])}",
        "",
        "## Transcript",
    ]
    for msg in data["messages"]:
        lines += ["", f"### {msg.get('role', '?')}", ""]
        content = msg.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if content:
            lines.append(str(content))
        for call in msg.get("tool_calls") or []:
            fn = call.get("function") or {}
            code = call_code(call)
            body = code if code is not None else fn.get("arguments", "")
            lang = "python" if code is not None else ""
            name = printable(str(fn.get("name", "?")))
            lines += [f"→ `{name}`", "", f"```{lang}", body.rstrip(), "```"]
    lines += [
        "",
        "## Checkpoints",
        "",
        "| checkpoint | kind | status | summary |",
        "|---|---|---|---|",
    ]
    for cp in data["checkpoints"]:
        summary = printable(str(cp["summary"])).replace("|", "\\|")
        lines.append(f"| {cp['checkpoint']} | {cp['kind']} | {cp['status']} | {summary} |")
    return "\n".join(lines)


def write_atomic(path: str, text: str) -> None:
    """Write ``path`` whole or not at all: a temp file beside it, then a rename."""
    target = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if os.path.exists(target):
            os.chmod(tmp, os.stat(target).st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
