"""The built-in offline model: a deterministic stand-in for a real LLM.

Demos and first-run experiences should work without an API key. The offline
model does not think; it runs the fenced ``python`` code blocks of the task
one tool call at a time and then summarises, so the whole agent loop (tool
calls, streaming, persistence) can be exercised end to end. It is served by
a local :class:`~jupyter_agent.testing.ScriptedServer` under the model name
``"offline"``.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from jupyter_agent.testing.server import ScriptedServer

__all__ = ["OFFLINE_MODEL", "extract_code_blocks", "offline_base_url", "offline_reply"]

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


_lock = threading.Lock()
_server: ScriptedServer | None = None


def offline_base_url() -> str:
    """Base URL of this process's offline model server, started on first use."""
    global _server
    with _lock:
        if _server is None:
            _server = ScriptedServer(script=offline_reply, host="127.0.0.1", port=0).start()
        return _server.url
