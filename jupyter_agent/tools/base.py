"""The agent's tools. Built in: ``python``, which runs code in the notebook's namespace.

The model sees what a person would at the cell: captured stdout/stderr, the
repr of the last expression, and a short traceback when the code fails, so it
can notice errors and recover. Output is also shown live in the cell.
Malformed calls (unknown tool, arguments that are not JSON, a missing ``code``)
are answered with an error the model can act on; nothing is executed.

Every tool the loop dispatches — ``python``, the notebook's own functions
(:mod:`user_tools`) and MCP servers' tools (:mod:`mcp_tools`) — is a
:class:`Tool`; a :class:`Toolbox` holds one execution's tools.
"""

from __future__ import annotations

import ast
import io
import json
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.plan import UPDATE_PLAN_TOOL
from ..errors import Cancelled, MalformedCall, ToolError
from ..namespace.tracking import touched_names

OUTPUT_LIMIT = 20_000  # characters of tool output sent back to the model

PYTHON_TOOL = {
    "type": "function",
    "function": {
        "name": "python",
        "description": (
            "Run Python code in the user's Jupyter kernel. Variables persist between calls and "
            "are shared with the notebook. Returns printed output, the value of the last "
            "expression, and any error with its traceback."
        ),
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "Python code to run."}},
            "required": ["code"],
        },
    },
}
TOOLS = [PYTHON_TOOL, UPDATE_PLAN_TOOL]


@dataclass
class ToolResult:
    output: str
    error: bool = False
    touched: set[str] = field(default_factory=set)  # names the code may have changed
    executed: bool = True  # False when the call was malformed and nothing ran


def parse_call(call: dict) -> str:
    """The ``code`` of a python tool call, or :class:`MalformedCall` saying what is wrong."""
    fn = call.get("function") or {}
    name = fn.get("name")
    if name != "python":
        raise MalformedCall(unknown_tool(name))
    args = json_arguments(fn.get("arguments") or "", 'Send {"code": "<python source>"}.')
    if not isinstance(args.get("code"), str):
        raise MalformedCall('Missing argument "code" (a string of Python source).')
    return args["code"]


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
    #: Runs in the kernel's namespace: one such call at a time (:class:`NamespaceLock`).
    in_kernel: bool = False

    def edited(self, text: str) -> Any:
        return (self.edit or self.parse)(text)


def function_schema(name: str, description: str, parameters: dict) -> dict:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


def python_tool(shell: Any) -> Tool:
    """``python`` in ``shell``: at-least-once, so a call in flight at a crash runs again."""
    return Tool(
        "python",
        PYTHON_TOOL,
        run=lambda code: run_python(shell, code),
        parse=lambda raw: parse_call({"function": {"name": "python", "arguments": raw}}),
        show=lambda code: code,
        edit=lambda code: code,  # the approver sends code
        idempotent=True,
        in_kernel=True,
    )


class Toolbox:
    """The tools of one execution: ``python``, the run's user tools and MCP tools.

    Opened when the execution starts (functions are looked up in the namespace
    then, MCP servers started) and closed when it ends (servers stopped).
    """

    def __init__(self, tools: list[Tool], closers: list[Callable[[], None]] | None = None) -> None:
        self.tools = {t.name: t for t in tools}
        self._closers = closers or []

    @classmethod
    def open(
        cls,
        shell: Any,
        names: list[str],
        servers: list[str],
        config: dict,
    ) -> Toolbox:
        """Resolve ``names`` in the namespace and start ``servers``; :class:`ToolError` if not."""
        from . import user as user_tools

        functions = [replace(t, in_kernel=True) for t in user_tools.resolve(shell.user_ns, names)]
        box = cls([python_tool(shell), *functions])
        if servers:
            from . import mcp as mcp_tools

            try:
                for server in mcp_tools.start(servers, config):
                    box._closers.append(server.close)
                    box.tools.update((t.name, t) for t in server.tools)
            except BaseException:
                box.close()
                raise
        return box

    def get(self, name: str | None) -> Tool | None:
        return self.tools.get(name or "")

    def names(self) -> list[str]:
        """Every tool the model may call, ``update_plan`` included."""
        return [*(t["function"]["name"] for t in TOOLS), *(n for n in self.tools if n != "python")]

    def schemas(self) -> list[dict]:
        """What the model is offered: the built-in tools, then the user's and servers'."""
        extra = [t.schema for n, t in self.tools.items() if n != "python"]
        return [*TOOLS, *extra]

    def close(self) -> None:
        for close in reversed(self._closers):
            with suppress(Exception):
                close()
        self._closers.clear()


