"""The agent's plan: a checklist it keeps with the ``update_plan`` tool.

The plan is durable state (each update is a checkpoint and survives
compaction), always in the model's view, and shown as progress ("4/12") in the
timeline, ``%agent list`` and the lab badge. With ``%%agent --plan`` a run
starts by writing the plan (the initializer) and then works through its items
one at a time, each with a fresh context made of the task, the plan, progress
notes and the latest result (the worker), so a long task does not drown in
its own history.
"""

from __future__ import annotations

import json

STATUSES = ("pending", "in_progress", "done")
MAX_ITEMS = 200
MAX_TITLE = 300

UPDATE_PLAN_TOOL = {
    "type": "function",
    "function": {
        "name": "update_plan",
        "description": (
            "Write or update your plan: the full list of work items, each with a status. "
            "Call it first for any multi-step task, and again whenever an item starts or is done."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "title": {"type": "string"},
                            "status": {"type": "string", "enum": list(STATUSES)},
                        },
                        "required": ["title", "status"],
                    },
                }
            },
            "required": ["items"],
        },
    },
}

PLANNER_PROMPT = (
    "Plan first: study the task (and the notebook's state with the python tool if you need to), "
    "then call update_plan with the work items, all 'pending'. Do not start the work yet; "
    "reply with a one-line note once the plan is written."
)


class PlanError(ValueError):
    """Malformed ``update_plan`` arguments; the message is sent back to the model."""


def parse_items(arguments: str) -> list[dict]:
    """The validated item list of an ``update_plan`` call."""
    try:
        args = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError as exc:
        raise PlanError(
            f"The arguments are not valid JSON ({exc.msg} at position {exc.pos})."
        ) from exc
    items = args.get("items") if isinstance(args, dict) else None
    if not isinstance(items, list):
        raise PlanError('Missing argument "items": a list of {"title": ..., "status": ...}.')
    if len(items) > MAX_ITEMS:
        raise PlanError(f"A plan has at most {MAX_ITEMS} items; group smaller ones.")
    out = []
    for n, item in enumerate(items, 1):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("title"), str)
            or not item["title"].strip()
        ):
            raise PlanError(f"Item {n} needs a non-empty string 'title'.")
        status = item.get("status", "pending")
        if status not in STATUSES:
            raise PlanError(f"Item {n} has status {status!r}; use one of {', '.join(STATUSES)}.")
        out.append({"title": " ".join(item["title"].split())[:MAX_TITLE], "status": status})
    return out


def progress(plan: list[dict]) -> str:
    """ "4/12": items done of all."""
    return f"{sum(1 for i in plan if i.get('status') == 'done')}/{len(plan)}" if plan else ""


def current_item(plan: list[dict]) -> int | None:
    """Index of the item being worked on: the first in progress, else the first pending."""
    for wanted in ("in_progress", "pending"):
        for i, item in enumerate(plan):
            if item.get("status") == wanted:
                return i
    return None


def with_status(plan: list[dict], index: int, status: str) -> list[dict]:
    return [{**item, "status": status} if i == index else item for i, item in enumerate(plan)]
