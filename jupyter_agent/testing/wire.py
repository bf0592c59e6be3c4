"""The wire format of the scripted server: what it answers, byte for byte, to a chat request.

Everything here is pure (no sockets), so the reply to a request is a function
of the request and the script entry: the turn (:func:`turn_of`), the usage
(counted as the offline model counts it), the error bodies OpenAI sends, and
the completion or stream chunks of a :class:`ScriptedReply`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from ..model.offline import conversation_chars, counted_usage, pieces, text_of
from ..model.offline import turn_of as turn_of  # the turn is counted where the model is

Script = list[dict[str, Any]] | Callable[[dict[str, Any]], dict[str, Any]] | None

#: Fault kinds understood in a script entry's ``"faults"`` list:
#: HTTP errors (``429``, ``500``, ``503``, ``529`` as Anthropic says overloaded; ``401`` echoing the key like OpenAI does;
#: ``proxy_400``, a LiteLLM-style error pasted over several lines), ``timeout``,
#: ``drop`` (connection lost mid-stream), ``cut`` (the stream ends cleanly but
#: early: no ``finish_reason``, no ``[DONE]``), ``cut_stop`` (the same half reply,
#: then ``finish_reason: "stop"`` and ``[DONE]``, as a proxy whose upstream was cut
#: sends it), ``length`` (half the reply, with
#: ``finish_reason: "length"``; ``content_filter`` likewise), ``stream_error`` / ``stream_error_fatal`` (an
#: ``error`` event inside the stream, transient / permanent), ``endless`` (text
#: that never stops), ``malformed`` and ``empty``; on ``/v1/messages`` also ``max_tokens``
#: (Anthropic's refusal of more output than the model allows).
FAULT_KINDS = (
    "429",
    "500",
    "503",
    "529",
    "max_tokens",
    "401",
    "proxy_400",
    "timeout",
    "drop",
    "cut",
    "cut_stop",
    "length",
    "content_filter",
    "stream_error",
    "stream_error_fatal",
    "endless",
    "malformed",
    "empty",
)
#: Entry keys beyond content/tool_calls/usage/faults/delay/fault_delay:
#: ``reasoning`` (text streamed first as ``reasoning_content`` deltas, or under the
#: name in ``reasoning_field``, e.g. ``"reasoning"`` as OpenRouter and Ollama send it)
#: and ``tool_call_index``: ``"omit"`` (fragments without ``index``) or ``"same"``
#: (every call at index 0), as some servers stream parallel tool calls.
#: Model ids listed by ``GET /v1/models``.
MODEL_IDS = ("scripted", "offline")
#: Fixed ``created`` timestamp so replies are byte-for-byte reproducible.
CREATED = 1_700_000_000
EXHAUSTED = "(script exhausted)"
CHAT_PATH = "/v1/chat/completions"
#: How a compaction (summarization) request's system message begins.
SUMMARY_PROMPT_PREFIX = "You are compacting an agent's working context"
_SUMMARY_RAN = 20  # tool calls listed in a summary, the latest ones
#: The ``index`` of streamed tool-call fragments, by the entry's ``tool_call_index``.
_INDEX_MODES: dict[str, dict[str, int]] = {"omit": {}, "same": {"index": 0}}

ERRORS: dict[str, tuple[int, str, str, str]] = {
    "429": (429, "Rate limit reached (scripted fault).", "requests", "rate_limit_exceeded"),
    "500": (500, "The server had an error (scripted fault).", "server_error", "server_error"),
    "503": (503, "The server is overloaded (scripted fault).", "server_error", "overloaded"),
    "529": (529, "Overloaded (scripted fault).", "overloaded_error", "overloaded"),
    "401": (
        401,
        "Incorrect API key provided: {key}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    "proxy_400": (
        400,
        "litellm.BadRequestError: OpenAIException - Error code: 400 - {{'error': {{'message': "
        "\"Unrecognized request argument supplied: frobnicate\", 'type': "
        "'invalid_request_error', 'param': None, 'code': None}}}}\n"
        "Received Model Group=scripted\nAvailable Model Group Fallbacks=None\n"
        + 'Traceback (most recent call last):\n  File "litellm/main.py", line 1\n'
        * 20,
        "None",
        "400",
    ),
}
#: Error events sent inside a stream (LiteLLM and OpenAI do during incidents).
STREAM_ERRORS: dict[str, dict[str, Any]] = {
    "stream_error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    },
    "stream_error_fatal": {
        "message": "The response was filtered due to the prompt triggering the content "
        "management policy.",
        "type": "invalid_request_error",
        "param": "prompt",
        "code": "content_filter",
    },
}


def error_body(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    """OpenAI-style error envelope, so clients map it to the right exception."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def context_length_error(window: int, tokens: int) -> dict[str, Any]:
    """OpenAI's refusal of a prompt of ``tokens`` over a window of ``window``."""
    message = (
        f"This model's maximum context length is {window} tokens. However, your "
        f"messages resulted in {tokens} tokens. Please reduce the length of the messages."
    )
    error = error_body(message, "invalid_request_error", "context_length_exceeded")
    error["error"]["param"] = "messages"
    return error


