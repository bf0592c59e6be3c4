"""The scripted server's Anthropic Messages wire format (``POST /v1/messages``).

Pure, like :mod:`.wire`: a Messages request read as the Chat-Completions-shaped
conversation the script and the turn count understand (:func:`chat_body`), the
error envelope Anthropic sends, its SSE events for a :class:`~.wire.ScriptedReply`
(thinking blocks with a signature when the entry has ``reasoning``), and its
prompt cache (:class:`PromptCache`): a prefix up to an explicit ``cache_control``
breakpoint is written by one request and read by a later one with the same prefix.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..model.offline import pieces
from .wire import ScriptedReply, chat_request

PATH = "/v1/messages"
#: The most ``cache_control`` breakpoints Anthropic accepts; more is a 400.
MAX_BREAKPOINTS = 4
#: Scripted faults as Anthropic sends them: status, error type, message (formatted
#: with the request's fields). ``max_tokens``: more output asked for than the model allows.
ERRORS: dict[str, tuple[int, str, str]] = {
    "max_tokens": (
        400,
        "invalid_request_error",
        "max_tokens: {max_tokens} > 4096, which is the maximum allowed number of output "
        "tokens for {model}",
    ),
    "429": (429, "rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    "500": (500, "api_error", "Internal server error"),
    "503": (503, "api_error", "Service unavailable"),
    "529": (529, "overloaded_error", "Overloaded"),
    "401": (401, "authentication_error", "invalid x-api-key"),
}
#: An ``error`` event inside the stream, per fault.
STREAM_ERRORS = {
    "stream_error": ("overloaded_error", "Overloaded"),
    "stream_error_fatal": ("invalid_request_error", "Output blocked by policy"),
}
#: Anthropic's ``stop_reason`` for each scripted finish.
_STOP = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
}


def error_body(type_: str, message: str) -> dict[str, Any]:
    """Anthropic's error envelope."""
    return {"type": "error", "error": {"type": type_, "message": message}}


def overflow_body(window: int, tokens: int) -> dict[str, Any]:
    """Anthropic's refusal of a prompt longer than the context window."""
    return error_body(
        "invalid_request_error", f"prompt is too long: {tokens} tokens > {window} maximum"
    )


def _text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return ""
    if block.get("type") == "tool_result":
        content = block.get("content")
        return content if isinstance(content, str) else "".join(map(_text, content or []))
    return str(block.get("text") or "")


def chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """The request as a Chat Completions body (messages, tools), the original under ``native``."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        text = system if isinstance(system, str) else "".join(map(_text, system))
        messages.append({"role": "system", "content": text})
    for turn in body.get("messages") or []:
        content = turn.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        if turn.get("role") == "assistant":
            calls = [
                {
                    "id": b.get("id"),
                    "type": "function",
                    "function": {"name": b.get("name"), "arguments": json.dumps(b.get("input"))},
                }
                for b in blocks
                if b.get("type") == "tool_use"
            ]
            text = "".join(_text(b) for b in blocks if b.get("type") == "text")
            messages.append({"role": "assistant", "content": text, "tool_calls": calls or None})
            continue
        for b in blocks:
            if b.get("type") == "tool_result":
                messages.append(
                    {"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": _text(b)}
                )
            else:
                messages.append({"role": "user", "content": _text(b)})
    tools = [(t.get("name"), t.get("input_schema")) for t in body.get("tools") or []]
    return chat_request(body, messages, tools)


def _blocks(body: dict[str, Any]) -> list[Any]:
    """The request's prompt in the order the cache sees it: tools, system, messages."""
    out: list[Any] = list(body.get("tools") or [])
    system = body.get("system")
    out += system if isinstance(system, list) else ([system] if system else [])
    for turn in body.get("messages") or []:
        content = turn.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        out += [{**b, "role": turn.get("role")} for b in blocks]
    return out


def breakpoints_in(body: dict[str, Any]) -> int:
    """How many ``cache_control`` breakpoints the request carries."""
    return sum(1 for b in _blocks(body) if isinstance(b, dict) and "cache_control" in b)


