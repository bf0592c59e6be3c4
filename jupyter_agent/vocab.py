"""The words users read: run statuses, checkpoint kinds, what a step is, and names.

One definition for the cell output, ``%agent list``, ``jupyter agent``, the
timeline widget, the REST API and the JupyterLab badge, so they never disagree:
a run's status and its sentence come from :func:`status_and_text` alone. Standard
library only: the server extension and the widget import it without the agent loop.

A **step** is one model call together with the tool calls it asks for, so the
steps a run has done are the ``model`` checkpoints of its history. A
**checkpoint** is one saved record; its sequence number is never called a step.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from bisect import bisect_right
from collections.abc import Collection, Iterable, Mapping
from enum import Enum
from typing import Any, TypeVar

#: An agent's ``--name``: what a cell accepts and what the REST API routes. Every
#: name an agent is given follows it, derived ones too (:func:`cell_agent_name`).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
#: What a terminal, a markdown viewer or a log obeys rather than shows: C0 and C1
#: controls, DEL, and the marks that reorder text (bidirectional overrides).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: The variable that names a kernel's notebook where its frontend does not.
ENV_NOTEBOOK = "JUPYTER_AGENT_NOTEBOOK"
#: Set to "1" by `jupyter agent resume --strict`: the kernel's agents refuse to continue
#: after a change (as ``AgentMagics.strict``).
ENV_STRICT = "JUPYTER_AGENT_STRICT"
#: A file whose existence stops the kernel's agents between two steps, as a pause does
#: (set by the worker pool for a job's kernel, created once the job is cancelled).
ENV_STOP_FILE = "JUPYTER_AGENT_STOP_FILE"
#: Where `%agent replay` adds its report as a JSON line (set by `jupyter agent replay`).
ENV_REPLAY_REPORT = "JUPYTER_AGENT_REPLAY_REPORT"


def cell_agent_name(cell_id: str) -> str:
    """The name of an agent known by its cell's id, under the ``--name`` rule.

    ``cell-<id>`` where that is a valid name (nbformat's ids and JupyterLab's
    UUIDs are). A frontend may send anything as an id, though; such an id is
    named by a digest of it instead (``cell-`` and 16 hex digits), so the same
    cell is the same agent again and the name is safe to print, route and type.
    """
    name = f"cell-{cell_id}"
    if NAME_PATTERN.match(name):
        return name
    digest = hashlib.sha256(cell_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"cell-{digest[:16]}"


def printable(text: str) -> str:
    """``text`` with its control characters escaped as Python writes them (``\\x1b``).

    For names and tool names wherever they are printed: a store may hold names
    from before they were checked, and tool names come from models and servers.
    """
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def clipped(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, the last an ellipsis where it was cut:
    how every bounded line users read (a summary, a listing's prompt, a diff) ends."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


_W = TypeVar("_W", bound="_Word")


def _member(cls: type[_W], value: str, label: str, icon: str) -> _W:
    """A :class:`_Word` member: the string stored, with its words."""
    member = str.__new__(cls, value)
    member._value_ = value
    member._label = label  # type: ignore[attr-defined]
    member._icon = icon  # type: ignore[attr-defined]
    return member


class _Word(str, Enum):
    """A stored string with the words users read for it."""

    def __new__(cls, value: str, label: str, icon: str = "") -> _Word:
        return _member(cls, value, label, icon)

    def __str__(self) -> str:
        return self.value

    def label(self) -> str:
        return self._label  # type: ignore[attr-defined]

    @classmethod
    def of(cls: type[_W], value: str) -> _W | None:
        """The member stored as ``value``; None for a string of another release."""
        return next((m for m in cls if m.value == value), None)


class Status(_Word):
    """A run's status. All but ``STALLED`` are stored in checkpoints.

    :meth:`label` gives the status in a few words, without counts.
    """

    RUNNING = "running", "running"
    DONE = "done", "done"
    INTERRUPTED = "interrupted", "interrupted"
    AWAITING_APPROVAL = "awaiting_approval", "waiting for approval"
    ERROR = "error", "paused after an error"
    LIMIT = "limit", "stopped at the step limit"
    #: Paused at the token or cost budget; resumable.
    BUDGET = "budget", "paused at the budget"
    #: Paused: the same failing call or the same reply repeated; resumable.
    STUCK = "stuck", "stuck"
    #: Derived, never stored: a live run with no checkpoint for longer than the
    #: stall threshold (a hung kernel, a tool call that never returns).
    STALLED = "stalled", "stalled"


#: How a decision on a waiting call is said, by its action.
DECIDED = {"approve": "approved", "reject": "rejected", "edit": "edited"}

#: Statuses of a run that may be resumed by re-running its cell.
RESUMABLE = frozenset(set(Status) - {Status.DONE, Status.STALLED})


class Kind(_Word):
    """What a checkpoint records; :meth:`label` and :meth:`icon` name its timeline row.

    A kind is written ``value, icon`` and reads as its value, or ``value, icon, label``.
    """

    def __new__(cls, value: str, icon: str, label: str = "") -> Kind:
        return _member(cls, value, label or value, icon)

    START = "start", "▶"
    #: A fork's first checkpoint: its history so far is its parent's, up to the fork point.
    FORK = "fork", "⋔"
    RESUME = "resume", "↻"
    #: A step: one model call, with the tool calls it asks for.
    MODEL = "model", "◆"
    TOOL_CALL = "tool_call", "⚙", "tool call"
    TOOL_RESULT = "tool_result", "↳", "result"
    APPROVAL = "approval", "‖"
    #: Runs that ended without finishing; each is resumable.
    INTERRUPTED = "interrupted", "■"
    ERROR = "error", "⚠"
    LIMIT = "limit", "⊘"
    #: The model's context was compacted.
    COMPACTION = "compaction", "⇊", "context compacted"
    BUDGET = "budget", "¤"
    STUCK = "stuck", "↺"

    def icon(self) -> str:
        return self._icon  # type: ignore[attr-defined]


def kinds() -> dict[str, list[str]]:
    """Every kind's ``[icon, label]``, for a frontend that draws rows."""
    return {k.value: [k.icon(), k.label()] for k in Kind}


