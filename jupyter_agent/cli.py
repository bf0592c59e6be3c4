"""``jupyter agent``: the agents of a store, from a terminal (see docs/cli.md).

Every command but ``export`` reads metadata only and never unpickles anything;
``export`` decodes transcripts the way the kernel does, after
:meth:`Store.check_trusted`, and redacts secrets. The store may be in use by
running kernels meanwhile: it waits while another process holds it.

Exit codes: 0 ok, 1 not found or refused, 2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .core.redaction import redact, secrets_in_environment
from .core.state import RUNNING, fold
from .errors import AgentError, Conflict, NotFound
from .kernel.identity import ENV_NOTEBOOK
from .loop.runs import chain
from .store.api import CHECKPOINT_COLUMNS, CheckpointRow, RunRow, Store, open_store
from .views.render import status_text
from .vocab import effective_status

OK, REFUSED, USAGE = 0, 1, 2


class Refused(Exception):
    """Not found, or not allowed: exit code 1 with this message."""


# -- reading the store -------------------------------------------------------------------


def _runs(store: Store, notebook: str | None = None) -> list[RunRow]:
    """The runs (reading must not create a store)."""
    return store.runs(notebook=notebook) if store.exists() else []


def _agents(runs: list[RunRow]) -> dict[tuple[str, str], list[RunRow]]:
    """Runs by (notebook, agent), oldest first."""
    out: dict[tuple[str, str], list[RunRow]] = {}
    for run in runs:
        out.setdefault((run.notebook, run.agent), []).append(run)
    return out


def _steps(store: Store, run: RunRow) -> int:
    """Steps done: model checkpoints along the run's history, forks' parents included."""
    stats = store.run_stats([run.run_id]).get(run.run_id)
    return stats.steps if stats else 0


def _find(store: Store, name: str, notebook: str | None) -> tuple[str, str, list[RunRow]]:
    """The agent called ``name`` (or a unique prefix), in ``notebook`` or in any."""
    agents = _agents(_runs(store, notebook))
    exact = [k for k in agents if k[1] == name]
    matches = exact or [k for k in agents if k[1].startswith(name)]
    where = f"in {notebook}" if notebook else "in the store"
    if not matches:
        raise Refused(f"No agent {name!r} {where}. `jupyter agent list` shows the agents.")
    if len(matches) > 1:
        listed = ", ".join(f"{a} ({nb})" for nb, a in matches[:5])
        raise Refused(f"{name!r} is ambiguous {where}: {listed}. Give --notebook or a full name.")
    key = matches[0]
    return key[0], key[1], agents[key]


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _checkpoint(cp: CheckpointRow) -> dict[str, Any]:
    """A checkpoint's metadata; its sequence number is called ``checkpoint``."""
    return {
        ("checkpoint" if c == "step" else c): getattr(cp, c)
        for c in CHECKPOINT_COLUMNS
        if c != "run_id"
    }


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _notebook_arg(path: str | None) -> str | None:
    return os.path.abspath(os.path.expanduser(path)) if path else None


# -- commands ----------------------------------------------------------------------------


def cmd_list(store: Store, args: argparse.Namespace) -> Any:
    runs = _runs(store, _notebook_arg(args.notebook))
    agents = _agents(runs)
    latest = {key: rs[-1] for key, rs in agents.items()}
    last = store.latest_checkpoints([r.run_id for r in latest.values()]) if latest else {}
    live = store.live_runs() if latest else set()
    out = []
    for (notebook, agent), run in latest.items():
        cp = last.get(run.run_id)
        status = effective_status(cp.status, run.run_id, live, cp.created_at) if cp else RUNNING
        steps = _steps(store, run)
        out.append(
            {
                "notebook": notebook,
                "agent": agent,
                "status": status,
                "label": status_text(status, steps),
                "steps": steps,
                "runs": len(agents[(notebook, agent)]),
                "run_id": run.run_id,
                "last_checkpoint": cp.step if cp else None,
                "last_checkpoint_at": cp.created_at if cp else None,
            }
        )
    if args.json:
        return out
    if not out:
        print("No agents" + (f" in {args.notebook}." if args.notebook else " in the store."))
        return None
    rows = [("notebook", "agent", "status", "steps", "runs", "last checkpoint")]
    rows += [
        (
            a["notebook"],
            a["agent"],
            a["label"],
            str(a["steps"]),
            str(a["runs"]),
            _when(a["last_checkpoint_at"]),
        )
        for a in out
    ]
    print(_table(rows))
    return None


