"""What the offline model reads in its task: the script it follows.

The offline model (:mod:`.offline`) has no mind of its own; its task is a
Markdown text whose fenced blocks and headings say what to do, in order
(docs/offline.md). This module turns that text into a :class:`Script` once:
its actions (each one tool call) grouped into sections (the plan's items).
Fences follow CommonMark: three or more backticks or tildes, closed by a
fence of the same character at least as long, so a ``delegate`` block can
hold its child's own blocks inside a longer fence.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

#: The tool a python block is run with.
PYTHON = "python"
#: The tool a ``delegate`` block calls.
DELEGATE = "delegate"
#: Info strings of a fenced block that is run as python.
PYTHON_LANGS = {"", "python", "py", "python3", "ipython"}

_OPEN = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n]*?)[ \t]*$")
_HEADING = re.compile(r"^ {0,3}## +(?P<title>.*?)(?: +#+)?[ \t]*$")
_TITLE_CHARS = 80


@dataclass(frozen=True)
class Action:
    """One tool call of the script."""

    name: str
    arguments: dict
    #: What the plan calls it when the task has no headings (one item per action).
    title: str

    def describe(self) -> str:
        """The step as the model's reply says it: "running the next code block"."""
        if self.name == PYTHON:
            return "running the next code block"
        if self.name == DELEGATE:
            return f"delegating to {self.arguments['agent']}"
        return f"calling {self.name}"


@dataclass
class Section:
    """The actions under one ``## Title`` heading: one plan item."""

    title: str
    actions: list[Action] = field(default_factory=list)


@dataclass
class Script:
    """A task as the offline model follows it."""

    sections: list[Section]
    #: True when the task has ``## `` headings: the model writes a plan of them.
    headed: bool
    #: What is wrong with the task, said as the model's answer (nothing is run).
    error: str | None = None

    @property
    def actions(self) -> list[Action]:
        return [a for s in self.sections for a in s.actions]

    def items(self) -> list[Section]:
        """The plan's items: the sections, or without headings one per action."""
        if self.headed:
            return self.sections
        return [Section(a.title, [a]) for a in self.actions]


def fenced_blocks(text: str) -> list[tuple[str, str, int, int]]:
    """``(info, body, first, last)`` of each fenced block of ``text`` (outermost only;
    ``first`` and ``last`` are the numbers of its fence lines).

    An unclosed fence runs to the end of the text, as in CommonMark.
    """
    lines = text.split("\n")
    blocks: list[tuple[str, str, int, int]] = []
    i = 0
    while i < len(lines):
        opened = _OPEN.match(lines[i])
        if opened is None or (opened["fence"][0] == "`" and "`" in opened["info"]):
            i += 1
            continue
        fence = opened["fence"]
        close = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = next((j for j in range(i + 1, len(lines)) if close.match(lines[j])), len(lines))
        blocks.append((opened["info"], "\n".join(lines[i + 1 : end]).rstrip(), i, end))
        i = end + 1
    return blocks


def _python_title(code: str, number: int) -> str:
    """A python block's plan title: its first comment line, else its number."""
    first = next((ln.strip() for ln in code.splitlines() if ln.strip()), "")
    if first.startswith("#") and first.lstrip("#").strip():
        return first.lstrip("#").strip()[:_TITLE_CHARS]
    return f"Run code block {number}"


def _action(info: str, body: str, blocks: int) -> Action | str | None:
    """The action of a block with this info string; a string says what is wrong with it."""
    word, _, rest = info.partition(" ")
    word, rest = word.lower(), rest.strip()
    if word in PYTHON_LANGS:
        code = body.rstrip()
        return Action(PYTHON, {"code": code}, _python_title(code, blocks)) if code.strip() else None
    if word == "tool":
        if not rest or " " in rest:
            return "a ```tool block names one tool: ```tool NAME"
        try:
            args = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            return f"the arguments of ```tool {rest} are not JSON ({exc})"
        if not isinstance(args, dict):
            return f'the arguments of ```tool {rest} must be a JSON object, e.g. {{"key": "q3"}}'
        return Action(rest, args, f"Call {rest}")
    if word == DELEGATE:
        if not rest or " " in rest:
            return "a ```delegate block names one child agent: ```delegate NAME"
        if not body.strip():
            return f"the ```delegate {rest} block is empty: its text is the child's task"
        return Action(DELEGATE, {"agent": rest, "task": body.strip()}, f"Delegate to {rest}")
    return None  # another language: text, not a step


def parse_task(text: str) -> Script:
    """The script of a task (see the module docstring)."""
    blocks = fenced_blocks(text)
    inside = {n for _, _, first, last in blocks for n in range(first, last + 1)}
    starts = {first: (info, body) for info, body, first, _ in blocks}
    sections = [Section("")]
    headed, numbered = False, 0
    for n, line in enumerate(text.split("\n")):
        if n in starts:
            info, body = starts[n]
            numbered += info.partition(" ")[0].lower() in PYTHON_LANGS
            action = _action(info, body, numbered)
            if isinstance(action, str):
                return Script([], False, error=f"The task cannot be followed: {action}.")
            if action is not None:
                sections[-1].actions.append(action)
            continue
        heading = None if n in inside else _HEADING.match(line)
        if heading is not None and heading["title"]:
            headed = True
            if sections[-1].title or sections[-1].actions:
                sections.append(Section(heading["title"][:_TITLE_CHARS]))
            else:  # the first heading names the blocks before it too
                sections[-1].title = heading["title"][:_TITLE_CHARS]
    if headed and not sections[0].title:  # blocks before the first heading: its item
        first = sections.pop(0)
        sections[0].actions[:0] = first.actions
    return Script(sections, headed)
