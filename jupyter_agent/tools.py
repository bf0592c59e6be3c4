"""The agent's tools. Built in: ``python``, which runs code in the notebook's namespace.

The model sees what a person would at the cell: captured stdout/stderr, the
repr of the last expression, and a short traceback when the code fails, so it
can notice errors and recover. Output is also shown live in the cell.
Malformed calls (unknown tool, arguments that are not JSON, a missing ``code``)
are answered with an error the model can act on; nothing is executed.
"""

from __future__ import annotations

import ast
import io
import json
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .namespace import touched_names
from .plan import UPDATE_PLAN_TOOL

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


class MalformedCall(ValueError):
    pass


def parse_call(call: dict) -> str:
    """The ``code`` of a python tool call, or :class:`MalformedCall` saying what is wrong."""
    fn = call.get("function") or {}
    name = fn.get("name")
    if name != "python":
        raise MalformedCall(
            f"Unknown tool {name!r}. The tools are 'python' (argument 'code') and "
            "'update_plan' (argument 'items')."
        )
    raw = fn.get("arguments") or ""
    try:
        args = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise MalformedCall(
            f"The arguments are not valid JSON ({exc.msg} at position {exc.pos}). "
            'Send {"code": "<python source>"}.'
        ) from exc
    if not isinstance(args, dict) or not isinstance(args.get("code"), str):
        raise MalformedCall('Missing argument "code" (a string of Python source).')
    return args["code"]


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
            tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
            # Drop our own frames so the model sees its code's traceback only.
            frames = [line for line in tb if "jupyter_agent/tools.py" not in line]
            sys.stderr.write("".join(frames))
    touched |= set(namespace) - before
    text = "".join(out)
    if len(text) > OUTPUT_LIMIT:
        text = (
            text[: OUTPUT_LIMIT // 2]
            + f"\n…[{len(text) - OUTPUT_LIMIT} characters cut]…\n"
            + text[-OUTPUT_LIMIT // 2 :]
        )
    if not text.strip():
        text = "(no output)"
    return ToolResult(text, error=error, touched=touched)


def _show_figures() -> None:
    """Display and close matplotlib figures the code made, as a cell would."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None or not plt.get_fignums():
        return
    from IPython.display import display

    for num in plt.get_fignums():
        display(plt.figure(num))
    plt.close("all")
