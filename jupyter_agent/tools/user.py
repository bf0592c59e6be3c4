"""The notebook's own functions as tools: ``@tool``, or ``%%agent --tools f,g``.

A function's JSON schema comes from its signature, type hints and docstring
(through a pydantic model, so the model's arguments are validated and
converted the way the hints say). Its result goes back as text: a string as
it is, anything else as its ``repr``, after whatever the function printed; an
exception goes back as a short traceback, as from the ``python`` tool.

A run stores only its tools' names: the functions themselves are looked up
in the namespace when each execution starts, so after a kernel restart the
cell that defines them must run first (:func:`resolve` says so).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import sys
import threading
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import MalformedCall, ToolError
from .base import Tool, ToolResult, clip, function_schema, json_arguments, short_traceback
from .python import TOOLS, capture

if TYPE_CHECKING:  # pydantic is imported when a tool is made (100 ms that `%load_ext` skips)
    from pydantic import BaseModel

#: The attribute ``@tool`` sets on a function.
MARK = "__agent_tool__"
BUILT_IN = {t["function"]["name"] for t in TOOLS}
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ToolSpec:
    """How a user tool behaves when its call was in flight at a crash, and whether it asks."""

    idempotent: bool = False
    approve: bool = False


def tool(fn: Callable | None = None, /, *, idempotent: bool = False, approve: bool = False) -> Any:
    """Offer a notebook function to every agent of this kernel as a tool.

    ``idempotent=True``: calling it twice does no harm, so a call in flight at a
    crash simply runs again (otherwise the agent asks first). ``approve=True``:
    every call waits for the user's approval, even without ``--approve``.
    The function itself is returned unchanged.
    """

    def mark(f: Callable) -> Callable:
        if not callable(f):
            raise TypeError(f"@tool decorates a function, not {type(f).__name__}.")
        setattr(f, MARK, ToolSpec(idempotent=idempotent, approve=approve))
        return f

    return mark if fn is None else mark(fn)


def decorated(user_ns: dict) -> list[str]:
    """Names bound to ``@tool`` functions in the namespace, in the order they were defined."""
    names = []
    for name, value in list(user_ns.items()):
        if name.startswith("_") or not callable(value):
            continue
        try:
            spec = inspect.getattr_static(value, MARK, None)
        except Exception:  # an object whose attribute lookup fails is no tool
            continue
        if isinstance(spec, ToolSpec):
            names.append(name)
    return names


def check_names(user_ns: dict, names: list[str] | tuple[str, ...]) -> None:
    """:class:`ToolError` unless every name is a callable of the namespace."""
    resolve(user_ns, list(names))


def resolve(user_ns: dict, names: list[str]) -> list[Tool]:
    """The tools named, built from the namespace's current functions."""
    tools = []
    for name in names:
        if name in BUILT_IN:
            raise ToolError(f"tool {name} is built in; name your function differently.")
        if not _NAME.match(name):
            raise ToolError(f"tool {name!r}: a tool name has 1 to 64 letters, digits, '_' or '-'.")
        if name not in user_ns:
            raise ToolError(
                f"tool {name} is not defined in this kernel: run the cell that defines it, "
                "then re-run this cell."
            )
        fn = user_ns[name]
        if not callable(fn):
            raise ToolError(
                f"tool {name} is not a function (it is a {type(fn).__name__}); pass the name "
                "of a function to --tools."
            )
        tools.append(function_tool(name, fn))
    return tools


def function_tool(name: str, fn: Callable) -> Tool:
    spec = inspect.getattr_static(fn, MARK, None)
    spec = spec if isinstance(spec, ToolSpec) else ToolSpec()
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise ToolError(f"tool {name}: its signature cannot be read ({exc}).") from None
    summary, params = parse_docstring(inspect.getdoc(fn) or "")
    arguments, positional = _arguments_model(name, fn, signature, params)
    try:
        parameters = arguments.model_json_schema()
    except Exception as exc:
        raise ToolError(
            f"tool {name}: its parameters need JSON types (str, int, float, bool, list, dict, "
            f"pydantic models, …): {_first_line(exc)}"
        ) from None
    parameters.pop("title", None)
    description = summary or f"The notebook function {name}{signature}."

    def parse(raw: str) -> dict:
        args = json_arguments(raw, f"Send the arguments of {name}{signature} as a JSON object.")
        _validate(arguments, args, name, signature)
        return args

    def run(args: dict) -> ToolResult:
        values = _validate(arguments, args, name, signature)
        return call(fn, values, positional)

    return Tool(
        name,
        function_schema(name, description, parameters),
        run=run,
        parse=parse,
        idempotent=spec.idempotent,
        approve=spec.approve,
    )