def statuses() -> dict[str, str]:
    """Every status's :meth:`Status.label`, for a frontend."""
    return {s.value: s.label() for s in Status}


# -- sentences -------------------------------------------------------------------------


def size_text(n: int) -> str:
    """Bytes as people read them: ``512 B``, ``1.5 KiB``, ``3.2 MiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def plural(n: int, word: str) -> str:
    """``1 step``, ``3 steps``, ``12,000 tokens``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def tokens(n: int) -> str:
    """A token count as every message writes it: ``1,658 tokens``, ``1 token``.

    The one format: the timeline, the lists and the JupyterLab extension group
    digits the same way, and an estimate is said as such next to it, not with a mark.
    """
    return plural(n, "token")


def status_text(
    status: str, steps: int, info: Mapping[str, Any] | None = None, *, idle: float | None = None
) -> str:
    """A run's status as users read it: "done after 3 steps", "interrupted at step 3".

    ``steps`` is the steps the run's history has done (its ``model``
    checkpoints); ``info`` the last checkpoint's info (budget and stuck
    checkpoints explain themselves there); ``idle`` the seconds since the last
    checkpoint (for a stalled run).
    """
    info = info or {}
    st = Status.of(status)
    if st is None:
        return str(status).replace("_", " ")
    at = f"at step {steps}" if steps > 0 else "before the first step"
    if st is Status.DONE:
        return f"done after {plural(steps, 'step')}" if steps > 0 else "done"
    decision = info.get("decision") if "answered" in info else None
    if st is Status.INTERRUPTED and isinstance(decision, Mapping):
        # Answered with no kernel running it (loop.decisions): it goes on when next run.
        said = DECIDED.get(str(decision.get("action")), "answered")
        return f"call {said} {at}; continues when the agent next runs"
    if st in (Status.INTERRUPTED, Status.ERROR):
        return f"{st.label()} {at}"
    if st is Status.LIMIT:
        return f"{st.label()} after {plural(steps, 'step')}"
    if st is Status.BUDGET:
        return budget_text(info)
    if st is Status.STUCK:
        reason = str(info.get("reason") or "").strip()
        return f"stuck: {reason}" if reason else "stuck: the same call or reply kept repeating"
    if st is Status.STALLED:
        since = f"for {duration(idle)}" if idle is not None else "for a long time"
        return f"stalled: no checkpoint {since}"
    return st.label()


