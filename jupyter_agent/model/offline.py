"""The built-in offline model: a deterministic stand-in for a real LLM.

Demos and first-run experiences should work without an API key. The offline
model does not think; it runs the fenced ``python`` code blocks of the task
one tool call at a time and then summarises, so the whole agent loop (tool
calls, streaming, persistence) can be exercised end to end. It runs in
process, behind the :class:`~jupyter_agent.model.base.ModelClient` protocol
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

from ..errors import Cancelled
from .base import Endpoint, Hooks, ModelReply

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["OfflineClient", "extract_code_blocks", "offline_reply"]

#: Tool the offline model calls, with arguments ``{"code": ...}``.
TOOL_NAME = "python"
RESULT_LIMIT = 500

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
_PYTHON_LANGS = {"", "python", "py", "python3", "ipython"}
_RESULTS_SUMMARIZED = re.compile(r"\[(\d+) earlier tool results summarized\]")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# A traceback header, or an "XxxError:" line, at the start of a line (also
# after an escaped newline or a quote, for results serialised as JSON).
_ERROR = re.compile(
    r'(?:^|\\n|")[ \t]*(?:Traceback \(most recent call last\)|[A-Za-z_.]*Error:)', re.MULTILINE
)

HELP_TEXT = """\
This is the offline demo model: a deterministic stand-in, not a real LLM.

It runs the fenced ```python code blocks of your task one tool call at a \
time, in order, and then reports the last result. Your task contained no \
such block, so there is nothing for it to run.

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


def pieces(text: str) -> list[str]:
    """``text`` in about three pieces, as it is streamed: streaming stays visible."""
    if not text:
        return []
    size = max(1, -(-len(text) // 3))
    return [text[i : i + size] for i in range(0, len(text), size)]


def extract_code_blocks(text: str) -> list[str]:
    """Non-empty fenced code blocks tagged python (or untagged), in order."""
    blocks = []
    for match in _FENCE.finditer(text):
        code = match.group(2).rstrip()
        if match.group(1).lower() in _PYTHON_LANGS and code.strip():
            blocks.append(code)
    return blocks


def _looks_like_error(text: str) -> bool:
    return bool(_ERROR.search(_ANSI.sub("", text)))


def offline_reply(request_body: dict[str, Any]) -> dict[str, Any]:
    """Script entry answering a chat request: next code block, or a summary."""
    messages = [m for m in request_body.get("messages") or [] if isinstance(m, dict)]
    task = next((text_of(m.get("content")) for m in messages if m.get("role") == "user"), "")
    blocks = extract_code_blocks(task)
    if not blocks:
        return {"content": HELP_TEXT}
    results = [text_of(m.get("content")) for m in messages if m.get("role") == "tool"]
    # A compacted history says how many tool results it summarized away.
    summarized = sum(
        int(n) for m in messages for n in _RESULTS_SUMMARIZED.findall(text_of(m.get("content")))
    )
    k, n = len(results) + summarized, len(blocks)
    if k < n:
        return {
            "content": f"Step {k + 1} of {n}: running the next code block.",
            "tool_calls": [{"name": TOOL_NAME, "arguments": {"code": blocks[k]}}],
        }
    last = _ANSI.sub("", results[-1]).strip() if results else ""
    if len(last) > RESULT_LIMIT:
        last = last[:RESULT_LIMIT] + "…"
    lines = [f"Done: ran {n} code block(s).", "", "Last result:", last or "(no output)"]
    if results and _looks_like_error(results[-1]):
        lines += ["", "The last block raised an error; see above."]
    return {"content": "\n".join(lines)}


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
        on_sent = hooks.get("on_sent")
        if on_sent is not None:
            on_sent()  # no request to wait for
        if tools:
            answer = offline_reply({"messages": messages})
        else:  # a compaction asks for a summary; the offline model counts results instead
            answer = {"content": "Summary: the work so far is in the notes and results kept."}
        turn = sum(1 for m in messages if m.get("role") == "assistant")
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
