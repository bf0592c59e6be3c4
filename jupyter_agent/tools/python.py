"""The built-in ``python`` tool: run code in the notebook's namespace, as a cell would.

The model sees what a person would at the cell: captured stdout/stderr, the
text form of the last expression, and a short traceback when the code fails, so it
can notice errors and recover. Output is also shown live in the cell, the last
value and figures as a cell shows them (:mod:`.rich`), and kept with the checkpoint. A call
without a ``code`` string is answered with an error the model can act on;
nothing is executed.
"""

from __future__ import annotations

import ast
import contextlib
import io
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..core.plan import UPDATE_PLAN_TOOL
from ..core.redaction import StreamRedactor
from ..errors import MalformedCall
from ..namespace.tracking import touched_names
from . import rich
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


def python_tool(shell: Any, rich_bytes: int = rich.RICH_OUTPUT_BYTES) -> Tool:
    """``python`` in ``shell``: at-least-once, so a call in flight at a crash runs again.

    ``rich_bytes``: what a call keeps of its rich output (see :func:`.rich.cap`).
    """
    return Tool(
        "python",
        PYTHON_TOOL,
        run=lambda code: run_python(shell, code, rich_bytes),
        parse=lambda raw: parse_call({"function": {"name": "python", "arguments": raw}}),
        show=lambda code: code,
        edit=lambda code: code,  # the approver sends code
        idempotent=True,
        in_kernel=True,
    )


class _ThreadTee(io.TextIOBase):
    """Stands in for sys.stdout/err: copies what a capturing thread writes into its buffer,
    and shows what an agent's thread writes with its secrets redacted (see :func:`redacting`)."""

    def __init__(self, target: Any, local: threading.local, name: str) -> None:
        self._target = target
        self._local = local
        self._name = name

    def _redactor(self) -> StreamRedactor | None:
        return (getattr(self._local, "redactors", None) or {}).get(self._name)

    def _shown_in(self) -> Any:
        """Where this thread's output is shown: its sink (see :func:`showing_in`), or the cell."""
        return getattr(self._local, "sink", None) or self._target

    def write(self, text: str) -> int:
        buffer = getattr(self._local, "buffer", None)
        if buffer is not None:
            buffer.append(text)  # the result is redacted with the checkpoint
        redactor = self._redactor()
        if redactor is None:
            return self._shown_in().write(text)
        shown = redactor.feed(text)
        if shown:
            self._shown_in().write(shown)
        return len(text)

    def flush(self) -> None:
        redactor = self._redactor()
        rest = redactor.drain() if redactor is not None else ""
        if rest:
            self._shown_in().write(rest)
        self._shown_in().flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


#: Each thread's capture buffer, if it captures: ``sys.stdout`` is the process's, and so
#: is the tee standing in for it, which copies a thread's writes into that thread's buffer.
_local = threading.local()


def _tee() -> list[_ThreadTee]:
    """Stand in for sys.stdout and sys.stderr (once; the tees then serve every thread)."""
    tees = []
    for stream in ("stdout", "stderr"):
        current = getattr(sys, stream)
        if not isinstance(current, _ThreadTee):
            current = _ThreadTee(current, _local, stream)
            setattr(sys, stream, current)
        tees.append(current)
    return tees


@contextmanager
def redacting(secrets: list[str]) -> Iterator[None]:
    """Show what this thread prints with ``secrets`` redacted, while an agent executes.

    The one place an agent's text leaves it for the cell besides its events
    (see :class:`~jupyter_agent.loop.checkpoints.Recorder`): what its tools print,
    through the tees. Other threads, the user's own cells among them, print as they are.
    """
    tees = _tee()
    previous = getattr(_local, "redactors", None)
    _local.redactors = {s: StreamRedactor(secrets) for s in ("stdout", "stderr")}
    try:
        yield
    finally:
        for tee in tees:  # what is left of a last line
            with contextlib.suppress(Exception):
                tee.flush()
        _local.redactors = previous


@contextmanager
def showing_in(sink: Any) -> Iterator[None]:
    """Show what this thread prints in ``sink`` (a text stream) instead of the cell's stream.

    A ``%%agent`` cell shows its tools' output in its bounded display, which
    keeps a tail of it, so a call printing megabytes does not write them into
    the notebook. What the tools print is still captured whole for the model.
    """
    _tee()
    previous = getattr(_local, "sink", None)
    _local.sink = sink
    try:
        yield
    finally:
        _local.sink = previous


@contextmanager
def capture() -> Iterator[list[str]]:
    """Capture this thread's stdout/stderr while still showing it in the cell."""
    _tee()
    buffer: list[str] = []
    previous = getattr(_local, "buffer", None)
    _local.buffer = buffer
    try:
        yield buffer
    finally:
        _local.buffer = previous


def run_python(shell: Any, code: str, rich_bytes: int = rich.RICH_OUTPUT_BYTES) -> ToolResult:
    """Run ``code`` in the shell's user namespace like a cell, and report what happened.

    The last value and open figures are displayed as a cell displays them (a
    value with a text form only is printed, as before); the result's text holds
    the value's ``text/plain`` form only, its outputs the bundles.
    """
    touched = touched_names(code)
    namespace = shell.user_ns
    before = set(namespace)
    outputs: list[dict] = []  # shown once the code has run: a rich value, its figures
    saved: list[dict] = []  # the value, however it was shown
    error = False
    secrets = [s for r in (getattr(_local, "redactors", None) or {}).values() for s in r.secrets]
    with capture() as out, rich.displays(shell, secrets) as shown:
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
                    result = rich.value_output(shell, value)
                    if rich.is_plain(result):  # text stays its repr, in the cell and for the model
                        result["data"][rich.PLAIN] = text = repr(value)
                        print(text)
                    else:
                        text = str(result["data"][rich.PLAIN])
                        out.append(text + "\n")  # the model's text; the cell shows the bundle
                        outputs.append(result)
                    saved.append(result)
            outputs += rich.figure_outputs(shell)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: the agent's code must not end the kernel
            error = True
            sys.stderr.write(short_traceback(exc))
    touched |= set(namespace) - before
    for output in outputs:
        rich.publish(shell, output, secrets)
    figures = [o for o in outputs if o["output_type"] == "display_data"]
    kept, dropped = rich.cap([*shown, *saved, *figures], rich_bytes)
    return ToolResult(clip("".join(out)), error, touched, outputs=kept, dropped=dropped)
