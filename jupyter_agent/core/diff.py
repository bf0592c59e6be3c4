"""What differs between two points of agents' histories: messages, variables, files.

Pure: it compares two folded :class:`~jupyter_agent.core.state.RunState` values
(of one run, of a run and its fork, or of two agents) and returns dataclasses
that ``jupyter agent diff``, ``%agent diff`` and the timeline's "compare with…"
render (:mod:`jupyter_agent.views.diff`). Values are read by the caller: a
value's text comes from ``value_text``, so this module neither reads a store nor
unpickles anything.

* **Messages**: the common prefix is skipped; after it, each side's messages and
  tool calls, one compact line each, with the checkpoint that added them.
* **Variables**: added, removed or changed (by content hash), each with its
  type, size and short summary as recorded when it was saved; for small values a
  unified diff of their texts.
* **Files**: the run's files (:attr:`RunState.files`) added, removed or changed.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..vocab import clipped
from .files import diff_files
from .state import FileRecord, RunState, call_code

LINE_LIMIT = 120  # characters of one message line
DIFF_LINES = 60  # lines of one value's unified diff
VALUE_LIMIT = 64 * 1024  # serialized bytes of a value small enough to be read for a diff


@dataclass(frozen=True)
class Line:
    """One message, or one tool call, of one side after the common prefix."""

    side: str  # "a" or "b"
    index: int  # the message's position in its history
    checkpoint: int | None
    role: str  # system, user, assistant, call, result
    text: str


@dataclass(frozen=True)
class Value:
    """A variable's value on one side, as its checkpoint recorded it."""

    type: str
    size: int | None  # serialized bytes; None: not saved
    summary: str


@dataclass(frozen=True)
class VarChange:
    """A variable added, removed or changed from ``a`` to ``b``, with both sides as recorded
    (the hashes tell a change; the summaries and the diff let a reader see it)."""

    name: str
    change: str  # added, removed, changed
    a: Value | None
    b: Value | None
    diff: list[str] = field(default_factory=list)  # unified diff of the values' texts


@dataclass(frozen=True)
class FileChange:
    """A file of the run's state added, removed or changed from ``a`` to ``b``."""

    path: str
    change: str  # added, removed, changed
    a: FileRecord | None  # the file's record on each side
    b: FileRecord | None


@dataclass
class StateDiff:
    """Everything that differs between two states; empty lists where nothing does."""

    common: int  # messages both sides share from the start
    messages: list[Line]
    variables: list[VarChange]
    files: list[FileChange]

    @property
    def same(self) -> bool:
        """Nothing differs: a diff of a point with itself, or of two that agree."""
        return not (self.messages or self.variables or self.files)

    def as_dict(self) -> dict[str, Any]:
        """The lists as JSON gives them (``--json``, the timeline's comparison)."""
        return {
            "messages": [asdict(m) for m in self.messages],
            "variables": [asdict(v) for v in self.variables],
            "files": [asdict(f) for f in self.files],
        }


#: name, content hash -> the value's text (for a unified diff), or None: not compared.
ValueText = Callable[[str, str], str | None]


def diff_states(
    a: RunState,
    b: RunState,
    *,
    steps: tuple[list[int], list[int]] = ([], []),
    info: tuple[dict[str, dict], dict[str, dict]] = ({}, {}),
    value_text: ValueText | None = None,
) -> StateDiff:
    """Compare ``a`` with ``b``. ``steps``: the checkpoint of each side's messages;
    ``info``: each side's ``{type, repr, size}`` per variable (see the module)."""
    common = 0
    for x, y in zip(a.messages, b.messages, strict=False):
        if x != y:
            break
        common += 1
    lines = [
        *_lines("a", a.messages, steps[0], common),
        *_lines("b", b.messages, steps[1], common),
    ]
    return StateDiff(common, lines, _variables(a, b, info, value_text), _files(a.files, b.files))


def _lines(side: str, messages: list[dict], steps: list[int], start: int) -> list[Line]:
    out = []
    for i in range(start, len(messages)):
        msg, at = messages[i], steps[i] if i < len(steps) else None
        role = str(msg.get("role") or "?")
        content = msg.get("content")
        text = content if isinstance(content, str) else json.dumps(content, default=str)
        if role == "tool":
            out.append(Line(side, i, at, "result", _one_line(text)))
            continue
        if text or not msg.get("tool_calls"):
            out.append(Line(side, i, at, role, _one_line(text)))
        for call in msg.get("tool_calls") or []:
            out.append(Line(side, i, at, "call", _one_line(call_text(call))))
    return out


def call_text(call: dict) -> str:
    """A tool call in one line's worth: ``python: x = 2`` or ``name {json args}``."""
    fn = call.get("function") or {}
    name, code = fn.get("name") or "?", call_code(call)
    return f"{name}: {code}" if code is not None else f"{name} {fn.get('arguments') or ''}"


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    first = " ".join(lines[0].split()) if lines else ""
    if len(lines) > 1:
        first += f" (+{len(lines) - 1} lines)"
    return clipped(first, LINE_LIMIT)


def _value(state: RunState, info: dict[str, dict], name: str) -> Value | None:
    if name in state.unsaved:
        return Value(info.get(name, {}).get("type", "?"), None, f"not saved: {state.unsaved[name]}")
    if name not in state.vars:
        return None
    seen = info.get(name) or {}
    size = seen.get("size")
    return Value(
        str(seen.get("type", "?")),
        size if isinstance(size, int) else None,
        str(seen.get("repr", "")),
    )


def _variables(
    a: RunState,
    b: RunState,
    info: tuple[dict[str, dict], dict[str, dict]],
    value_text: ValueText | None,
) -> list[VarChange]:
    out = []
    for name in sorted({*a.vars, *a.unsaved, *b.vars, *b.unsaved}):
        left, right = _value(a, info[0], name), _value(b, info[1], name)
        ha, hb = a.vars.get(name), b.vars.get(name)
        if left is None or right is None:
            out.append(VarChange(name, "added" if left is None else "removed", left, right))
        elif ha != hb or a.unsaved.get(name) != b.unsaved.get(name):
            diff: list[str] = []
            if value_text and ha and hb and _small(left) and _small(right):
                diff = value_diff(value_text(name, ha), value_text(name, hb), name)
            out.append(VarChange(name, "changed", left, right, diff))
    return out


def _small(value: Value) -> bool:
    return value.size is not None and value.size <= VALUE_LIMIT


def value_diff(old: str | None, new: str | None, name: str) -> list[str]:
    """A unified diff of two values' texts; none when either is unknown or both are one line."""
    if old is None or new is None or old == new:
        return []
    a, b = old.splitlines(), new.splitlines()
    if len(a) <= 1 and len(b) <= 1:
        return []  # the summary line says it all
    lines = list(difflib.unified_diff(a, b, f"a/{name}", f"b/{name}", n=2, lineterm=""))
    if len(lines) > DIFF_LINES:
        lines = [*lines[:DIFF_LINES], f"… {len(lines) - DIFF_LINES} more lines"]
    return lines


def _files(a: dict[str, FileRecord], b: dict[str, FileRecord]) -> list[FileChange]:
    """:func:`~.files.diff_files`, each path with its record on both sides, by path."""
    d = diff_files(a, b)
    change = {
        **dict.fromkeys(d.added, "added"),
        **dict.fromkeys(d.removed, "removed"),
        **dict.fromkeys(d.changed, "changed"),
    }
    return [FileChange(p, change[p], a.get(p), b.get(p)) for p in sorted(change)]