def budget_text(info: Mapping[str, Any]) -> str:
    """ "paused at the budget: 48,210 of 50,000 tokens; the next step was estimated at
    2,400 tokens" from a budget checkpoint's info (a run pauses before a step that would
    cross its budget, so the estimate says why it paused below it)."""
    spent, budget = info.get("spent"), info.get("budget")
    if isinstance(spent, int) and isinstance(budget, int):
        text = f"paused at the budget: {spent:,} of {tokens(budget)}"
        estimate = info.get("next")
        if isinstance(estimate, int):  # why it paused below the budget
            text += f"; the next step was estimated at {tokens(estimate)}"
        return text
    cost, budget_cost = info.get("cost"), info.get("budget_cost")
    if isinstance(cost, int | float) and isinstance(budget_cost, int | float):
        text = f"paused at the budget: ${cost:,.2f} of ${budget_cost:,.2f}"
        estimate = info.get("next_cost")
        if isinstance(estimate, int | float):
            text += f"; the next step was estimated at ${estimate:,.2f}"
        return text
    return Status.BUDGET.label()


def checkpoint_text(kind: str, info: Mapping[str, Any]) -> str:
    """What a compaction, budget or stuck checkpoint says; "" for other kinds."""
    if kind == Kind.COMPACTION:
        before, after = info.get("before_tokens"), info.get("after_tokens")
        text = Kind.COMPACTION.label()
        if isinstance(before, int) and isinstance(after, int):
            text += f": {before:,} → {tokens(after)}"
        if info.get("strategy"):
            text += f" ({info['strategy']})"
        return text
    if kind == Kind.BUDGET:
        return budget_text(info)
    if kind == Kind.STUCK:
        return status_text(Status.STUCK, 0, info)
    return ""


#: What a "what if" fork changed at its checkpoint (``info["what_if"]["edited"]``), in words.
WHAT_IF = {"reply": "edited reply", "output": "edited tool output", "model": "another model"}


def what_if_text(what_if: Mapping[str, Any] | None) -> str:
    """The tag of a "what if" fork: "what if: edited reply at checkpoint 7"; "" for any other run."""
    if not what_if:
        return ""
    text = "what if: " + WHAT_IF.get(str(what_if.get("edited")), "edited")
    origin = what_if.get("from")
    if isinstance(origin, list | tuple) and len(origin) == 2:
        text += f" at checkpoint {origin[1]}"
    return text


