"""The ``delegate`` tool: a parent agent hands a subtask to a child agent.

A child is a durable run of its own (its run's info names ``parent_agent``,
``parent_run`` and ``parent_call``), with its own transcript, in the same
namespace. The parent checkpoints the call's start like a python call; its
result is the child's final answer, written once. So a kill while the child
runs resumes the child (found again by ``parent_call``), and a finished child
is restored, never run again. The execution side lives in
:class:`jupyter_agent.kernel.delegation.Delegation`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import DelegateError

if TYPE_CHECKING:
    pass

#: Levels of children under a top-level agent, and children one run may start.
MAX_DEPTH = 3
MAX_CHILDREN = 8

DELEGATE_TOOL = {
    "type": "function",
    "function": {
        "name": "delegate",
        "description": (
            "Hand a self-contained subtask to a child agent, which works on it with the same "
            "notebook variables and tools and returns its final answer as this call's result."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "agent": {"type": "string", "description": "The child agent's name."},
                "task": {"type": "string", "description": "What the child should do."},
                "model": {"type": "string", "description": "Optional: the child's model."},
            },
            "required": ["agent", "task"],
        },
    },
}


@dataclass
class Delegated:
    """What the child's execution ended with."""

    agent: str
    status: str
    text: str  # the status in words: "done after 2 steps", "paused at the budget: …"
    answer: str
    tokens: int
    run_id: str
    #: The child's prompt, completion and cached tokens (its own children's included):
    #: recorded as the usage of the parent's delegate result, so the parent's ledger adds up.
    usage: dict[str, int] = field(default_factory=dict)
    #: The child's dollars at its model's price (its children's included), if priced:
    #: recorded as the delegate result's ``cost_usd``, for the same reason.
    cost_usd: float | None = None


class Children(Protocol):
    """Runs children for a parent's execution (the runtime provides one)."""

    def refuse(self, parent: Any, agent: str) -> str | None: ...
    def run(self, parent: Any, call_id: str, agent: str, task: str, model: str) -> Delegated: ...


def parse_delegate(arguments: str) -> tuple[str, str, str]:
    """``(agent, task, model)`` of a ``delegate`` call."""
    try:
        args = json.loads(arguments or "{}")
    except ValueError as exc:
        raise DelegateError(f"the arguments are not JSON ({exc})") from None
    if not isinstance(args, dict):
        raise DelegateError("the arguments must be an object with 'agent' and 'task'")
    agent, task, model = args.get("agent"), args.get("task"), args.get("model") or ""
    if not isinstance(agent, str) or not agent.strip():
        raise DelegateError("'agent' (the child agent's name) is missing")
    if not isinstance(task, str) or not task.strip():
        raise DelegateError("'task' (what the child should do) is missing")
    if not isinstance(model, str):
        raise DelegateError("'model' must be a model name")
    return agent.strip(), task.strip(), model.strip()
