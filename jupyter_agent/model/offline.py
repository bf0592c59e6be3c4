"""The built-in offline model: a deterministic stand-in for a real LLM.

Demos and first-run experiences should work without an API key. The offline
model does not think; it follows its task's script, one tool call at a time,
and then summarises, so the whole agent loop (tool calls, plans, user and MCP
tools, child agents, streaming, persistence) can be exercised end to end. The
script is written in Markdown (docs/offline.md):

* a fenced ``python`` block (or an untagged one) is run with the python tool;
* a ``tool NAME`` block calls the tool NAME (a ``@tool`` function or an MCP
  server's ``SERVER__tool``) with the block's JSON object as its arguments;
* a ``delegate NAME`` block hands the block's text, as its task, to a child
  agent NAME (a longer fence around it may hold the child's own blocks);
* ``## Title`` headings make it write a plan, an item per heading, and mark
  each item done once its section has run; with ``--plan`` it plans first and
  works through the items one at a time, each with a fresh context, as
  :mod:`jupyter_agent.core.plan` drives a real model (without headings: an
  item per block).

It keeps no state: where it is comes from the conversation it is sent (the
tool results so far, counted also when compacted away, and the plan in the
view), so a resumed run goes on where it stopped. It runs in process, behind
the :class:`~jupyter_agent.model.base.ModelClient` protocol
(:class:`OfflineClient`), under the model name ``"offline"``; no server, no socket.

It counts usage in characters / 4 (:func:`counted_usage`); the scripted test
server, which can serve the same model over HTTP, counts with the same functions,
so the numbers are the same whichever way the offline model is reached.
"""

from __future__ import annotations

import json
import re
import threading
from typing import TYPE_CHECKING, Any

from ..core.context import HARNESS_NOTE
from ..core.plan import PLANNER_PROMPT
from ..errors import Cancelled
from .base import Endpoint, Hooks, ModelReply
from .http import announcing, sent
from .offline_task import PYTHON, Action, Script, parse_task

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["OfflineClient", "extract_code_blocks", "offline_reply"]

#: Tool the offline model calls, with arguments ``{"code": ...}``.
TOOL_NAME = PYTHON
RESULT_LIMIT = 500
#: How its reply that writes a plan with ``--plan`` starts: the next reply ends the planning.
PLANNING = "Planning:"

_PLAN_ROW = re.compile(r"^\[(?P<mark>[ x>])\] (?P<n>\d+)\. ", re.MULTILINE)
_RESULTS_SUMMARIZED = re.compile(r"\[(\d+) earlier tool results summarized\]")
_REPLIES_SUMMARIZED = re.compile(r"\[(\d+) earlier model replies summarized\]")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# A traceback header, or an "XxxError:" line, at the start of a line (also
# after an escaped newline or a quote, for results serialised as JSON).
_ERROR = re.compile(
    r'(?:^|\\n|")[ \t]*(?:Traceback \(most recent call last\)|[A-Za-z_.]*Error:)', re.MULTILINE
)

HELP_TEXT = """\
This is the offline demo model: a deterministic stand-in, not a real LLM.

It runs the fenced ```python code blocks of your task one tool call at a \
time, in order, and then reports the last result; ```tool NAME and \
```delegate NAME blocks call a tool or hand a task to a child agent, and \
## headings make it write a plan. Your task contained no such block, so \
there is nothing for it to run.

To use a real model, set OPENAI_API_KEY (and optionally OPENAI_BASE_URL for \
an OpenAI-compatible provider), then pick it with --model NAME."""


def text_of(content: Any) -> str:
    """Text of a message ``content`` that may be a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return ""


def conversation_chars(messages: list[Any]) -> int:
    """Characters of a conversation's texts and tool calls: what usage is counted from."""
    total = 0
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        total += len(text_of(msg.get("content")))
        for call in msg.get("tool_calls") or []:
            if isinstance(call, dict):
                fn = call.get("function") or {}
                total += len(str(fn.get("name", ""))) + len(str(fn.get("arguments", "")))
    return total


