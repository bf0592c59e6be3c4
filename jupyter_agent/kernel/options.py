"""The words of ``%%agent`` and ``%agent`` lines: declared once, parsed, checked.

The ``%%agent`` options are declared here (:func:`cell_arguments`) and nowhere
else: the cell magic parses with them, and ``%agent --help`` and ``%%agent?``
are generated from them, so the help is always what the parser accepts. A
line a user got wrong is a short :class:`UsageError` saying what to do, raised
before anything runs.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from ..core.budget import Budget, parse_budget
from ..core.context import MIN_WINDOW
from ..errors import BudgetError, ToolError
from ..tools import mcp as mcp_tools
from ..tools import user as user_tools
from ..tools.python import TOOLS
from ..tools.toolbox import check_approve

#: The ``%%agent`` options, outermost first, as IPython's ``magic_arguments`` declares them.
_CELL_OPTIONS = [
    magic_arguments(name="%agent"),  # the usage line adds one '%': "%%agent [-m MODEL] ..."
    argument(
        "-m",
        "--model",
        help="Model name; 'offline' is the built-in demo model. Prefix 'anthropic:' or "
        "'responses:' to ask Anthropic's Messages API or the OpenAI Responses API.",
    ),
    argument("-n", "--name", help="Name of the agent (identifies it where no cell id exists)."),
    argument("--max-steps", type=int, metavar="N", help="Maximum steps in this execution."),
    argument("--restart", action="store_true", help="Start a new run even if one can resume."),
    argument(
        "--approve",
        nargs="?",
        const="",
        default=None,
        metavar="TOOLS",
        help="Ask for approval before each tool call (or only calls of these comma-separated tools).",
    ),
    argument(
        "--budget",
        metavar="LIMIT",
        help="Tokens (50000, 50k) or dollars ($2.50) the run may spend over all its "
        "executions; it pauses there, and re-running with a larger budget continues.",
    ),
    argument(
        "--context-window",
        type=int,
        metavar="TOKENS",
        help="The model's context window; the agent compacts its history to stay inside it.",
    ),
    argument(
        "--plan",
        action="store_true",
        help="Write a plan first, then work through it one item at a time with fresh context.",
    ),
    argument(
        "--tools",
        metavar="NAMES",
        help="Notebook functions the agent may call as tools (comma-separated); "
        "functions decorated with @tool are offered without it.",
    ),
    argument(
        "--mcp",
        metavar="SERVERS",
        help="MCP servers whose tools the agent may call (comma-separated names of "
        "c.AgentMagics.mcp_servers); their tools are named SERVER__tool.",
    ),
    argument(
        "--after",
        metavar="AGENTS",
        help="Start once these agents (comma-separated names) are done; till then the cell "
        "says what it waits for and ends without a model call.",
    ),
    argument(
        "--strict",
        action="store_true",
        help="Refuse to continue the run if its tools, model or versions changed since it last ran.",
    ),
    argument(
        "--background",
        action="store_true",
        help="Run on a background thread and return at once; pause it from its timeline.",
    ),
]


def cell_arguments(magic: Callable) -> Callable:
    """Give the ``%%agent`` magic its options (its ``parser``), as stacked decorators would."""
    for declare in reversed(_CELL_OPTIONS):
        magic = declare(magic)
    return magic


@dataclass(frozen=True)
class CellLine:
    """A ``%%agent`` cell as parsed and checked: its task and options."""

    args: argparse.Namespace
    prompt: str
    #: ``--approve`` tools (empty: every tool), ``--tools`` functions, ``--mcp`` servers.
    approve: tuple[str, ...]
    functions: tuple[str, ...]
    servers: tuple[str, ...]
    budget: Budget | None
    #: The agents ``--after`` names (empty without it).
    after: list[str]


def parse_cell(
    parser: argparse.ArgumentParser, line: str, cell: str, user_ns: dict, mcp_servers: dict
) -> CellLine:
    """Parse a ``%%agent`` cell; :class:`UsageError` for anything the user must correct."""
    args = parser.parse_args(split_line("%%agent", line))
    prompt = cell.strip()
    if not prompt:
        raise UsageError(
            "The %%agent cell is empty: write the task for the agent below the %%agent line."
        )
    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError("--max-steps must be a positive number.")
    tools = names(args.approve)
    functions, servers = names(args.tools), names(args.mcp)
    try:  # the cell's tools must exist; MCP names are checked once the servers list them
        user_tools.check_names(user_ns, functions)
        mcp_tools.check_servers(servers, mcp_servers)
        offered = [*functions, *user_tools.decorated(user_ns)]
        known = [_name(t) for t in TOOLS] + list(dict.fromkeys(offered))
        check_approve(tools, known, servers)
    except ToolError as exc:
        raise UsageError(str(exc)) from None
    try:
        budget = parse_budget(args.budget)
    except BudgetError as exc:
        raise UsageError(str(exc)) from None
    if args.context_window is not None and args.context_window < MIN_WINDOW:
        raise UsageError(
            f"--context-window must be at least {MIN_WINDOW:,} tokens (got "
            f"{args.context_window:,}); not even one step fits in less."
        )
    after = [name.strip() for name in (args.after or "").split(",") if name.strip()]
    if args.after is not None and not after:
        raise UsageError("--after needs the names of agents, e.g. --after loader,cleaner.")
    return CellLine(args, prompt, tools, functions, servers, budget, after)


def _name(schema: dict[str, Any]) -> str:
    return schema["function"]["name"]


def parser_of(magic: Any) -> argparse.ArgumentParser:
    """The parser :func:`cell_arguments` gave a magic."""
    return magic.parser


def names(option: str | None) -> tuple[str, ...]:
    """The names of a comma-separated option."""
    return tuple(dict.fromkeys(n.strip() for n in (option or "").split(",") if n.strip()))


def split_line(magic: str, line: str) -> list[str]:
    """The words of a magic's line, shell-style: quotes group words and are removed."""
    try:
        return shlex.split(line)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise UsageError(f"{magic} {line.strip()}: {exc}; close the quote.") from None


