"""What the model is sent: a bounded view of a run's history.

A run's history only grows (the store keeps every message for the timeline,
``%agent show``, forks and time travel), but a model's context window does not.
So the model is sent a *view*: the system prompt and the task, then, once the
history has been compacted, the user's own instructions from the compacted
part (pinned) and a summary of the earlier work, then the latest steps, and
last the plan. Between compactions the view is only appended to, so a
provider's prompt cache (OpenAI's automatic one, or Anthropic's breakpoints)
serves all of the previous request again: compactions come in batches, at
:data:`COMPACT_AT` of the window down to :data:`COMPACT_TO`, never on a step
whose request fits.

A compaction is a checkpoint of its own (kind ``compaction``) whose delta holds
the new view's description, so the view is durable state: a resume after a
kill neither summarizes again nor sends what was compacted away. Cheap first:

1. **trim**: old tool outputs are replaced by a stub saying what was dropped;
   the latest :data:`KEEP_RESULTS` stay whole;
2. **summary**: the steps before a cut point are replaced by a summary the
   model writes (what was done, what was learnt, which variables hold what,
   what is left), folded together with the previous summary; how it is asked
   for and what stands for it in the view is :mod:`.summary`.

Token counts come from the endpoint's ``usage`` where it reports one; in
between they are estimated (:func:`estimate_tokens`: four characters a token
plus a few tokens a message, scaled by what the endpoint last reported).

This module is pure: it decides, the agent loop calls the model and writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: Context windows of well-known models, in tokens (prefix match, longest first).
#: Anything else gets :data:`DEFAULT_WINDOW` until the endpoint says otherwise.
KNOWN_WINDOWS: dict[str, int] = {
    "gpt-5": 400_000,
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "claude": 200_000,
    "gemini": 1_000_000,
    "deepseek": 128_000,
    "llama3.1": 128_000,
    "llama3.2": 128_000,
    "llama3": 8_192,
    "qwen2.5": 32_768,
    "qwen3": 32_768,
    "mistral": 32_768,
    "offline": 16_000,
}
DEFAULT_WINDOW = 32_768
#: Smallest window accepted from the user: below it not even one step fits.
MIN_WINDOW = 1_024
#: Compact when the estimated request passes this share of the window…
COMPACT_AT = 0.75
#: …down to this share, so a compaction is followed by many steps without one.
COMPACT_TO = 0.5
#: Tool outputs kept whole when older ones are trimmed.
KEEP_RESULTS = 4
#: Tool outputs shorter than this are never trimmed (the stub would be as long).
STUB_MIN = 240
HARNESS_NOTE = "(jupyter-agent) "


def default_window(model: str) -> int:
    """The context window of ``model`` from :data:`KNOWN_WINDOWS`, else the default."""
    name = model.lower().rsplit("/", 1)[-1]  # "openai/gpt-4o" → "gpt-4o"
    for prefix in sorted(KNOWN_WINDOWS, key=len, reverse=True):
        if name.startswith(prefix):
            return KNOWN_WINDOWS[prefix]
    return DEFAULT_WINDOW


# -- token estimates -------------------------------------------------------------


def message_chars(msg: dict) -> int:
    content = msg.get("content")
    n = len(content) if isinstance(content, str) else len(json.dumps(content or ""))
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        n += len(fn.get("name") or "") + len(fn.get("arguments") or "") + 20
    return n


class Sizes:
    """Measured sizes and stubs, remembered: a model reply or tool result never changes
    once it is in the history, so each is measured (and stubbed) once, not every step.

    Only assistant and tool messages are remembered; the view's own user messages
    (summary, plan) are made anew each step and cost a ``len``. What the last two
    views did not use (messages compacted away) is forgotten: a long run's
    memory does not grow with its history.
    """

    def __init__(self) -> None:
        self._chars: dict[int, tuple[dict, int]] = {}
        self._stubs: dict[int, tuple[dict, dict]] = {}
        self._older: tuple[dict, dict] = ({}, {})  # the previous view's, until used again
        self._tools: tuple[object, int] = (None, 0)
        self._pinned: tuple[object, int, int, list[dict]] = (None, 0, 0, [])
        #: (history, (upto, trim_before), messages counted, their characters)
        self._tail: tuple[object, tuple[int, int], int, int] = (None, (0, 0), 0, 0)
        #: (history, (upto, trim_before), its last message looked at, the view's latest
        #: steps as sent: see :meth:`body`)
        self._body: tuple[object, tuple[int, int], object, list[dict]] = (None, (0, 0), None, [])

    def turn(self) -> None:
        """A new view is being built: drop what the previous one did not use."""
        self._older = (self._chars, self._stubs)
        self._chars, self._stubs = {}, {}

    @staticmethod
    def _hit(cache: dict, older: dict, msg: dict) -> Any:
        hit = cache.get(id(msg))
        if hit is None and (hit := older.pop(id(msg), None)) is not None:
            cache[id(msg)] = hit
        return hit[1] if hit is not None and hit[0] is msg else None

    def chars(self, msg: dict) -> int:
        if msg.get("role") not in ("assistant", "tool"):
            return message_chars(msg)
        n = self._hit(self._chars, self._older[0], msg)
        if n is None:
            n = message_chars(msg)
            self._chars[id(msg)] = (msg, n)
        return n

    def stub(self, msg: dict) -> dict:
        short = self._hit(self._stubs, self._older[1], msg)
        if short is None:
            short = stub(msg) if msg.get("role") == "tool" else short_plan_calls(msg)
            self._stubs[id(msg)] = (msg, short)
        return short

    def shown(self, msg: dict, trimmed: bool) -> dict:
        """A message of the view's latest steps as sent: a tool result's output
        stubbed if ``trimmed``, a reply's long plan arguments always (see
        :func:`short_plan_calls`)."""
        role = msg.get("role")
        if (role == "tool" and trimmed) or (role == "assistant" and msg.get("tool_calls")):
            return self.stub(msg)
        return msg

    def pinned(self, messages: list[dict], start: int, end: int) -> list[dict]:
        """The pinned messages of ``messages[start:end]``, found once per compaction.

        The history only grows, so the same range of the same list holds the
        same messages.
        """
        held, was_start, was_end, found = self._pinned
        if held is not messages or (was_start, was_end) != (start, end):
            found = [m for m in messages[start:end] if is_pinned(m)]
            self._pinned = (messages, start, end, found)
        return found

    def tail(self, messages: list[dict], upto: int, trim_before: int) -> tuple[int, int]:
        """Characters and count of the view's latest steps, ``messages[upto:]`` (old
        tool outputs stubbed): only messages added since the last call are measured."""
        held, bounds, counted, chars = self._tail
        if held is not messages or bounds != (upto, trim_before) or counted > len(messages):
            counted, chars = upto, 0
        for i in range(max(counted, upto), len(messages)):
            chars += self.chars(self.shown(messages[i], i < trim_before))
        self._tail = (messages, (upto, trim_before), len(messages), chars)
        return chars, max(len(messages) - upto, 0)

    def body(self, messages: list[dict], upto: int, trim_before: int) -> list[dict]:
        """The view's latest steps as sent, ``messages[upto:]`` (old tool outputs stubbed):
        kept from the last view, only the messages added since are looked at, so a
        step's view costs the same however many steps it shows. Made anew when the
        compaction moves its bounds, or the history is another list (a resumed state)
        or no longer ends in the message the last view ended in where it did.
        Callers copy it (the view is built around it), never change it.
        """
        held, bounds, last, shown = self._body
        end = upto + len(shown)
        if (
            held is not messages
            or bounds != (upto, trim_before)
            or end > len(messages)
            or (shown and messages[end - 1] is not last)
        ):
            shown, end = [], upto
        for i in range(end, len(messages)):
            shown.append(self.shown(messages[i], i < trim_before))
        last = messages[-1] if len(messages) > upto else None
        self._body = (messages, (upto, trim_before), last, shown)
        return shown

    def tools(self, tools: list | None) -> int:
        if not tools:
            return 0
        if self._tools[0] is not tools:
            self._tools = (tools, len(json.dumps(tools)))
        return self._tools[1]


def estimate_tokens(
    messages: list[dict], ratio: float = 1.0, tools: list | None = None, sizes: Sizes | None = None
) -> int:
    """Tokens of a request: four characters a token and four a message, times ``ratio``.

    ``ratio`` is what the endpoint's last reported ``prompt_tokens`` was to this
    estimate of the same request; it adapts the estimate to the model's tokenizer.
    The tool schemas count too: they are part of every request.
    """
    sizes = sizes or Sizes()
    chars = sum(sizes.chars(m) for m in messages)
    return _tokens(chars, len(messages), ratio, sizes.tools(tools))


def _tokens(chars: int, count: int, ratio: float, tool_chars: int) -> int:
    return int(((chars + tool_chars) / 4 + 4 * count) * ratio)


# -- the view --------------------------------------------------------------------


def is_note(msg: dict) -> bool:
    """A user message the harness wrote (item instructions, stuck notes): not pinned."""
    content = msg.get("content")
    return isinstance(content, str) and content.startswith(HARNESS_NOTE)


def is_pinned(msg: dict) -> bool:
    """A message the view keeps however much is compacted: the user's own instructions."""
    return msg.get("role") == "user" and not is_note(msg)