def counted_usage(messages: list[Any], reply_chars: int, given: dict | None = None) -> dict:
    """Usage of a reply of ``reply_chars`` characters to ``messages``: characters / 4.

    A reply counts at least one token. ``given`` overrides any count, as it is
    (a script that says what the endpoint reports, odd values included).
    """
    given = given or {}
    prompt = given.get("prompt_tokens", conversation_chars(messages) // 4)
    completion = given.get("completion_tokens", reply_chars // 4 + 1)
    numbers = isinstance(prompt, int) and isinstance(completion, int)
    total = given.get("total_tokens", prompt + completion if numbers else None)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def turn_of(messages: list[Any]) -> int:
    """Model replies so far: assistant messages plus those a compaction summarized.

    It numbers the calls of a reply (``call_<turn>_<i>``), so no two calls of a
    run share an id even where compactions and plan items dropped earlier replies
    from the view: a child agent and an approval are found by their call's id.
    """
    turn = 0
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        if msg.get("role") == "assistant":
            turn += 1
        turn += sum(int(n) for n in _REPLIES_SUMMARIZED.findall(text_of(msg.get("content"))))
    return turn


def pieces(text: str) -> list[str]:
    """``text`` in about three pieces, as it is streamed: streaming stays visible."""
    if not text:
        return []
    size = max(1, -(-len(text) // 3))
    return [text[i : i + size] for i in range(0, len(text), size)]


def extract_code_blocks(text: str) -> list[str]:
    """The code of the task's python blocks, in order."""
    return [a.arguments["code"] for a in parse_task(text).actions if a.name == PYTHON]


def _looks_like_error(text: str) -> bool:
    return bool(_ERROR.search(_ANSI.sub("", text)))


def _call(action: Action) -> dict[str, Any]:
    return {"name": action.name, "arguments": action.arguments}


def _plan_call(items: list[str], done: int) -> dict[str, Any]:
    """An ``update_plan`` call: the first ``done`` items done, the others pending."""
    rows = [{"title": t, "status": "done" if i < done else "pending"} for i, t in enumerate(items)]
    return {"name": "update_plan", "arguments": {"items": rows}}


class _Conversation:
    """What the offline model reads in the messages it is sent: where it is."""

    def __init__(self, messages: list[dict]) -> None:
        self.task = next(
            (text_of(m.get("content")) for m in messages if m.get("role") == "user"), ""
        )
        names = {
            call.get("id"): (call.get("function") or {}).get("name")
            for m in messages
            for call in m.get("tool_calls") or []
            if isinstance(call, dict)
        }
        tool = [m for m in messages if m.get("role") == "tool"]
        # A compacted history says how many tool results it summarized away.
        summarized = sum(
            int(n) for m in messages for n in _RESULTS_SUMMARIZED.findall(text_of(m.get("content")))
        )
        #: Tool results so far: one per tool call the model made.
        self.results = len(tool) + summarized
        #: The results of the script's actions (not of plan updates), oldest first.
        self.outputs = [
            text_of(m.get("content"))
            for m in tool
            if names.get(m.get("tool_call_id")) != "update_plan"
        ]
        notes = [text_of(m.get("content")) for m in messages if m.get("role") == "user"]
        self.planner = HARNESS_NOTE + PLANNER_PROMPT in notes
        plans = [n for n in notes if n.startswith(HARNESS_NOTE) and _PLAN_ROW.search(n)]
        rows = _PLAN_ROW.findall(plans[-1]) if plans else []
        #: The plan item being worked on with ``--plan`` (1-based), from the plan in view.
        self.item = next((int(n) for mark, n in rows if mark == ">"), None)
        #: A plan is written and no item started yet.
        self.fresh_plan = bool(rows) and all(mark == " " for mark, _ in rows)
        last: dict = next((m for m in reversed(messages) if m.get("role") == "assistant"), {})
        self.planned = text_of(last.get("content")).startswith(PLANNING)

    def last_output(self) -> str:
        last = _ANSI.sub("", self.outputs[-1]).strip() if self.outputs else ""
        return last[:RESULT_LIMIT] + "…" if len(last) > RESULT_LIMIT else last


def _summary(script: Script, chat: _Conversation) -> str:
    """The final answer: what was done, and the last result."""
    actions = script.actions
    blocks = sum(1 for a in actions if a.name == PYTHON)
    delegated = sum(1 for a in actions if a.name == "delegate")
    done = [f"ran {blocks} code block(s)"] if blocks or not actions else []
    done += [f"made {n} tool call(s)" for n in [len(actions) - blocks - delegated] if n]
    done += [f"delegated {delegated} task(s)"] if delegated else []
    if script.headed:
        done.append(f"worked through a plan of {len(script.items())} item(s)")
    lines = [
        "Done: " + ", ".join(done) + ".",
        "",
        "Last result:",
        chat.last_output() or "(no output)",
    ]
    if chat.outputs and _looks_like_error(chat.outputs[-1]):
        lines += ["", "The last block raised an error; see above."]
    return "\n".join(lines)


def _step(actions: list[Action], k: int) -> dict[str, Any]:
    action = actions[k]
    return {
        "content": f"Step {k + 1} of {len(actions)}: {action.describe()}.",
        "tool_calls": [_call(action)],
    }


def _planned_reply(script: Script, chat: _Conversation) -> dict[str, Any]:
    """With ``--plan``: write the plan, then work through it an item at a time.

    Each item starts with a fresh context (the plan in view says which);
    the results of the earlier items count from the summary.
    """
    items = script.items()
    titles = [i.title for i in items]
    if chat.planner:
        if chat.results:  # the plan was refused: say why, as a real model would stop
            return {"content": f"The plan could not be written: {chat.last_output()}"}
        return {
            "content": f"{PLANNING} {len(items)} item(s), one per "
            + ("section of the task." if script.headed else "step of the task."),
            "tool_calls": [_plan_call(titles, 0)],
        }
    if chat.item is None:  # the plan is written: end the planning
        return {"content": f"Plan written: {len(items)} item(s); now one at a time."}
    index = min(chat.item, len(items)) - 1
    before = 1 + sum(len(i.actions) for i in items[:index])  # the plan, then earlier items
    k = max(chat.results - before, 0)
    actions = items[index].actions
    if k < len(actions):
        action = actions[k]
        return {
            "content": f"Item {index + 1}, action {k + 1} of {len(actions)}: {action.describe()}.",
            "tool_calls": [_call(action)],
        }
    if index + 1 == len(items):
        return {"content": _summary(script, chat)}
    last = " ".join(chat.last_output().split())[:200]
    return {"content": f"Item {index + 1} done: {titles[index]}. Last result: {last or '(none)'}"}


def offline_reply(request_body: dict[str, Any]) -> dict[str, Any]:
    """Script entry answering a chat request: the next step of the task's script, or a summary."""
    messages = [m for m in request_body.get("messages") or [] if isinstance(m, dict)]
    chat = _Conversation(messages)
    script = parse_task(chat.task)
    if script.error:
        return {"content": script.error}
    if not script.actions:
        return {"content": HELP_TEXT}
    if chat.planner or chat.item is not None or (chat.fresh_plan and chat.planned):
        return _planned_reply(script, chat)
    if not script.headed:
        k = chat.results
        return (
            _step(script.actions, k)
            if k < len(script.actions)
            else {"content": _summary(script, chat)}
        )
    # Headings without --plan: write the plan, run each section, mark it done.
    titles = [s.title for s in script.sections]
    k, r = 0, chat.results
    if r == 0:
        return {
            "content": f"Writing a plan of {len(titles)} item(s).",
            "tool_calls": [_plan_call(titles, 0)],
        }
    r -= 1
    for n, section in enumerate(script.sections):
        if r < len(section.actions):
            return _step(script.actions, k + r)
        r -= len(section.actions)
        k += len(section.actions)
        if r == 0:
            return {
                "content": f"Item {n + 1} of {len(titles)} done: {section.title}.",
                "tool_calls": [_plan_call(titles, n + 1)],
            }
        r -= 1
    return {"content": _summary(script, chat)}


class OfflineClient:
    """The offline model as a model client: :meth:`complete` answers with :func:`offline_reply`."""

    def __init__(self, endpoint: Endpoint, *, cancel: threading.Event | None = None) -> None:
        self.endpoint = endpoint
        self.cancel = cancel or threading.Event()

    def complete(
        self, messages: list[dict], tools: list[dict], **hooks: Unpack[Hooks]
    ) -> ModelReply:
        """The offline model's next step, streamed to ``on_text`` in pieces like a server's."""
        if self.cancel.is_set():
            raise Cancelled()
        with announcing(hooks.get("on_sent")):
            sent()  # no request to wait for: it is as good as sent
        if tools:
            answer = offline_reply({"messages": messages})
        else:  # a compaction asks for a summary; the offline model counts results instead
            answer = {"content": "Summary: the work so far is in the notes and results kept."}
        turn = turn_of(messages)
        calls = [
            {
                "id": f"call_{turn}_{i}",
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
            }
            for i, c in enumerate(answer.get("tool_calls") or [])
        ]
        content = answer["content"]
        on_text = hooks.get("on_text")
        if on_text is not None:
            for piece in pieces(content):
                on_text(piece)
        usage = counted_usage(
            messages, conversation_chars([{"content": content, "tool_calls": calls}])
        )
        return ModelReply(content, calls, usage, finish_reason="tool_calls" if calls else "stop")

    def close(self) -> None:
        """Nothing to close: no connection was opened."""
