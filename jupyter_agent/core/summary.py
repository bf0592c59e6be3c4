"""The summary a compaction writes: the request asking the model for it, and the text
that stands for the compacted steps in the model's view.

:mod:`.context` decides a summary compaction (the steps before a cut point go); this
module words it. The summarizer is shown the previous summary, a transcript of the
steps (each message clipped to its start and end) and the notebook's variables, all
within a share of the window; its answer enters the view under a head that counts
what it stands for, which :func:`summary_text` takes off again (a replay answers a
summarization with the model's own words).

Pure, as :mod:`.context` is.
"""

from __future__ import annotations

import json
import re

#: Share of the window the summarizer may read of the history it summarizes.
SUMMARIZER_INPUT = 0.6
#: Per-message text the summarizer sees (the tool output's start and end).
SUMMARIZER_CLIP = 2_000
#: First words of a summarization request (the scripted test server knows them).
SUMMARIZER_PROMPT = (
    "You are compacting an agent's working context. The agent works in a Jupyter notebook "
    "with a python tool; its history is below. Write a concise summary that lets the agent "
    "continue without the history: what was done, what was learnt (facts, numbers, errors "
    "and their fixes), which notebook variables hold what, and what is left to do. Keep "
    "names, paths and values exact. Plain text, at most 400 words."
)
_SUMMARY_HEAD = (
    "Summary of the earlier work (the full history is kept in the store) "
    "[{replies} earlier model replies summarized] [{results} earlier tool results summarized]:\n"
)
_MARKERS = re.compile(r"\[\d+ earlier (?:model replies|tool results) summarized\]")


def summarizer_request(
    messages: list[dict],
    start: int,
    end: int,
    previous: str,
    variables: dict[str, str],
    window: int,
) -> list[dict]:
    """The request asking the model for a summary of ``messages[start:end]``."""
    parts: list[str] = []
    if previous:
        parts.append("Summary of what came before:\n" + _MARKERS.sub("", previous).strip())
    for msg in messages[start:end]:
        parts.append(_transcript_line(msg))
    if variables:
        parts.append(
            "Notebook variables now:\n" + "\n".join(f"- {k}: {v}" for k, v in variables.items())
        )
    text = "\n\n".join(parts)
    limit = int(window * SUMMARIZER_INPUT * 4)  # characters
    if len(text) > limit:  # keep the start (the previous summary) and the newest part
        text = (
            text[: limit // 3]
            + "\n\n…[middle of the history omitted]…\n\n"
            + text[-2 * limit // 3 :]
        )
    task = messages[1].get("content") if len(messages) > 1 else ""
    return [
        {"role": "system", "content": SUMMARIZER_PROMPT},
        {"role": "user", "content": f"The agent's task:\n{task}\n\nIts history:\n\n{text}"},
    ]


def _clip(text: str) -> str:
    if len(text) <= SUMMARIZER_CLIP:
        return text
    half = SUMMARIZER_CLIP // 2
    return text[:half] + f"\n…[{len(text) - SUMMARIZER_CLIP} characters]…\n" + text[-half:]


def _transcript_line(msg: dict) -> str:
    role = msg.get("role")
    content = msg["content"] if isinstance(msg.get("content"), str) else ""
    if role == "assistant":
        out = f"assistant: {_clip(content)}" if content else "assistant:"
        for call in msg.get("tool_calls") or []:
            fn = call.get("function") or {}
            args = fn.get("arguments") or ""
            try:
                code = json.loads(args).get("code", args)
            except (ValueError, AttributeError):
                code = args
            out += f"\n  called {fn.get('name')}: {_clip(str(code))}"
        return out
    return f"{role}: {_clip(content)}"


def summary_message(summary: str, replies: int, results: int) -> str:
    """The text that stands for the compacted steps in the model's view."""
    return _SUMMARY_HEAD.format(replies=replies, results=results) + summary.strip()


def summary_text(message: str, replies: int, results: int) -> str:
    """The model's own summary inside a :func:`summary_message` (what a replay answers with)."""
    head = _SUMMARY_HEAD.format(replies=replies, results=results)
    return message[len(head) :] if message.startswith(head) else message
