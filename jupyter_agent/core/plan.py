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
from dataclasses import dataclass

from ..errors import PlanError
from . import context
from .summary import summary_message

STATUSES = ("pending", "in_progress", "done")
MAX_ITEMS = 200
MAX_TITLE = 300
#: The share of the context window the plan may take in the model's view: it is
#: in every request, and must leave the window to the work.
PLAN_SHARE = 0.1

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


def max_chars(window: int) -> int:
    """The characters the plan may take in the view of a ``window``-token model
    (:data:`PLAN_SHARE`, at four characters a token as the estimates count)."""
    return int(window * PLAN_SHARE * 4)


def parse_items(arguments: str, window: int | None = None) -> list[dict]:
    """The validated item list of an ``update_plan`` call.

    With ``window`` (the model's, in tokens), a plan larger than it can hold
    (:func:`max_chars`) is refused: it would be in every request.
    """
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
    size = len(context.plan_text(out))
    if window is not None and size > max_chars(window):
        raise PlanError(
            f"The plan is too large: {size:,} characters, and in this model's context window "
            f"({window:,} tokens) it may take at most {max_chars(window):,}. Write fewer "
            "items with shorter titles (group smaller ones)."
        )
    return out


def in_view(plan: list[dict], limit: int) -> list[dict]:
    """The plan as the model's view shows it: whole if it fits in ``limit`` characters,
    else the items around the current one, numbered, with what is left out counted.

    A plan is refused above the limit when it is written, but the window can
    shrink later (learnt from the endpoint), and a request must still fit.
    """
    if len(context.plan_text(plan)) <= limit:
        return plan
    numbered = [{**item, "n": n} for n, item in enumerate(plan, 1)]
    at = current_item(plan)
    lo = hi = len(plan) - 1 if at is None else at
    room = limit - len(context.plan_text([numbered[lo]])) - 2 * 80  # the two counts
    while room > 0 and (lo > 0 or hi < len(plan) - 1):
        grown = False
        for side in (hi + 1, lo - 1):
            if 0 <= side < len(plan) and not lo <= side <= hi:
                cost = len(context.plan_text([numbered[side]])) - len(context.plan_text([]))
                if cost > room:
                    continue
                room -= cost
                lo, hi, grown = min(lo, side), max(hi, side), True
        if not grown:
            break
    out = numbered[lo : hi + 1]
    if lo:
        done = sum(1 for i in plan[:lo] if i.get("status") == "done")
        out.insert(0, {"elided": f"items 1–{lo} not shown ({done} done)"})
    if hi < len(plan) - 1:
        left = sum(1 for i in plan[hi + 1 :] if i.get("status") != "done")
        out.append({"elided": f"items {hi + 2}–{len(plan)} not shown ({left} not done)"})
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


# -- working through a plan an item at a time (``--plan``) ----------------------------


def working_on(compaction: dict) -> int | None:
    """The item the current context was started for (None while planning)."""
    return compaction.get("item") if compaction.get("strategy") == "item" else None


def ended(plan: list[dict], compaction: dict) -> list[dict]:
    """The plan once the item being worked on has ended (marked done)."""
    index = working_on(compaction)
    return with_status(plan, index, "done") if index is not None and index < len(plan) else plan


def has_next(plan: list[dict], compaction: dict) -> bool:
    """Whether an item is left once the current one ends."""
    return current_item(ended(plan, compaction)) is not None


def item_title(plan: list[dict], compaction: dict) -> str:
    index = working_on(compaction)
    return plan[index]["title"] if index is not None and index < len(plan) else "plan"


@dataclass
class NextItem:
    """The checkpoint that starts an item with a fresh context."""

    index: int
    plan: list[dict]
    compaction: dict
    instruction: str


def next_item(
    plan: list[dict],
    compaction: dict,
    messages: list[dict],
    note: str,
    variables: dict[str, str],
) -> NextItem | None:
    """The next item to start afresh after ``note`` ended the current one; None: all done.

    Its context is the task, the plan, the progress notes of the items done and
    the notebook's variables: the view is cut at the end of ``messages``.
    """
    plan = ended(plan, compaction)
    index = current_item(plan)
    if index is None:
        return None
    plan = with_status(plan, index, "in_progress")
    notes = (compaction.get("notes") or []) + ([note] if note else [])
    body = "Progress notes:\n" + ("\n".join(f"- {n}" for n in notes[-40:]) or "- none yet")
    if variables:
        body += "\n\nNotebook variables:\n" + "\n".join(f"- {k}: {v}" for k, v in variables.items())
    # The earlier compactions counted what they cut; a resumed state has only the rest.
    upto = int(compaction.get("upto") or 0)
    replies = int(compaction.get("replies") or 0) + sum(
        1 for m in messages[upto:] if m.get("role") == "assistant"
    )
    results = int(compaction.get("results") or 0) + sum(
        1 for m in messages[upto:] if m.get("role") == "tool"
    )
    title = plan[index]["title"]
    return NextItem(
        index,
        plan,
        {
            "strategy": "item",
            "upto": len(messages),
            "trim_before": len(messages),
            "replies": replies,
            "results": results,
            "notes": notes,
            "item": index,
            "summary": summary_message(body, replies, results),
        },
        f"{context.HARNESS_NOTE}Now work on item {index + 1} of {len(plan)}: {title}. "
        "Work on this item only. When it is done, call update_plan to mark it done, then "
        "reply with a short note of what you did and learnt.",
    )
