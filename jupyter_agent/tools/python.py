"""The built-in ``python`` tool: run code in the notebook's namespace, as a cell would.

The model sees what a person would at the cell: captured stdout/stderr, the
repr of the last expression, and a short traceback when the code fails, so it
can notice errors and recover. Output is also shown live in the cell. A call
without a ``code`` string is answered with an error the model can act on;
nothing is executed.
"""

from __future__ import annotations

import ast
import io
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..core.plan import UPDATE_PLAN_TOOL
from ..errors import MalformedCall
from ..namespace.tracking import touched_names
from .base import Tool, ToolResult, clip, json_arguments, short_traceback, unknown_tool

PYTHON_TOOL: dict[str, Any] = {
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
#: The built-in tools every run is offered, before the user's and servers' own.
TOOLS: list[dict[str, Any]] = [PYTHON_TOOL, UPDATE_PLAN_TOOL]


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


#: Each thread's capture buffer, if it captures: ``sys.stdout`` is the process's, and so
#: is the tee standing in for it, which copies a thread's writes into that thread's buffer.
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
            last = tree.body[-1] if tree.body else None
            if isinstance(last, ast.Expr):  # evaluated apart, for its value
                tree.body.pop()
            exec(compile(tree, "<agent>", "exec"), namespace)
            if isinstance(last, ast.Expr):
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


def _show_figures() -> None:
    """Display and close matplotlib figures the code made, as a cell would."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None or not plt.get_fignums():
        return
    from IPython.display import display

    for num in plt.get_fignums():
        display(plt.figure(num))
    plt.close("all")
