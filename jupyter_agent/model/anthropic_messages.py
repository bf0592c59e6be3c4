"""The Anthropic Messages API client: the Chat Completions client's contract over ``/v1/messages``.

Anthropic's OpenAI-compatible layer ignores ``cache_control`` and drops thinking,
so this client speaks the native API with the official ``anthropic`` SDK:

* the loop's Chat-Completions-shaped conversation is mapped to Messages
  (:func:`to_messages`): leading system messages become ``system``, tool calls
  ``tool_use`` blocks, tool results ``tool_result`` blocks in a user turn;
* thinking blocks (with their signatures) and redacted thinking come back with
  the reply, are checkpointed with the assistant message under
  :data:`~.base.PROVIDER_STATE` and sent back before its text and tool calls,
  as the API requires of a turn that used tools;
* the harness places its own ``cache_control`` breakpoints (:func:`breakpoints`),
  never more than the API's :data:`MAX_BREAKPOINTS`, where the conversation
  only grows between steps, so each request reads what the previous one wrote.

The retries, limits and error sorting are :class:`~.chat.ChatCompletionsClient`'s
over this SDK's exceptions (``overloaded_error``, HTTP 529 or an error event
mid-stream, is retried); only the request and the stream's events are here.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anthropic

from ..errors import Cancelled
from .base import provider_items
from .chat import ChatCompletionsClient, _Reply
from .http import shared_http

#: The name of this API in :data:`~.base.PROVIDER_STATE` and in ``--model anthropic:NAME``.
API = "anthropic"
#: The most ``cache_control`` breakpoints the API accepts in one request.
MAX_BREAKPOINTS = 4
#: ``max_tokens`` is required; this unless the model allows less (learnt from its refusal).
DEFAULT_MAX_TOKENS = 8192
_MAX_ALLOWED = re.compile(r"max_tokens: \d+ > (\d+)")
_STOP = {"max_tokens": "length", "refusal": "content_filter"}
_EPHEMERAL = {"type": "ephemeral"}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _blocks(content: Any) -> list[dict]:
    """A user message's content as text and image blocks."""
    if not isinstance(content, list):
        return [{"type": "text", "text": _text(content) or "(empty)"}]
    out: list[dict] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        url = str((part.get("image_url") or {}).get("url") or "")
        if part.get("type") == "image_url" and url.startswith("data:") and ";base64," in url:
            media, data = url[5:].split(";base64,", 1)
            source = {"type": "base64", "media_type": media, "data": data}
            out.append({"type": "image", "source": source})
        elif part.get("type") == "image_url":
            out.append({"type": "image", "source": {"type": "url", "url": url}})
        else:
            out.append({"type": "text", "text": str(part.get("text") or "") or "(empty)"})
    return out


def _tool_use(call: dict) -> dict:
    fn = call.get("function") or {}
    raw = fn.get("arguments") or ""
    try:
        args = json.loads(raw) if raw.strip() else {}
    except ValueError:
        args = None
    if not isinstance(args, dict):  # a malformed call, already answered as such
        args = {"arguments": raw}
    return {"type": "tool_use", "id": call.get("id"), "name": fn.get("name") or "", "input": args}