def cmd_show(store: Store, args: argparse.Namespace) -> Any:
    notebook, agent, runs = _find(store, args.name, _notebook_arg(args.notebook))
    run = runs[-1]
    checkpoints = store.checkpoints(run.run_id)
    live = store.live_runs()
    last = checkpoints[-1] if checkpoints else None
    status = effective_status(last.status, run.run_id, live, last.created_at) if last else RUNNING
    steps = _steps(store, run)
    if args.json:
        return {
            "notebook": notebook,
            "agent": agent,
            "run_id": run.run_id,
            "model": run.model,
            "status": status,
            "steps": steps,
            "checkpoints": [_checkpoint(cp) for cp in checkpoints],
        }
    print(f"Agent {agent} · {notebook}")
    print(
        f"Run {run.run_id} · model {run.model} · {status_text(status, steps)} · "
        f"{len(checkpoints)} checkpoints · {steps} steps"
    )
    for cp in checkpoints:
        print(f"[{cp.step:>3}] {cp.kind:<12} {cp.status:<18} {cp.summary}")
    return None


def _confirm(args: argparse.Namespace, question: str) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise Refused(f"{question} Refused without a terminal to ask: add --yes.")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise Refused("Nothing was deleted.")


def _delete(store: Store, notebook: str, agent: str, *, keep_latest: bool) -> list[str]:
    """Delete an agent's runs (all, or all but the latest and its ancestors), as the server does."""
    try:
        return store.delete_agent(notebook, agent, keep_latest=keep_latest)
    except (Conflict, NotFound) as exc:
        raise Refused(str(exc)) from None


def cmd_delete(store: Store, args: argparse.Namespace) -> Any:
    notebook, agent, runs = _find(store, args.name, _notebook_arg(args.notebook))
    _confirm(args, f"Delete agent {agent} of {notebook} and its {len(runs)} run(s)?")
    deleted = _delete(store, notebook, agent, keep_latest=False)
    if args.json:
        return {"notebook": notebook, "agent": agent, "deleted_runs": deleted}
    print(f"Deleted agent {agent} of {notebook} ({len(deleted)} run(s)).")
    return None


def cmd_prune(store: Store, args: argparse.Namespace) -> Any:
    agents = _agents(_runs(store, _notebook_arg(args.notebook)))
    prunable = {k: rs for k, rs in agents.items() if len(rs) > 1}
    if prunable:
        older = sum(len(rs) - 1 for rs in prunable.values())
        _confirm(args, f"Delete up to {older} older run(s) of {len(prunable)} agent(s)?")
    deleted: dict[str, list[str]] = {}
    refused: list[str] = []
    for notebook, agent in prunable:
        try:
            gone = _delete(store, notebook, agent, keep_latest=True)
        except Refused as exc:
            refused.append(str(exc))
            continue
        if gone:
            deleted[f"{notebook}::{agent}"] = gone
    total = sum(len(v) for v in deleted.values())
    for message in refused:
        print(f"Skipped: {message}", file=sys.stderr)
    if args.json:
        result: Any = {"deleted_runs": total, "agents": deleted, "refused": refused}
    else:
        print(f"Deleted {total} older run(s) of {len(deleted)} agent(s); kept each latest run.")
        result = None
    if refused:
        raise _Partial(result)
    return result


class _Partial(Exception):
    """Done in part: print the result, exit 1."""

    def __init__(self, result: Any) -> None:
        self.result = result


def cmd_export(store: Store, args: argparse.Namespace) -> Any:
    notebook, agent, runs = _find(store, args.name, _notebook_arg(args.notebook))
    run = runs[-1]
    pairs = store.payloads(chain(store, run))
    state = fold(pairs)
    secrets = secrets_in_environment()
    status = effective_status(state.status, run.run_id, store.live_runs())
    data = redact(
        {
            "notebook": notebook,
            "agent": agent,
            "run_id": run.run_id,
            "model": run.model,
            "prompt": run.prompt,
            "status": status,
            "steps": sum(1 for cp, _ in pairs if cp.kind == "model"),
            "tokens": state.tokens,
            "answer": state.final_answer(),
            "messages": state.messages,
            "checkpoints": [{"run_id": cp.run_id, **_checkpoint(cp)} for cp, _ in pairs],
        },
        secrets,
    )
    text = json.dumps(data, indent=2, default=str) if args.format == "json" else _markdown(data)
    if args.output:
        _write_atomic(args.output, text + "\n")
        print(f"Wrote {args.output}.", file=sys.stderr)
    else:
        print(text)
    return None