def unknown_argument_error(name: str) -> dict[str, Any]:
    """An older server's refusal of a request argument it does not know."""
    message = f"Unrecognized request argument supplied: {name}"
    error = error_body(message, "invalid_request_error")
    error["error"]["param"] = name
    return error


def models() -> dict[str, Any]:
    """The answer to ``GET /v1/models``."""
    data = [
        {"id": m, "object": "model", "created": CREATED, "owned_by": "jupyter-agent"}
        for m in MODEL_IDS
    ]
    return {"object": "list", "data": data}


def prompt_tokens(messages: list[Any], tools: Any = None) -> int:
    """Deterministic prompt size estimate the context window is checked against."""
    tool_chars = len(json.dumps(tools)) if tools else 0
    return (conversation_chars(messages) + tool_chars) // 4


#: OpenAI's automatic prompt cache: a prompt's prefix shared with an earlier
#: request is served from the cache once it is this many tokens long…
CACHE_MIN_TOKENS = 1_024
#: …in blocks of this many tokens (the rest of the prompt is read afresh).
CACHE_BLOCK_TOKENS = 128
#: Earlier requests the simulated cache remembers (OpenAI keeps prefixes for minutes).
CACHE_REQUESTS = 32


def _cache_piece(msg: Any) -> tuple[str, str, str]:
    """A message as the cache compares it: role, text, tool calls (their characters count)."""
    if not isinstance(msg, dict):
        return ("", "", "")
    calls = "".join(
        str((c.get("function") or {}).get("name", ""))
        + str((c.get("function") or {}).get("arguments", ""))
        for c in msg.get("tool_calls") or []
        if isinstance(c, dict)
    )
    return (str(msg.get("role")), text_of(msg.get("content")), calls)


def _common_chars(a: list[tuple[str, str, str]], b: list[tuple[str, str, str]]) -> int:
    """Characters (as :func:`conversation_chars` counts them) of ``a`` and ``b``'s common prefix."""
    chars = 0
    for x, y in zip(a, b, strict=False):
        if x == y:
            chars += len(x[1]) + len(x[2])
            continue
        if x[0] == y[0]:  # the same message's start: its common text, then no further
            n, limit = 0, min(len(x[1]), len(y[1]))
            while n < limit and x[1][n] == y[1][n]:
                n += 1
            chars += n
        break
    return chars


class PromptCache:
    """OpenAI's automatic prompt caching, simulated: what a request reads from the cache.

    A request's cached tokens are its longest common prefix with one of the
    :data:`CACHE_REQUESTS` earlier requests (the same tools first, then the
    messages in order), counted as the server counts prompt tokens (four
    characters a token), in :data:`CACHE_BLOCK_TOKENS` blocks once at least
    :data:`CACHE_MIN_TOKENS`. Deterministic: the same requests in the same order
    are served the same counts. Not thread-safe; the server calls it under its lock.
    """

    def __init__(self) -> None:
        self._earlier: deque[tuple[str, list[tuple[str, str, str]]]] = deque(maxlen=CACHE_REQUESTS)

    def read(self, messages: list[Any], tools: Any, prompt: int) -> int:
        """The cached tokens of this request (at most ``prompt``), which is then remembered."""
        key = json.dumps(tools, sort_keys=True) if tools else ""
        pieces = [_cache_piece(m) for m in messages]
        chars = max(
            (
                _common_chars(pieces, seen)
                for tools_seen, seen in self._earlier
                if tools_seen == key
            ),
            default=0,
        )
        self._earlier.append((key, pieces))
        tokens = chars // 4
        if tokens < CACHE_MIN_TOKENS:
            return 0
        cached = tokens // CACHE_BLOCK_TOKENS * CACHE_BLOCK_TOKENS
        return max(min(cached, prompt), 0)

    def clear(self) -> None:
        """Forget every earlier request (a cache that expired)."""
        self._earlier.clear()


def chat_request(
    native: dict[str, Any], messages: list[dict[str, Any]], tools: list[tuple[Any, Any]]
) -> dict[str, Any]:
    """A native API's request as the Chat Completions body the script and turn count read.

    ``tools`` are ``(name, parameters)`` pairs; the original body is kept under ``native``.
    """
    specs = [{"type": "function", "function": {"name": n, "parameters": p}} for n, p in tools]
    return {
        "model": native.get("model"),
        "messages": messages,
        "tools": specs or None,
        "stream": bool(native.get("stream")),
        "native": native,
    }