def stub(msg: dict) -> dict:
    """A tool result with its output replaced by a line saying what was dropped."""
    text = msg.get("content") or ""
    if not isinstance(text, str) or len(text) < STUB_MIN:
        return msg
    lines = text.strip().splitlines()
    first = lines[0][:120] if lines else ""
    last = lines[-1][:120] if len(lines) > 1 else ""
    note = f"[output trimmed to save context: {len(text):,} characters, {len(lines)} lines"
    note += f"; first line: {first!r}" + (f"; last line: {last!r}" if last else "") + "]"
    return {**msg, "content": note}


#: ``update_plan`` arguments longer than this are not sent back in the model's
#: view: the plan they wrote is shown there already (or they were refused).
PLAN_ARGS_KEPT = 400


def short_plan_calls(msg: dict) -> dict:
    """An assistant message with its long ``update_plan`` arguments replaced by a note.

    A plan is in every request as the current plan; its call's arguments
    repeated as well would count it twice, and an oversized plan, refused,
    would stay in every request after it.
    """
    calls = msg.get("tool_calls") or []
    if not any(_long_plan_call(c) for c in calls):
        return msg
    note = "(not repeated here: the current plan is shown above, or the call was refused)"
    return {
        **msg,
        "tool_calls": [
            {**c, "function": {"name": "update_plan", "arguments": json.dumps({"items": note})}}
            if _long_plan_call(c)
            else c
            for c in calls
        ],
    }