class PromptCache:
    """Anthropic's prompt cache, simulated: which prefixes ending at a breakpoint were written.

    The prompt's tokens are shared out over its blocks by their JSON size. A
    request reads the longest prefix ending at one of its breakpoints that an
    earlier request wrote, and writes the one up to its last breakpoint.
    """

    def __init__(self) -> None:
        self.written: set[str] = set()

    def usage(self, body: dict[str, Any], prompt: int) -> tuple[int, int]:
        """``(read, written)`` tokens of a request whose prompt is ``prompt`` tokens."""
        blocks = _blocks(body)
        marked = [isinstance(b, dict) and "cache_control" in b for b in blocks]
        texts = [
            json.dumps(
                {k: v for k, v in b.items() if k != "cache_control"} if isinstance(b, dict) else b,
                sort_keys=True,
            )
            for b in blocks
        ]
        total = sum(map(len, texts)) or 1
        digest = hashlib.sha256(str(body.get("model")).encode())
        ends: list[tuple[str, int]] = []
        size = 0
        for text, mark in zip(texts, marked, strict=True):
            digest.update(text.encode())
            size += len(text)
            if mark:
                ends.append((digest.hexdigest(), prompt * size // total))
        read = max((tokens for key, tokens in ends if key in self.written), default=0)
        written = 0
        if ends and ends[-1][0] not in self.written:
            written = ends[-1][1] - read
        self.written.update(key for key, _ in ends)
        return read, written


def _event(name: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return name, {"type": name, **payload}


def events(
    reply: ScriptedReply, rid: str, model: str, cached: tuple[int, int], fault: str | None
) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    """The SSE events of ``reply``, and whether the stream ends cleanly (else: dropped).

    Faults: ``drop`` (the first events, then the connection is lost), ``cut``
    (all but the last events, then a clean end of the body without
    ``message_stop``), ``stream_error`` / ``stream_error_fatal`` (an ``error`` event).
    """
    read, written = cached
    prompt = int(reply.usage.get("prompt_tokens") or 0)
    output = int(reply.usage.get("completion_tokens") or 0)
    usage = {
        "input_tokens": max(prompt - read - written, 0),
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": written,
        "output_tokens": 1,
    }
    message = {"id": rid, "type": "message", "role": "assistant", "model": model, "content": []}
    out = [_event("message_start", {"message": {**message, "stop_reason": None, "usage": usage}})]
    index = 0

    def block(start: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        nonlocal index
        out.append(_event("content_block_start", {"index": index, "content_block": start}))
        out.extend(_event("content_block_delta", {"index": index, "delta": d}) for d in deltas)
        out.append(_event("content_block_stop", {"index": index}))
        index += 1

    if reply.reasoning:
        deltas = [{"type": "thinking_delta", "thinking": p} for p in pieces(reply.reasoning)]
        signature = {"type": "signature_delta", "signature": f"sig-{rid}"}
        block({"type": "thinking", "thinking": "", "signature": ""}, [*deltas, signature])
    if reply.content:
        block(
            {"type": "text", "text": ""},
            [{"type": "text_delta", "text": p} for p in pieces(reply.content)],
        )
    for call in reply.tool_calls:
        half = len(call["arguments"]) // 2
        parts = [call["arguments"][:half], call["arguments"][half:]]
        start = {"type": "tool_use", "id": call["id"], "name": call["name"], "input": {}}
        block(start, [{"type": "input_json_delta", "partial_json": p} for p in parts])
    final = {
        "delta": {"stop_reason": _STOP[reply.finish_reason], "stop_sequence": None},
        "usage": {"output_tokens": output},
    }
    out += [_event("message_delta", final), _event("message_stop", {})]
    if fault == "drop":
        return out[:2], False
    if fault == "cut" or fault in STREAM_ERRORS:
        cut = out[: max(2, len(out) - 4)]
        if fault in STREAM_ERRORS:
            cut.append(("error", error_body(*STREAM_ERRORS[fault])))
        return cut, True
    return out, True