def is_summary_request(body: dict[str, Any]) -> bool:
    """A compaction request: no tools, and a first system message with the known opening."""
    messages = body.get("messages") or []
    if body.get("tools") or not messages or not isinstance(messages[0], dict):
        return False
    first = messages[0]
    return first.get("role") == "system" and text_of(first.get("content")).startswith(
        SUMMARY_PROMPT_PREFIX
    )


def _first_line(text: str, limit: int | None = None) -> str:
    line = text.strip().split("\n", 1)[0].strip() if text.strip() else ""
    return line[:limit] if limit else line


def summary_text(messages: list[Any]) -> str:
    """The deterministic answer to a compaction request: the code run and the last result."""
    ran: list[str] = []
    last_result = "(none)"
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        if msg.get("role") == "tool":
            last_result = _first_line(text_of(msg.get("content"))) or "(no output)"
        for call in msg.get("tool_calls") or []:
            args = ((call or {}).get("function") or {}).get("arguments", "")
            try:
                code = json.loads(args).get("code", args)
            except (ValueError, AttributeError):
                code = args
            ran.append(_first_line(str(code), 60))
    lines = [f"- ran: {code}" for code in ran[-_SUMMARY_RAN:]]
    lines.append(f"- last result: {last_result}")
    return "Summary of the work so far: \n" + "\n".join(lines)


class ScriptedReply:
    """A fully resolved assistant reply: text, tool calls and usage."""

    def __init__(self, entry: dict[str, Any], turn: int, messages: list[Any], empty: bool) -> None:
        self.content: str | None
        self.tool_calls: list[dict[str, str]] = []
        self.reasoning = "" if empty else str(entry.get("reasoning") or "")
        self.reasoning_field = str(entry.get("reasoning_field") or "reasoning_content")
        self.index_mode = str(entry.get("tool_call_index") or "")
        if empty:
            self.content = ""
        else:
            for i, call in enumerate(entry.get("tool_calls") or []):
                args = call.get("arguments", {})
                self.tool_calls.append(
                    {
                        "id": str(call.get("id") or f"call_{turn}_{i}"),
                        "name": str(call["name"]),
                        "arguments": args if isinstance(args, str) else json.dumps(args),
                    }
                )
            content = entry.get("content")
            self.content = (
                str(content) if content is not None else (None if self.tool_calls else "")
            )
        self.finish_reason = "tool_calls" if self.tool_calls else "stop"
        out_chars = len(self.content or "") + sum(
            len(c["name"]) + len(c["arguments"]) for c in self.tool_calls
        )
        self.usage = counted_usage(messages, out_chars, None if empty else entry.get("usage"))

    def truncate(self) -> None:
        """Keep the first half of the text and of each call's arguments (a cut reply)."""
        if self.content:
            self.content = self.content[: len(self.content) // 2]
        for c in self.tool_calls:
            c["arguments"] = c["arguments"][: len(c["arguments"]) // 2]
        self.finish_reason = "length"

    def message(self) -> dict[str, Any]:
        """The non-streaming ``choices[0].message`` object."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content, "refusal": None}
        if self.reasoning:
            msg[self.reasoning_field] = self.reasoning
        if self.tool_calls:
            msg["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in self.tool_calls
            ]
        return msg

    def deltas(self) -> Iterator[dict[str, Any]]:
        """Streaming deltas after the initial role delta, in OpenAI's order."""
        for piece in pieces(self.reasoning):
            yield {self.reasoning_field: piece}
        for piece in pieces(self.content or ""):
            yield {"content": piece}
        for i, c in enumerate(self.tool_calls):
            half = len(c["arguments"]) // 2
            index = _INDEX_MODES.get(self.index_mode, {"index": i})
            fn = {"name": c["name"], "arguments": c["arguments"][:half]}
            first = {"type": "function", "function": fn}
            yield {"tool_calls": [{**index, "id": c["id"], **first}]}
            yield {"tool_calls": [{**index, "function": {"arguments": c["arguments"][half:]}}]}

    def completion(self, cid: str, model: str, finish: str | None) -> dict[str, Any]:
        """The whole (non-streamed) ``chat.completion``."""
        return {
            "id": cid,
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "message": self.message(), "logprobs": None, "finish_reason": finish}
            ],
            "usage": self.usage,
        }

    def chunk(
        self,
        cid: str,
        model: str,
        delta: dict[str, Any] | None,
        finish: str | None = None,
        *,
        with_usage: bool = False,
    ) -> dict[str, Any]:
        """One ``chat.completion.chunk``; ``delta`` None: the last, carrying only the usage.

        ``with_usage`` (the request asked for usage): every chunk has the key,
        ``null`` but in the last.
        """
        out: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "system_fingerprint": None,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if with_usage:
            out["usage"] = self.usage if delta is None else None
        return out
