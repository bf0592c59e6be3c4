"""What if: a fork that changes one thing at its checkpoint, a model reply, a tool output or the model.

The edit is checked before the fork exists (:func:`plan_edit`), kept in the
fork run's info (``edit`` and ``what_if``), and applied by the fork's own first
checkpoint (kind ``fork``, :meth:`.execution.Execution._fork`): the edited
step is a checkpoint of the fork, so a resume after a kill continues from it.

* An edited **reply** replaces a ``model`` checkpoint: the fork branches off
  just before it, and its first step is the edited assistant message, with its
  tool calls as edited (the fork then runs those calls, not the original ones).
* An edited **output** replaces what a ``tool_result`` checkpoint gave the
  model: the call ran (the namespace is as after it), the model reads the
  edited text next.
* **Another model** continues from any checkpoint; the fork's model says which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..core.state import RunState
from ..errors import UsageProblem


@dataclass
class Edit:
    """A fork's change at its checkpoint, as recorded in the fork run's info."""

    kind: str  # "reply", "output" or "model" (see :data:`jupyter_agent.vocab.WHAT_IF`)
    #: Where the fork branches off: the checkpoint before an edited reply, else the one named.
    parent_step: int
    #: The edited step: ``{"reply": message}``; ``{"output": tool message, "vars", "unsaved",
    #: "files"}`` (:func:`edited_output`, once the states around the checkpoint are read); {}
    #: for a model.
    payload: dict[str, Any] = field(default_factory=dict)

    def info(self, run_id: str, step: int) -> dict[str, Any]:
        """The fork run's info entries: ``edit`` (what its first checkpoint applies) and ``what_if``."""
        return {"edit": self.payload, "what_if": {"edited": self.kind, "from": [run_id, step]}}


def plan_edit(
    kind: str, step: int, *, reply: str | None, output: str | None, model: str | None
) -> Edit | None:
    """The edit a fork from checkpoint ``step`` (of kind ``kind``) makes; None for a plain fork.

    Refuses in one line what does not fit the checkpoint: an edited reply needs
    a ``model`` checkpoint, an edited output a ``tool_result`` one.
    """
    if reply is not None and output is not None:
        raise UsageProblem("Give an edited reply or an edited tool output, not both.")
    if reply is not None:
        if kind != "model":
            raise UsageProblem(
                f"Checkpoint {step} is a {kind} checkpoint: an edited reply needs a model one."
            )
        return Edit("reply", step - 1, {"reply": edited_reply(reply)})
    if output is not None:
        if kind != "tool_result":
            raise UsageProblem(
                f"Checkpoint {step} is a {kind} checkpoint: an edited tool output needs a "
                "tool_result one."
            )
        return Edit("output", step - 1)  # its payload: edited_output, from the states around it
    if model:
        return Edit("model", step)
    return None


def edited_reply(text: str) -> dict[str, Any]:
    """An assistant message from JSON of one (``content``, ``tool_calls``) or from plain text.

    Plain text is a reply of that text and no tool call. Tool calls may be given
    as the API writes them (``{"function": {"name", "arguments"}}``) or shortly
    (``{"name", "arguments"}``), arguments as an object or a JSON string.
    """
    stripped = text.strip()
    if not stripped.startswith("{"):
        return {"role": "assistant", "content": text}
    try:
        given = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise UsageProblem(f"The edited reply is not valid JSON: {exc}.") from None
    if not isinstance(given, dict):
        raise UsageProblem("The edited reply must be a JSON object or plain text.")
    content = given.get("content") or ""
    if not isinstance(content, str):
        raise UsageProblem("The edited reply's content must be text.")
    calls = given.get("tool_calls") or []
    if not isinstance(calls, list):
        raise UsageProblem("The edited reply's tool_calls must be a list.")
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [_call(c, i) for i, c in enumerate(calls)]
    return message


def _call(call: Any, index: int) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise UsageProblem(f"Tool call {index + 1} of the edited reply is not an object.")
    nested = call.get("function")
    function: dict = nested if isinstance(nested, dict) else call
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise UsageProblem(f"Tool call {index + 1} of the edited reply has no name.")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            raise UsageProblem(
                f"The arguments of tool call {index + 1} are not valid JSON: {exc}."
            ) from None
    if not isinstance(arguments, dict):
        raise UsageProblem(f"The arguments of tool call {index + 1} must be a JSON object.")
    return {
        "id": str(call.get("id") or f"call_edited_{index + 1}"),
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def output_call(before: RunState, step: int) -> str:
    """The id of the call whose result checkpoint ``step`` holds: the one in flight before it."""
    call = before.started_call or (before.pending_tool_call() or {}).get("id")
    if not call:
        raise UsageProblem(f"Checkpoint {step} answers no tool call that can be edited.")
    return call


def edited_output(before: RunState, after: RunState, step: int, text: str) -> dict[str, Any]:
    """The ``edit`` of a fork whose checkpoint ``step`` (state ``after``) gives the model ``text``.

    The tool message is the recorded one with its content replaced; the call's
    effects on the namespace (``after`` against ``before``) are kept.
    """
    call = output_call(before, step)
    recorded = next(
        (m for m in after.messages if m.get("role") == "tool" and m.get("tool_call_id") == call),
        {"role": "tool", "tool_call_id": call},
    )
    return {"output": {**recorded, "content": text}, **namespace_delta(before, after)}


def namespace_delta(before: RunState, after: RunState) -> dict[str, Any]:
    """The variables and files of ``after`` that differ from ``before``'s."""
    names = set(before.vars) | set(after.vars)
    paths = set(before.files) | set(after.files)
    return {
        "vars": {n: after.vars.get(n) for n in names if before.vars.get(n) != after.vars.get(n)},
        "unsaved": {n: w for n, w in after.unsaved.items() if before.unsaved.get(n) != w},
        "files": {
            p: after.files.get(p) for p in paths if before.files.get(p) != after.files.get(p)
        },
    }