def check_approve(
    approve: tuple[str, ...], known: list[str], servers: tuple[str, ...] = ()
) -> None:
    """``--approve`` names must be tools; ``SERVER__…`` names wait for the server's list."""
    for name in approve:
        if name in known or any(name.startswith(f"{s}__") for s in servers):
            continue
        raise ToolError(f"--approve: unknown tool {name!r}; the tools are: {', '.join(known)}.")


class NamespaceLock:
    """Agents of a kernel run code in its namespace one at a time; a waiting one says so.

    Several agents may run at once (their model calls overlap), but two
    agents' code must never interleave in the one namespace. One lock per
    kernel, held by :class:`jupyter_agent.kernel.runtime.AgentRuntime`. Re-entrant for
    its thread, so code that runs an agent (or a child in the same thread) does
    not wait for itself.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._thread: int | None = None
        self._holder = ""
        self._tool = ""
        self._depth = 0
        self._last = ""  # the agent whose code ran in the namespace last
        self._saving: dict[str, int] = {}  # agent -> steps whose values are being serialized

    @property
    def holder(self) -> str:
        """The agent running code in the namespace now ("" if none)."""
        with self._cond:
            return self._holder

    @contextmanager
    def turn(
        self,
        agent: str,
        say: Callable[[str], None],
        cancel: threading.Event | None = None,
        tool: str = "python",
    ) -> Iterator[bool]:
        """Hold the namespace for ``agent``; while another holds it, wait (``cancel`` ends that).

        Yields whether another agent's code ran in the namespace since ``agent``'s
        last turn: what changed meanwhile is that agent's, not this one's to save.
        """
        me = threading.get_ident()
        with self._cond:
            said = ""
            while self._thread not in (None, me) or (self._saving and self._thread != me):
                saver = next(iter(self._saving), "")
                doing = (
                    f"{self._holder} is running {self._tool}"
                    if self._holder
                    else (f"{saver} is saving its variables")
                )
                if said != doing:
                    said = doing
                    say(f"waiting for the namespace (agent {doing})")
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                self._cond.wait(0.1)
            others_ran = False
            if self._thread is None:
                self._thread, self._holder, self._tool = me, agent, tool
                others_ran, self._last = self._last not in ("", agent), agent
            self._depth += 1
        try:
            yield others_ran
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._thread, self._holder = None, ""
                    self._cond.notify_all()

    def saving(self, agent: str) -> Callable[[], None]:
        """Keep code out of the namespace while ``agent``'s values are serialized on a thread.

        Called while ``agent`` holds its turn; the returned function ends the wait.
        """
        with self._cond:
            self._saving[agent] = self._saving.get(agent, 0) + 1

        def saved() -> None:
            with self._cond:
                left = self._saving.pop(agent, 1) - 1
                if left:
                    self._saving[agent] = left
                self._cond.notify_all()

        return saved


class _ThreadTee(io.TextIOBase):
    """Stands in for sys.stdout/err: copies what a capturing thread writes into its buffer."""

    def __init__(self, target: Any, local: threading.local) -> None:
        self._target = target
        self._local = local

    def write(self, text: str) -> int:
        buffer = getattr(self._local, "buffer", None)
        if buffer is not None:
            buffer.append(text)
        return self._target.write(text)

    def flush(self) -> None:
        self._target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


_local = threading.local()


@contextmanager
def capture() -> Iterator[list[str]]:
    """Capture this thread's stdout/stderr while still showing it in the cell."""
    for stream in ("stdout", "stderr"):
        current = getattr(sys, stream)
        if not isinstance(current, _ThreadTee):
            setattr(sys, stream, _ThreadTee(current, _local))
    buffer: list[str] = []
    previous = getattr(_local, "buffer", None)
    _local.buffer = buffer
    try:
        yield buffer
    finally:
        _local.buffer = previous


def run_python(shell: Any, code: str) -> ToolResult:
    """Run ``code`` in the shell's user namespace like a cell, and report what happened."""
    touched = touched_names(code)
    namespace = shell.user_ns
    before = set(namespace)
    result_repr = None
    error = False
    with capture() as out:
        try:
            source = shell.transform_cell(code) if hasattr(shell, "transform_cell") else code
            tree = ast.parse(source, filename="<agent>")
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            exec(compile(tree, "<agent>", "exec"), namespace)
            if last is not None:
                value = eval(compile(ast.Expression(last.value), "<agent>", "eval"), namespace)
                if value is not None:
                    namespace["_"] = value
                    result_repr = repr(value)
                    print(result_repr)
            _show_figures()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: the agent's code must not end the kernel
            error = True
            sys.stderr.write(short_traceback(exc))
    touched |= set(namespace) - before
    return ToolResult(clip("".join(out)), error=error, touched=touched)


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


def _show_figures() -> None:
    """Display and close matplotlib figures the code made, as a cell would."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None or not plt.get_fignums():
        return
    from IPython.display import display

    for num in plt.get_fignums():
        display(plt.figure(num))
    plt.close("all")