def to_messages(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    """``(system, messages)`` of the Messages API for the loop's conversation.

    Consecutive turns of one role are merged into one (tool results and the
    user's words after them), as the API wants turns to alternate.
    """
    system: list[dict] = []
    out: list[dict] = []
    for msg in messages:
        role = msg.get("role")
        if role == "system" and not out:
            system.append({"type": "text", "text": _text(msg.get("content")) or "(empty)"})
            continue
        if role == "assistant":
            blocks = list(provider_items(msg, API))
            if text := _text(msg.get("content")):
                blocks.append({"type": "text", "text": text})
            blocks += [_tool_use(c) for c in msg.get("tool_calls") or []]
            turn = "assistant"
            blocks = blocks or [{"type": "text", "text": "(no answer)"}]
        elif role == "tool":
            result = _text(msg.get("content")) or "(no output)"
            blocks = [
                {"type": "tool_result", "tool_use_id": msg.get("tool_call_id"), "content": result}
            ]
            turn = "user"
        else:  # a user message, or a note the loop wrote as a system message mid-run
            blocks = _blocks(msg.get("content"))
            turn = "user"
        if out and out[-1]["role"] == turn:
            out[-1]["content"] += blocks
        else:
            out.append({"role": turn, "content": blocks})
    return system, out


def breakpoints(system: list[dict], messages: list[dict]) -> int:
    """Mark where the prompt's cache is written and read; returns how many were placed.

    The end of the system prompt, the task (the first block of the first user
    turn, which compaction keeps), the end of the previous request (the user turn before
    the latest reply: read now) and the end of this one (written now, read next
    step). Never more than :data:`MAX_BREAKPOINTS`, whatever the conversation.
    """
    targets: list[dict] = []
    if system:
        targets.append(system[-1])
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if users:  # the task alone: a summary merged into its turn after it changes, it does not
        targets.append(messages[users[0]]["content"][0])
    for i in [*users[-2:-1], len(messages) - 1] if messages else []:
        targets.append(messages[i]["content"][-1])
    placed = 0
    for block in targets:
        if placed < MAX_BREAKPOINTS and "cache_control" not in block:
            block["cache_control"] = dict(_EPHEMERAL)
            placed += 1
    return placed


def tool_specs(tools: list[dict]) -> list[dict]:
    """Chat Completions tool specs as Messages tools."""
    out = []
    for tool in tools:
        fn = tool.get("function") or {}
        spec = {"name": fn.get("name"), "input_schema": fn.get("parameters") or {"type": "object"}}
        if fn.get("description"):
            spec["description"] = fn["description"]
        out.append(spec)
    return out


def usage_of(start: dict, end: dict) -> dict:
    """Messages usage in the loop's names; cache reads and writes are parts of ``prompt_tokens``.

    ``start`` is ``message_start``'s usage, ``end`` ``message_delta``'s (whose
    counts are cumulative and win).
    """
    both = {**start, **{k: v for k, v in end.items() if v is not None}}
    read = int(both.get("cache_read_input_tokens") or 0)
    write = int(both.get("cache_creation_input_tokens") or 0)
    if both.get("input_tokens") is None:
        return {}
    prompt = int(both["input_tokens"]) + read + write
    out = {"prompt_tokens": prompt, "cached_tokens": read, "cache_write_tokens": write}
    if both.get("output_tokens") is not None:
        out["completion_tokens"] = int(both["output_tokens"])
        out["total_tokens"] = prompt + out["completion_tokens"]
    return out


class AnthropicClient(ChatCompletionsClient):
    """A :class:`~.base.ModelClient` over Anthropic's Messages API (``POST /v1/messages``)."""

    #: The largest ``max_tokens`` the model accepts, once it said (see :data:`_MAX_ALLOWED`).
    max_tokens: int = 1 << 30
    retryable = (
        anthropic.APIConnectionError,  # includes timeouts and streams cut midway
        anthropic.RateLimitError,
        anthropic.InternalServerError,  # includes 529 overloaded_error
        anthropic.APIResponseValidationError,
    )
    status_error = anthropic.APIStatusError
    api_error = anthropic.APIError

    def _make_client(self, timeout: float, headers: dict[str, str], query: dict[str, str]) -> Any:
        base_url = self.endpoint.base_url
        if base_url:  # the SDK adds /v1 itself; a URL written for OpenAI clients has it
            base_url = base_url.rstrip("/").removesuffix("/v1")
        return anthropic.Anthropic(
            api_key=self.endpoint.api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=0,
            default_headers=headers or None,
            default_query=query or None,
            http_client=shared_http(self._key, timeout, anthropic.DefaultHttpxClient),
        )

    def _request(
        self, messages: list[dict], tools: list[dict], acc: _Reply, room: int | None
    ) -> None:
        system, turns = to_messages(messages)
        breakpoints(system, turns)
        body: dict[str, Any] = {**self.extra_body, "messages": turns}
        if system:
            body["system"] = system
        if tools:
            body["tools"] = tool_specs(tools)
        thinking = self.extra_body.get("thinking")
        budget = int(thinking.get("budget_tokens") or 0) if isinstance(thinking, dict) else 0
        while True:  # room for the answer after the thinking budget, as the API requires
            limit = min((room or DEFAULT_MAX_TOKENS) + budget, self.max_tokens)
            try:
                stream = self._client.messages.create(
                    model=self.endpoint.model,
                    max_tokens=limit,
                    messages=[],
                    stream=True,
                    extra_body=body,
                )
            except anthropic.BadRequestError as exc:
                allowed = _MAX_ALLOWED.search(str(exc.message))
                if allowed and int(allowed.group(1)) < limit:
                    self.max_tokens = int(allowed.group(1))
                    continue
                raise
            break
        try:
            self._read_events(stream, acc)
        finally:
            stream.close()

    def _read_events(self, stream: Any, acc: _Reply) -> None:
        blocks: dict[int, dict] = {}
        start: dict = {}
        for event in stream:
            if self.cancel.is_set():
                raise Cancelled()
            data = event.model_dump(exclude_none=True, warnings=False)
            kind = data.get("type")
            if kind == "message_start":
                start = (data.get("message") or {}).get("usage") or {}
                acc.usage = usage_of(start, {})
            elif kind == "content_block_start":
                block = dict(data.get("content_block") or {})
                blocks[int(data.get("index") or 0)] = block
                if block.get("type") == "tool_use":
                    fn = {"name": block.get("name") or "", "arguments": ""}
                    acc.tool_call(
                        {"index": data.get("index"), "id": block.get("id"), "function": fn}
                    )
                acc.text(block.get("text"))
                acc.think(block.get("thinking"))
            elif kind == "content_block_delta":
                self._delta(data, blocks.setdefault(int(data.get("index") or 0), {}), acc)
            elif kind == "message_delta":
                acc.usage = usage_of(start, data.get("usage") or {})
                reason = str((data.get("delta") or {}).get("stop_reason") or "")
                acc.finish = _STOP.get(reason) or ("tool_calls" if acc.calls else "stop")
        kept = [b for i, b in sorted(blocks.items()) if "thinking" in str(b.get("type"))]
        if kept:
            acc.provider_state = {"api": API, "items": kept}

    @staticmethod
    def _delta(data: dict, block: dict, acc: _Reply) -> None:
        delta = data.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            acc.text(delta.get("text"))
        elif kind == "thinking_delta":
            acc.think(delta.get("thinking"))
            block["thinking"] = str(block.get("thinking") or "") + str(delta.get("thinking") or "")
        elif kind == "signature_delta":
            block["signature"] = str(block.get("signature") or "") + str(
                delta.get("signature") or ""
            )
        elif kind == "input_json_delta":
            fn = {"arguments": delta.get("partial_json") or ""}
            acc.tool_call({"index": data.get("index"), "function": fn})
