"""``jupyter agent``: the agents of a store, from a terminal (see docs/cli.md).

Every command but ``export`` and ``diff`` reads metadata only and never unpickles
anything; ``export`` decodes transcripts the way the kernel does, after
:meth:`Store.check_trusted`, and redacts secrets; ``diff`` reads small values only
after that check. The store may be in use by
running kernels meanwhile: it waits while another process holds it.

Exit codes: 0 ok, 1 not found or refused (docs/cli.md lists why a `resume` stops, and
why an `approve` or `reject` is refused: the agent waits on no call, or another) or a
`replay` that diverged, 2 usage error, 3 a `resume` against a store the notebook's agents do
not live in, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from ..errors import AgentError, OtherStore
from ..store.open import open_store
from .commands import (
    Partial,
    Refused,
    Usage,
    cmd_decide,
    cmd_delete,
    cmd_list,
    cmd_prune,
    cmd_show,
    cmd_store_info,
)
from .diff import cmd_diff
from .export import BadOptions, cmd_export
from .replay import cmd_replay
from .resume import cmd_resume, positive_seconds
from .worker import check_cron, cmd_cancel, cmd_jobs, cmd_submit, cmd_worker

OK, REFUSED, USAGE, OTHER_STORE = 0, 1, 2, 3


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
        epilog="Exit codes: 0 ok, 1 not found or refused (replay: diverged), 2 usage error, "
        "3 resume: the notebook's agents live in another store.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[..., Any], text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        p.set_defaults(fn=fn)
        return p

    def agent_name(p: argparse.ArgumentParser) -> None:
        p.add_argument("name", help="agent name, or a unique prefix")
        p.add_argument("--notebook", help="the agent's notebook, where names repeat")

    p = add("list", cmd_list, "agents: notebook, status, steps, runs, tokens, last checkpoint")
    p.add_argument("notebook", nargs="?", help="only this notebook's agents")
    agent_name(add("show", cmd_show, "the checkpoints of an agent's latest run"))
    p = add("delete", cmd_delete, "delete an agent and all its runs")
    agent_name(p)
    p.add_argument("--yes", action="store_true", help="do not ask")
    p = add("prune", cmd_prune, "delete all but each agent's latest run (and what it forked from)")
    p.add_argument("--keep-latest", action="store_true", required=True, help="the policy")
    p.add_argument("--notebook", help="only this notebook's agents")
    p.add_argument("--yes", action="store_true", help="do not ask")
    p = add(
        "export",
        cmd_export,
        "an agent's transcript and checkpoints (json, md), or a notebook's agents' python "
        "calls as cells (ipynb, py); secrets redacted",
    )
    p.add_argument(
        "name", help="json, md: agent name or a unique prefix; ipynb, py: the agent's notebook"
    )
    p.add_argument("--notebook", help="json, md: the agent's notebook, where names repeat")
    p.add_argument("--agent", help="ipynb, py: only this agent (default: every agent, in order)")
    p.add_argument("--format", choices=["json", "md", "ipynb", "py"], default="md")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    for verb, text in (
        ("approve", "approve (or --edit) the call an agent waits on, with no kernel running it"),
        ("reject", "reject the call an agent waits on, with no kernel running it"),
    ):
        p = add(verb, cmd_decide, text)
        p.add_argument("notebook", help="the agent's notebook")
        p.add_argument("name", help="agent name, or a unique prefix")
        p.add_argument("--call", help="the call id it must still wait on (else refused)")
        p.add_argument("--note", help="a note the model reads with the answer")
        if verb == "approve":
            p.add_argument(
                "--edit", metavar="ARGS", help="run this instead: the code, or the tool's JSON"
            )
    p = add(
        "diff",
        cmd_diff,
        "what differs between two points (RUN, RUN@N, NAME, NAME@N): messages, variables, files",
    )
    p.add_argument("a", metavar="A", help="a run or agent, at its last checkpoint or @N")
    p.add_argument("b", metavar="B", help="another (of the same agent or of another)")
    p.add_argument("--notebook", help="the agents' notebook, where names repeat")
    p = add("store", cmd_store_info, "about the store")
    p.add_argument("what", choices=["info"], help="info: path, schema, size, runs, checkpoints")
    p = add(
        "resume",
        cmd_resume,
        "run a notebook headless, so its interrupted agents continue; outputs are written back",
    )
    p.add_argument("notebook", help="the .ipynb file")
    p.add_argument(
        "--timeout", type=positive_seconds, default=None, help="seconds per cell (default: none)"
    )
    p.add_argument(
        "--new-store",
        action="store_true",
        help="run even if the notebook's agents live in another store (they start afresh here)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse to continue an agent whose tools, model or versions changed: exit 1, "
        "saying what changed",
    )
    p = add(
        "replay",
        cmd_replay,
        "run a notebook's agents again from their stored replies (0 tokens); "
        "exit 1 at the first difference",
    )
    p.add_argument("notebook", help="the .ipynb file (it is not written)")
    p.add_argument("--agent", metavar="NAME", help="the agent to replay (a unique prefix will do)")
    p.add_argument("--all", action="store_true", help="replay every agent of the notebook")
    p.add_argument(
        "--timeout", type=positive_seconds, default=None, help="seconds per cell (default: none)"
    )
    p = add("submit", cmd_submit, "queue a headless run of a notebook's agents for the workers")
    p.add_argument("notebook", help="the .ipynb file (its cells are pinned as they are now)")
    p.add_argument("--agent", metavar="NAME", help="run only this agent's cell (default: all)")
    p.add_argument(
        "--every",
        metavar="CRON",
        type=check_cron,
        help="run on this cron schedule instead of once (5 fields, or 6 with seconds first)",
    )
    p = add("worker", cmd_worker, "take queued jobs and run them headless, until stopped")
    p.add_argument("--concurrency", type=_positive_int, default=1, metavar="N", help="runs at once")
    p.add_argument(
        "--timeout", type=positive_seconds, default=None, help="seconds per cell (default: none)"
    )
    p.add_argument("--executor", default=None, help=argparse.SUPPRESS)  # one of a worker's runs
    add("jobs", cmd_jobs, "queued, running, failed and done jobs, and schedules")
    p = add("cancel", cmd_cancel, "cancel a queued or running job, or a schedule")
    p.add_argument("job", help="the job's id (`jupyter agent jobs` lists them)")
    return parser


def _positive_int(text: str) -> int:
    """``--concurrency``: a whole number above zero (argparse reports anything else)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


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
    except Partial as partial:
        if args.json:
            print(json.dumps(partial.result, indent=2, default=str))
        return REFUSED
    except BadOptions as exc:
        print(f"jupyter agent: {exc}", file=sys.stderr)
        return USAGE
    except (Refused, AgentError) as exc:
        if args.json:
            print(json.dumps({"error": str(exc)}))
        print(f"jupyter agent: {exc}", file=sys.stderr)
        if isinstance(exc, Usage):
            return USAGE
        return OTHER_STORE if isinstance(exc, OtherStore) else REFUSED
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
