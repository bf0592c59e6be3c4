"""What every tool of the agent is made of, and the rules all tools share.

Every tool the loop dispatches — ``python`` (:mod:`.python`), the notebook's
own functions (:mod:`.user`) and MCP servers' tools (:mod:`.mcp`) — is a
:class:`Tool` returning a :class:`ToolResult`. Whatever the tool, the model is
told of a malformed call (unknown tool, arguments that are not a JSON object)
in words it can act on, sees at most :data:`OUTPUT_LIMIT` characters of a
result, and sees a traceback without this package's own frames.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MalformedCall

OUTPUT_LIMIT = 20_000  # characters of tool output sent back to the model


@dataclass
class ToolResult:
    output: str
    error: bool = False
    touched: set[str] = field(default_factory=set)  # names the code may have changed
    executed: bool = True  # False when the call was malformed and nothing ran
    #: What the call displayed, as nbformat outputs, capped (see :mod:`.rich`); never sent.
    outputs: list[dict] = field(default_factory=list)
    #: (MIME type, why) of what the cap left out of ``outputs``.
    dropped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Tool:
    """One tool as the loop dispatches it.

    ``parse`` turns the model's JSON arguments into what ``run`` takes, raising
    :class:`MalformedCall`; ``show`` gives the text of a call for checkpoints
    and the approval prompt, and ``edit`` reads that text back from an approver
    who changed it (by default: the same JSON as the model's).
    """

    name: str
    schema: dict
    run: Callable[[Any], ToolResult]
    parse: Callable[[str], Any]
    show: Callable[[Any], str] = lambda args: json.dumps(args, ensure_ascii=False)
    edit: Callable[[str], Any] | None = None
    #: Run again, without asking, when the call was in flight at a crash.
    idempotent: bool = False
    #: Ask for approval before every call, even with approvals off.
    approve: bool = False
    #: Runs in the kernel's namespace: one such call at a time (:class:`~jupyter_agent.namespace.lock.NamespaceLock`).
    in_kernel: bool = False

    def edited(self, text: str) -> Any:
        return (self.edit or self.parse)(text)


def function_schema(name: str, description: str, parameters: dict) -> dict:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


def unknown_tool(name: str | None, names: list[str] | None = None) -> str:
    """What the model is told when it calls a tool that does not exist."""
    others = "".join(f", {n!r}" for n in names or [] if n not in ("python", "update_plan"))
    return (
        f"Unknown tool {name!r}. The tools are 'python' (argument 'code'), "
        f"'update_plan' (argument 'items'){others}."
    )


def json_arguments(raw: str, hint: str = "") -> dict:
    """A call's arguments as a JSON object, or :class:`MalformedCall` saying why not."""
    try:
        args = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise MalformedCall(
            f"The arguments are not valid JSON ({exc.msg} at position {exc.pos}). {hint}".strip()
        ) from exc
    if not isinstance(args, dict):
        raise MalformedCall(f"The arguments must be a JSON object. {hint}".strip())
    return args


#: The package's directory: frames under it are ours, not the model's code's.
_PACKAGE = str(Path(__file__).parents[1])


def short_traceback(exc: BaseException) -> str:
    """The traceback without our own frames: the model sees its code's (or tool's) only."""
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return "".join(line for line in tb if _PACKAGE not in line)


def clip(text: str) -> str:
    """Tool output as sent to the model: at most :data:`OUTPUT_LIMIT` characters, never empty."""
    if len(text) > OUTPUT_LIMIT:
        text = (
            text[: OUTPUT_LIMIT // 2]
            + f"\n…[{len(text) - OUTPUT_LIMIT} characters cut]…\n"
            + text[-OUTPUT_LIMIT // 2 :]
        )
    return text if text.strip() else "(no output)"