def duration(seconds: float) -> str:
    """ "45 s", "17 min", "3 h 5 min": how long a run has been quiet."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    hours, minutes = divmod(s // 60, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


# -- derived statuses -------------------------------------------------------------------


def stall_after() -> float:
    """Seconds without a checkpoint after which a live run is reported stalled."""
    try:
        return float(os.environ.get("JUPYTER_AGENT_STALL_AFTER", "900"))
    except ValueError:
        return 900.0


def effective_status(
    status: str, run_id: str, live: Collection[str], last_checkpoint_at: float | None = None
) -> str:
    """The status users see, from the last checkpoint's and the journal's.

    A run whose last checkpoint says running but whose journal has no owner died
    with its kernel: interrupted, resumable. One whose owner lives but has not
    checkpointed for :func:`stall_after` seconds is stalled: its kernel is hung or
    a tool call never returns; interrupting or restarting that kernel frees it.
    """
    if status == Status.RUNNING and run_id not in live:
        return Status.INTERRUPTED
    if (
        status == Status.RUNNING
        and last_checkpoint_at is not None
        and time.time() - last_checkpoint_at > stall_after()
    ):
        return Status.STALLED
    return status


def status_and_text(
    stored: str | None,
    run_id: str,
    live: Collection[str],
    *,
    steps: int,
    info: Mapping[str, Any] | None,
    at: float,
) -> tuple[str, str]:
    """The status users see for a run, and its sentence: the one rule every view follows.

    ``stored`` is the status of the run's last checkpoint (None: it has none yet),
    ``info`` that checkpoint's info, ``at`` its time (the run's creation without
    one), ``steps`` those of the run's history, ``live`` the runs a process executes.
    """
    status = effective_status(stored or Status.RUNNING, run_id, live, at)
    return status, status_text(status, steps, info, idle=time.time() - at)


# -- counting steps ----------------------------------------------------------------------


def count_steps(rows: Iterable[Any]) -> int:
    """The steps among checkpoint rows (anything with a ``kind``, or dicts with one)."""
    return sum(
        1 for r in rows if (r.get("kind") if isinstance(r, Mapping) else r.kind) == Kind.MODEL
    )


def history_steps(
    segments: Iterable[tuple[str, int | None]], model_steps: Mapping[str, list[int]]
) -> int:
    """The steps of a history made of ``(run, up-to-checkpoint)`` segments.

    ``model_steps`` holds, per run, the sorted sequence numbers of its ``model``
    checkpoints: a fork's history counts its parent's steps up to the fork point.
    """
    total = 0
    for run_id, upto in segments:
        seqs = model_steps.get(run_id, [])
        total += len(seqs) if upto is None else bisect_right(seqs, upto)
    return total


#: The token counts of a ledger, each a sum of ``info.usage``'s count of that name.
LEDGER_USAGE = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens")


def ledger(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What a history spent: tokens (the ``tokens`` column); prompt, completion, cached
    and cache-write tokens (usage); saved: what the resumes did not pay again (the
    tokens spent before each one); and ``cost_usd``, dollars with caching counted
    (None when no checkpoint was priced)."""
    out: dict[str, Any] = {"tokens": 0, **dict.fromkeys(LEDGER_USAGE, 0), "saved_tokens": 0}
    out["cost_usd"] = None
    for r in rows:
        out["tokens"] += int(r.get("tokens") or 0)
        info = r.get("info") or {}
        if r.get("kind") == "resume" and isinstance(info.get("saved_tokens"), int):
            out["saved_tokens"] += info["saved_tokens"]
        for key in LEDGER_USAGE:
            out[key] += usage_tokens(info.get("usage"), key)
        out["cost_usd"] = add_cost(out["cost_usd"], info.get("cost_usd"))
    return out


def added(ledger_: Mapping[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
    """Two ledgers (of :func:`ledger`) as one."""
    out = {k: v + more.get(k, 0) for k, v in ledger_.items() if k != "cost_usd"}
    out["cost_usd"] = add_cost(ledger_.get("cost_usd"), more.get("cost_usd"))
    return out


def usage_tokens(usage: object, key: str) -> int:
    """The ``key`` count of a stored usage record; 0 where it is missing or not a number.

    Rows of older releases (and odd endpoints) hold anything there: a bad value must
    count nothing rather than break the fold or a listing that reads it.
    """
    value = usage.get(key) if isinstance(usage, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def add_cost(total: float | None, cost: object) -> float | None:
    """``total`` plus ``cost`` if that is an amount of dollars (None: nothing priced yet)."""
    if isinstance(cost, bool) or not isinstance(cost, int | float):
        return total
    return (total or 0.0) + float(cost)


def cache_hit_rate(prompt_tokens: int, cached_tokens: int) -> float | None:
    """The share of the prompt tokens a provider's cache served; None before any prompt."""
    return round(min(cached_tokens / prompt_tokens, 1.0), 4) if prompt_tokens > 0 else None


def plan_progress(items: Any) -> dict[str, Any] | None:
    """A plan's items and "4/12" progress, from an ``update_plan`` result's ``info["plan"]``."""
    if not isinstance(items, list):
        return None
    clean = [
        {"title": str(i.get("title", "")), "status": str(i.get("status", "pending"))}
        for i in items
        if isinstance(i, Mapping)
    ]
    done = sum(1 for i in clean if i["status"] == "done")
    return {"items": clean, "done": done, "total": len(clean), "text": f"{done}/{len(clean)}"}