def _markdown(data: dict[str, Any]) -> str:
    lines = [
        f"# Agent {data['agent']}",
        "",
        f"- notebook: `{data['notebook']}`",
        f"- run: `{data['run_id']}` · model `{data['model']}`",
        f"- status: {status_text(data['status'], data['steps'])} · {data['steps']} steps · "
        f"{data['tokens']} tokens",
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
            lines += [f"→ `{fn.get('name', '?')}`", "", f"```{lang}", body.rstrip(), "```"]
    lines += [
        "",
        "## Checkpoints",
        "",
        "| checkpoint | kind | status | summary |",
        "|---|---|---|---|",
    ]
    for cp in data["checkpoints"]:
        summary = str(cp["summary"]).replace("|", "\\|")
        lines.append(f"| {cp['checkpoint']} | {cp['kind']} | {cp['status']} | {summary} |")
    return "\n".join(lines)


def cmd_store_info(store: Store, args: argparse.Namespace) -> Any:
    about = store.info()
    sizes = store.sizes()
    exists = about.exists
    info: dict[str, Any] = {
        "path": about.location,
        "exists": exists,
        "schema_version": about.schema_version,
        "reads_schema_version": about.reads_version,
        "size_duckdb": sizes.get("duckdb", 0),
        "size_journals": sizes.get("journals", 0),
        "runs": about.runs,
        "checkpoints": about.checkpoints,
        "live_runs": len(store.live_runs()) if exists else 0,
    }
    if args.json:
        return info
    print(f"store          {info['path']}" + ("" if exists else " (does not exist yet)"))
    print(
        f"schema version {info['schema_version'] or '-'} (this version reads {info['reads_schema_version']})"
    )
    print(
        f"size           DuckDB {_bytes(info['size_duckdb'])}, journals {_bytes(info['size_journals'])}"
    )
    print(f"runs           {info['runs']} ({info['live_runs']} running)")
    print(f"checkpoints    {info['checkpoints']}")
    return None


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _write_atomic(path: str, text: str) -> None:
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


def run_notebook(
    path: str, *, env: dict[str, str], timeout: float | None, write: Callable[[str, str], None]
) -> str | None:
    """Execute a notebook as JupyterLab would, writing outputs back after every cell.

    The kernel starts in the notebook's folder with ``env`` added (the
    notebook's real path among it), and each execute request carries the cell's
    nbformat id as ``metadata.cellId``, as JupyterLab sends it: nbclient sends no
    cell metadata, so its execute call is replaced. Returns what went wrong, or None.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    nb = nbformat.read(path, as_version=4)

    def save() -> None:
        write(path, nbformat.writes(nb))

    class Client(NotebookClient):
        cell_id: str | None = None

        async def async_execute_cell(self, cell: Any, cell_index: int, **kw: Any) -> Any:
            self.cell_id = cell.get("id")
            try:
                return await super().async_execute_cell(cell, cell_index, **kw)
            finally:
                if cell.get("cell_type") == "code":
                    save()  # as papermill does: a crash keeps the outputs so far

        async def async_start_new_kernel_client(self) -> Any:
            kc = await super().async_start_new_kernel_client()

            def execute(
                code: str,
                silent: bool = False,
                store_history: bool = True,
                user_expressions: dict | None = None,
                allow_stdin: bool | None = None,
                stop_on_error: bool = True,
            ) -> str:
                content = {
                    "code": code,
                    "silent": silent,
                    "store_history": store_history,
                    "user_expressions": user_expressions or {},
                    "allow_stdin": bool(allow_stdin),
                    "stop_on_error": stop_on_error,
                }
                metadata = {"cellId": self.cell_id} if self.cell_id else {}
                msg = kc.session.msg("execute_request", content, metadata=metadata)
                kc.shell_channel.send(msg)
                return msg["header"]["msg_id"]

            kc.execute = execute
            return kc

    client = Client(
        nb,
        timeout=None if timeout is None else max(1, math.ceil(timeout)),
        resources={"metadata": {"path": os.path.dirname(path)}},
    )
    try:
        client.execute(env={**os.environ, **env})
    except CellExecutionError as exc:
        first = str(exc).strip().splitlines()
        return f"A cell failed: {first[-1] if first else exc}."
    except DeadKernelError:
        return "The kernel died."
    except TimeoutError as exc:
        return f"A cell timed out ({exc})."
    finally:
        save()
    return None


def cmd_resume(store: Store, args: argparse.Namespace) -> Any:
    path = os.path.abspath(os.path.expanduser(args.notebook))
    if not os.path.isfile(path):
        raise Refused(f"No notebook {args.notebook}.")
    env = {ENV_NOTEBOOK: path, "JUPYTER_AGENT_STORE": store.location}
    failure = run_notebook(path, env=env, timeout=args.timeout, write=_write_atomic)
    if failure:
        raise Refused(f"{failure} The outputs so far were written to {args.notebook}.")
    if not args.json:
        print(f"Ran {args.notebook}; outputs written back.", file=sys.stderr)
    return {"notebook": path, "ok": True} if args.json else None


# -- parsing -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="the store (default: $JUPYTER_AGENT_STORE or the Jupyter data dir, as in kernels)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    parser = argparse.ArgumentParser(
        prog="jupyter agent",
        parents=[common],
        description="The durable agents of a jupyter-agent store.",
        epilog="Exit codes: 0 ok, 1 not found or refused, 2 usage error.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[..., Any], text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        p.set_defaults(fn=fn)
        return p

    p = add("list", cmd_list, "agents: notebook, status, steps, runs, last checkpoint")
    p.add_argument("notebook", nargs="?", help="only this notebook's agents")
    p = add("show", cmd_show, "the checkpoints of an agent's latest run")
    p.add_argument("name", help="agent name, or a unique prefix")
    p.add_argument("--notebook", help="the agent's notebook, where names repeat")
    p = add("delete", cmd_delete, "delete an agent and all its runs")
    p.add_argument("name", help="agent name, or a unique prefix")
    p.add_argument("--notebook", help="the agent's notebook, where names repeat")
    p.add_argument("--yes", action="store_true", help="do not ask")
    p = add("prune", cmd_prune, "delete all but each agent's latest run (and what it forked from)")
    p.add_argument("--keep-latest", action="store_true", required=True, help="the policy")
    p.add_argument("--notebook", help="only this notebook's agents")
    p.add_argument("--yes", action="store_true", help="do not ask")
    p = add("export", cmd_export, "an agent's transcript and checkpoints, secrets redacted")
    p.add_argument("name", help="agent name, or a unique prefix")
    p.add_argument("--notebook", help="the agent's notebook, where names repeat")
    p.add_argument("--format", choices=["json", "md"], default="md")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    p = add("store", cmd_store_info, "about the store")
    p.add_argument("what", choices=["info"], help="info: path, schema, size, runs, checkpoints")
    p = add(
        "resume",
        cmd_resume,
        "run a notebook headless, so its interrupted agents continue; outputs are written back",
    )
    p.add_argument("notebook", help="the .ipynb file")
    p.add_argument("--timeout", type=float, default=None, help="seconds per cell (default: none)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # exits 2 on a usage error
    args.json = getattr(args, "json", False)
    path = getattr(args, "store", None)
    if path and "://" not in path:
        path = os.path.abspath(os.path.expanduser(path))
    try:
        store = open_store(path or None)
    except AgentError as exc:
        print(f"jupyter agent: {exc}", file=sys.stderr)
        return REFUSED
    try:
        result = args.fn(store, args)
    except _Partial as partial:
        if args.json:
            print(json.dumps(partial.result, indent=2, default=str))
        return REFUSED
    except (Refused, AgentError) as exc:
        if args.json:
            print(json.dumps({"error": str(exc)}))
        print(f"jupyter agent: {exc}", file=sys.stderr)
        return REFUSED
    except KeyboardInterrupt:
        print("jupyter agent: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into `head`
        return _closed_stdout()
    if args.json and result is not None:
        try:
            print(json.dumps(result, indent=2, default=str))
        except BrokenPipeError:
            return _closed_stdout()
    return OK


def _closed_stdout() -> int:
    # Python would complain about the broken pipe again when flushing at exit.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return OK


if __name__ == "__main__":
    sys.exit(main())