def call(fn: Callable, values: dict, positional: list[str]) -> ToolResult:
    """Call ``fn`` as a cell would: its printed output and its result, or its traceback."""
    error = False
    with capture() as out:
        try:
            args = [values.pop(p) for p in positional]
            value = fn(*args, **values)
            if inspect.isawaitable(value):
                value = _await(value)
            if value is not None:
                print(value if isinstance(value, str) else repr(value))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: a tool must not end the kernel
            error = True
            sys.stderr.write(short_traceback(exc))
    return ToolResult(clip("".join(out)), error=error)


def _await(awaitable: Any) -> Any:
    """Run an async tool to completion on a thread of its own (the kernel's loop is busy)."""
    box: dict[str, Any] = {}

    async def main() -> Any:
        return await awaitable

    def target() -> None:
        try:
            box["value"] = asyncio.run(main())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="jupyter-agent async tool", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _arguments_model(
    name: str, fn: Callable, signature: inspect.Signature, docs: dict[str, str]
) -> tuple[type[BaseModel], list[str]]:
    """A pydantic model of the parameters, and the names passed positionally."""
    from pydantic import ConfigDict, Field, create_model

    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable string annotations: treat those parameters as Any
        hints = {}
    fields: dict[str, Any] = {}
    positional: list[str] = []
    extra: Literal["allow", "forbid"] = "forbid"
    for i, p in enumerate(signature.parameters.values()):
        if p.kind is p.VAR_KEYWORD:
            extra = "allow"
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        if p.kind is p.POSITIONAL_ONLY:
            positional.append(p.name)
        default = ... if p.default is p.empty else p.default
        # Internal field names with the parameter as alias: any parameter name works.
        fields[f"p{i}"] = (
            hints.get(p.name, Any),
            Field(default, alias=p.name, description=docs.get(p.name)),
        )
    try:
        model = create_model(
            f"{name}_arguments",
            __config__=ConfigDict(extra=extra, arbitrary_types_allowed=True),
            **fields,
        )
    except Exception as exc:
        raise ToolError(f"tool {name}: {_first_line(exc)}") from None
    return model, positional


def _validate(model: type[BaseModel], args: dict, name: str, signature: inspect.Signature) -> dict:
    """The call's keyword arguments, converted as the hints say, or :class:`MalformedCall`."""
    from pydantic import ValidationError

    try:
        validated = model.model_validate(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
        )
        raise MalformedCall(
            f"The arguments do not match {name}{signature}: {problems}. Nothing was run."
        ) from None
    values = {f.alias or k: getattr(validated, k) for k, f in model.model_fields.items()}
    values.update(validated.model_extra or {})
    return values


_SECTION = re.compile(r"^(\w+):?$")
_PARAM_SECTIONS = {"args", "arguments", "parameters", "params", "keyword args", "other parameters"}
_GOOGLE = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_NUMPY = re.compile(r"^(\w+)\s*(?::.*)?$")
_SPHINX = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+):\s*(.*)$")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The description of a docstring, and its parameters' descriptions.

    Reads Google (``Args:``), NumPy (``Parameters`` over a dashed line) and
    Sphinx (``:param x:``) styles; the description is the text before them.
    """
    lines = doc.expandtabs().splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None  # None: still in the description
    numpy = False
    entry_indent: int | None = None
    current = ""
    for i, line in enumerate(lines):
        text = line.strip()
        indent = len(line) - len(line.lstrip())
        if set(text) == {"-"}:
            continue
        underlined = i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"}
        header = _SECTION.match(text)
        if header and (text.endswith(":") or underlined):
            section, numpy, entry_indent, current = header.group(1).lower(), underlined, None, ""
            continue
        sphinx = _SPHINX.match(text)
        if sphinx:
            section, current = "sphinx", sphinx.group(1)
            params[current] = sphinx.group(2)
            continue
        if text.startswith(":"):  # another Sphinx field (:returns:, :raises:)
            section, current = "sphinx", ""
            continue
        if section is None:
            summary.append(text)
            continue
        if not text:
            continue
        if section in _PARAM_SECTIONS:
            if entry_indent is None:
                entry_indent = indent
            if indent <= entry_indent:
                match = (_NUMPY if numpy else _GOOGLE).match(text)
                current = match.group(1) if match else ""
                if current:
                    params[current] = "" if numpy else match.group(2)  # type: ignore[union-attr]
                continue
        if current and section in (*_PARAM_SECTIONS, "sphinx"):
            params[current] = (params[current] + " " + text).strip()
    description = " ".join(" ".join(summary).split())
    return description, {k: " ".join(v.split()) for k, v in params.items()}


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
