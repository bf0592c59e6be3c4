"""``jupyter agent export``: an agent's transcript and checkpoints, secrets redacted.

The only command that decodes payloads: it folds the latest run's history the
way the kernel does (after :meth:`Store.check_trusted`, since an older store's
payloads unpickle), then redacts the secrets of its own environment too.
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
from ..core.state import fold
from ..store.api import Store
from ..vocab import plural, printable, tokens
from .commands import checkpoint_dict, find, latest_row, notebook_arg


def cmd_export(store: Store, args: argparse.Namespace) -> Any:
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
    if args.output:
        write_atomic(args.output, text + "\n")
        print(f"Wrote {args.output}.", file=sys.stderr)
    else:
        print(text)
    return None


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
            try:
                code = json.loads(fn.get("arguments") or "{}").get("code")
            except (ValueError, AttributeError):
                code = None
            body = code if isinstance(code, str) else fn.get("arguments", "")
            lang = "python" if isinstance(code, str) else ""
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