def cell_options_help(parser: argparse.ArgumentParser) -> str:
    """The ``%%agent`` options, formatted from the cell magic's ``parser``."""
    formatter = argparse.HelpFormatter("%" + parser.prog)  # prog is "%agent"
    formatter.add_usage(None, parser._actions, [], prefix="")
    formatter.start_section("%%agent options")
    formatter.add_arguments(parser._actions)
    formatter.end_section()
    return formatter.format_help()


class HelpShown(Exception):
    """``%agent --help`` (or a subcommand's): the text to print instead of running."""

    def __init__(self, text: str) -> None:
        self.text = text


class _Parser(argparse.ArgumentParser):
    """argparse that reports instead of exiting the kernel."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)

    def print_help(self, file: Any = None) -> None:
        raise HelpShown(self.format_help())

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise HelpShown(message or "")


def line_parser(cell_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``%agent`` parser; its help ends with the ``%%agent`` options of ``cell_parser``."""
    parser = _Parser(
        prog="%agent",
        description="Manage the durable agents of this notebook.",
        epilog=(
            "Run an agent with the cell magic, the task below its line:\n\n"
            f"{cell_options_help(cell_parser)}\nDetails: %%agent?"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    sub.add_parser("list", help="agents of this notebook: status, steps, last checkpoint")
    for cmd, text in [
        ("show", "the transcript of an agent's latest run"),
        ("resume", "continue an unfinished agent from its last checkpoint"),
        ("delete", "delete an agent and all its runs from the store"),
        ("timeline", "the checkpoint timeline widget of an agent, straight from the store"),
        ("pause", "pause an agent running in the background after its current step"),
        ("replay", "run an agent's latest run again from its stored replies (0 tokens), compared"),
    ]:
        sub.add_parser(cmd, help=text).add_argument("name")
    cells = sub.add_parser(
        "cells", help="insert an agent's python calls as code cells below its cell, with outputs"
    )
    cells.add_argument("name")
    cells.add_argument(
        "--replace", action="store_true", help="show them as the agent cell's output instead"
    )
    approve = sub.add_parser("approve", help="approve the tool call an agent is waiting on")
    approve.add_argument("name")
    approve.add_argument("--code", help="run this code instead of the proposed code")
    diff = sub.add_parser(
        "diff", help="what differs between two points: RUN, RUN@N, NAME or NAME@N (NAME@7)"
    )
    diff.add_argument("a")
    diff.add_argument("b")
    diff.add_argument("--json", action="store_true", help="return the diff as a dict")
    fork = sub.add_parser(
        "fork", help="a new run from a checkpoint, optionally with an edited reply, output or model"
    )
    fork.add_argument("target", metavar="NAME@CHECKPOINT")
    fork.add_argument("--instruction", help="a new instruction, given to the model there")
    fork.add_argument("--model", help="continue with this model instead")
    edited = fork.add_mutually_exclusive_group()
    edited.add_argument(
        "--reply", help="at a model checkpoint: the reply instead (text, or JSON with tool_calls)"
    )
    edited.add_argument("--output", help="at a tool_result checkpoint: the tool's output instead")
    reject = sub.add_parser("reject", help="reject the tool call an agent is waiting on")
    reject.add_argument("name")
    reject.add_argument("--note", help="why; the model receives it")
    return parser