def _long_plan_call(call: dict) -> bool:
    fn = call.get("function") or {}
    args = fn.get("arguments")
    return fn.get("name") == "update_plan" and isinstance(args, str) and len(args) > PLAN_ARGS_KEPT


def plan_text(plan: list[dict]) -> str:
    """The plan as the model reads it; an item may carry its number (``n``), and an
    ``elided`` entry stands for items left out (see :func:`..plan.in_view`)."""
    marks = {"done": "x", "in_progress": ">", "pending": " "}
    rows = [
        f"… {i['elided']}"
        if "elided" in i
        else f"[{marks.get(str(i.get('status')), ' ')}] {i.get('n', n)}. {i.get('title')}"
        for n, i in enumerate(plan, 1)
    ]
    return "Current plan (keep it current with update_plan):\n" + "\n".join(rows)


def _view_head(messages: list[dict], compaction: dict, sizes: Sizes) -> tuple[list[dict], int, int]:
    """The view's messages before the latest steps, where those start, where trimming ends.

    In the order that changes least often, so that a provider's prompt cache
    serves as much of each request as it can: the system prompt and the task
    (never), the pinned instructions (only when a summary takes in a new one),
    the summary (at a summary compaction). The steps after them are only
    appended to between compactions.
    """
    head = messages[:2]  # the system prompt and the task
    upto = max(int(compaction.get("upto") or 0), len(head))
    view = list(head)
    if compaction.get("summary"):
        view += sizes.pinned(messages, len(head), upto)
        view.append({"role": "user", "content": compaction["summary"]})
    return view, upto, int(compaction.get("trim_before") or 0)


def _plan_note(plan: list[dict]) -> list[dict]:
    """The plan, sent after the latest steps: it changes as the work goes, so anywhere
    earlier each change would make the rest of the request new to the prompt cache."""
    return [{"role": "user", "content": HARNESS_NOTE + plan_text(plan)}] if plan else []


