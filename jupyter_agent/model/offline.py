"""The built-in offline model: a deterministic stand-in for a real LLM.

Demos and first-run experiences should work without an API key. The offline
model does not think; it runs the fenced ``python`` code blocks of the task
one tool call at a time and then summarises, so the whole agent loop (tool
calls, streaming, persistence) can be exercised end to end. It runs in
process, behind the same small protocol as :class:`~jupyter_agent.model.chat.ModelClient`
(:class:`OfflineClient`), under the model name ``"offline"``; no server, no socket.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["OFFLINE_MODEL", "OfflineClient", "extract_code_blocks", "offline_reply"]

OFFLINE_MODEL = "offline"
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


def _text_of(content: Any) -> str:
    """Text of a message ``content`` that may be a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


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
    task = next((_text_of(m.get("content")) for m in messages if m.get("role") == "user"), "")
    blocks = extract_code_blocks(task)
    if not blocks:
        return {"content": HELP_TEXT}
    results = [_text_of(m.get("content")) for m in messages if m.get("role") == "tool"]
    # A compacted history says how many tool results it summarized away.
    summarized = sum(
        int(n) for m in messages for n in _RESULTS_SUMMARIZED.findall(_text_of(m.get("content")))
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


def _chars(messages: list[dict]) -> int:
    """Characters of a conversation: what the offline model's token counts are made of."""
    total = 0
    for msg in messages:
        total += len(_text_of(msg.get("content")))
        for call in msg.get("tool_calls") or []:
            fn = call.get("function") or {}
            total += len(str(fn.get("name") or "")) + len(str(fn.get("arguments") or ""))
    return total


class OfflineClient:
    """The offline model as a model client: :meth:`complete` answers with :func:`offline_reply`.

    Usage is counted like the scripted test server counts it (characters / 4),
    so the numbers are the same whichever way the offline model is reached.
    """

    def __init__(self, endpoint: Any, *, cancel: threading.Event | None = None) -> None:
        self.endpoint = endpoint
        self.cancel = cancel or threading.Event()

    def complete(
        self,
        messages: list[dict],
        tools: list[dict],
        on_text: Callable[[str], None] = lambda _: None,
        on_retry: Callable[[str], None] = lambda _: None,
        on_reasoning: Callable[[str], None] | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> Any:
        from ..errors import Cancelled
        from .chat import ModelReply

        if self.cancel.is_set():
            raise Cancelled()
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
        size = max(1, -(-len(content) // 3))
        for start in range(0, len(content), size):  # streamed in pieces, like a server
            on_text(content[start : start + size])
        completion = (len(content) + _chars([{"tool_calls": calls}])) // 4 + 1
        prompt = _chars(messages) // 4
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return ModelReply(content, calls, usage, finish_reason="tool_calls" if calls else "stop")

    def close(self) -> None:
        """Nothing to close: no connection was opened."""