def model_view(
    messages: list[dict], compaction: dict, plan: list[dict], sizes: Sizes | None = None
) -> list[dict]:
    """The messages sent to the model for a history and its latest compaction."""
    if sizes is not None:
        sizes.turn()
    sizes = sizes or Sizes()
    view, upto, trim_before = _view_head(messages, compaction, sizes)
    return view + sizes.body(messages, upto, trim_before) + _plan_note(plan)


def view_tokens(
    messages: list[dict],
    compaction: dict,
    plan: list[dict],
    ratio: float = 1.0,
    tools: list | None = None,
    sizes: Sizes | None = None,
    extra: list[dict] | None = None,
) -> int:
    """``estimate_tokens(model_view(...) + extra)``, without building the view.

    The latest steps' characters are added up as they come (:meth:`Sizes.tail`),
    so a step's estimate costs the same however long the view is.
    """
    sizes = sizes or Sizes()
    head, upto, trim_before = _view_head(messages, compaction, sizes)
    head += _plan_note(plan) + (extra or [])
    chars, count = sizes.tail(messages, upto, trim_before)
    chars += sum(sizes.chars(m) for m in head)
    return _tokens(chars, count + len(head), ratio, sizes.tools(tools))


# -- deciding a compaction ---------------------------------------------------------


@dataclass
class Decision:
    """What to compact: a trim (``summarize`` is None) or a summary of a range."""

    compaction: dict
    #: Messages ``[start, end)`` to fold into the summary, or None for a trim.
    summarize: tuple[int, int] | None = None


def _tool_indices(messages: list[dict], start: int) -> list[int]:
    return [i for i in range(start, len(messages)) if messages[i].get("role") == "tool"]


def step_starts(messages: list[dict], start: int) -> list[int]:
    """Indices where a step begins (an assistant message): safe places to cut."""
    return [i for i in range(start, len(messages)) if messages[i].get("role") == "assistant"]


def decide(
    messages: list[dict],
    compaction: dict,
    plan: list[dict],
    window: int,
    ratio: float = 1.0,
    *,
    tools: list | None = None,
    force: bool = False,
    sizes: Sizes | None = None,
) -> Decision | None:
    """How to bring the view under :data:`COMPACT_TO` of ``window``, or None if it fits.

    ``force`` (the endpoint refused the request as too long) compacts even when
    the estimate says the view fits, and prefers a summary.
    """
    sizes = sizes or Sizes()
    tokens = view_tokens(messages, compaction, plan, ratio, tools, sizes)
    if not force and tokens <= window * COMPACT_AT:
        return None
    target = window * COMPACT_TO
    upto = max(int(compaction.get("upto") or 0), 2)
    results_at = _tool_indices(messages, upto)
    keep = results_at[-KEEP_RESULTS:]
    trim_before = (
        keep[0] if len(results_at) > KEEP_RESULTS else int(compaction.get("trim_before") or 0)
    )
    trimmed = {**compaction, "strategy": "trim", "trim_before": trim_before}
    trimmed_tokens = view_tokens(messages, trimmed, plan, ratio, tools, sizes)
    if (
        not force
        and trimmed_tokens <= target
        and trim_before > int(compaction.get("trim_before") or 0)
    ):
        return Decision(trimmed)
    # Summarize: keep the newest steps that fit in a quarter of the window whole.
    starts = step_starts(messages, upto)
    if len(starts) < 2:
        return Decision(trimmed) if trim_before > int(compaction.get("trim_before") or 0) else None
    budget = window * (1 - COMPACT_TO) / 2
    cut = starts[-1]
    tail = estimate_tokens(messages[cut:], ratio, sizes=sizes)
    for i, j in zip(reversed(starts[1:-1]), reversed(starts[2:]), strict=True):
        tail += estimate_tokens(messages[i:j], ratio, sizes=sizes)  # grows a step at a time
        if tail > budget:
            break
        cut = i
    replies = int(compaction.get("replies") or 0) + sum(
        1 for m in messages[upto:cut] if m.get("role") == "assistant"
    )
    results = int(compaction.get("results") or 0) + sum(
        1 for m in messages[upto:cut] if m.get("role") == "tool"
    )
    summary = {
        "strategy": "summary",
        "upto": cut,
        "trim_before": max(trim_before, cut),
        "replies": replies,
        "results": results,
        "summary": compaction.get("summary") or "",
    }
    return Decision(summary, summarize=(upto, cut))
