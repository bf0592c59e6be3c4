"""The OpenAI Responses API client: the Chat Completions client's contract over ``/responses``.

Some endpoints speak only the Responses API, and reasoning models keep their
chain of thought there as *encrypted reasoning items*. Nothing is stored at
the provider (``store=false``, so ``previous_response_id`` is never relied on:
a crash would lose what it points to); the reasoning items come back with the
reply (``include=["reasoning.encrypted_content"]``), are checkpointed with the
assistant message under :data:`~.base.PROVIDER_STATE`, and are sent back as
input items on every later request, after a resume too.

The retries, limits and error sorting are :class:`~.chat.ChatCompletionsClient`'s,
over the ``openai`` SDK's exceptions; only the SDK client, the request and the
reading of the stream's events are this module's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import openai

from ..errors import Cancelled
from .base import provider_items
from .chat import ChatCompletionsClient, _Reply
from .http import shared_http

#: The name of this API in :data:`~.base.PROVIDER_STATE` and in ``--model responses:NAME``.
API = "responses"
#: Why a response stopped early, as a Chat Completions ``finish_reason``.
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _user_content(content: Any) -> Any:
    """A user or system message's content as input parts (text and images)."""
    if not isinstance(content, list):
        return _text(content)
    parts: list[dict] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            parts.append({"type": "input_image", "image_url": url, "detail": "auto"})
        else:
            parts.append({"type": "input_text", "text": str(part.get("text") or "")})
    return parts


def input_items(messages: list[dict]) -> list[dict]:
    """The loop's Chat-Completions-shaped conversation as Responses input items.

    An assistant message becomes its kept reasoning items, its text, then one
    ``function_call`` per tool call; a tool message a ``function_call_output``.
    """
    items: list[dict] = []
    for msg in messages:
        role = msg.get("role")
        if role == "tool":
            output = _text(msg.get("content"))
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": msg.get("tool_call_id"),
                    "output": output,
                }
            )
        elif role == "assistant":
            items += provider_items(msg, API)
            if text := _text(msg.get("content")):
                items.append({"role": "assistant", "content": text})
            for call in msg.get("tool_calls") or []:
                fn = call.get("function") or {}
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call.get("id"),
                        "name": fn.get("name") or "",
                        "arguments": fn.get("arguments") or "",
                    }
                )
        else:
            items.append({"role": role, "content": _user_content(msg.get("content"))})
    return items


def function_tools(tools: list[dict]) -> list[dict]:
    """Chat Completions tool specs as Responses function tools."""
    out = []
    for tool in tools:
        fn = tool.get("function") or {}
        spec = {"type": "function", "name": fn.get("name"), "parameters": fn.get("parameters")}
        if fn.get("description"):
            spec["description"] = fn["description"]
        out.append({**spec, "strict": False})
    return out


def usage_of(usage: dict) -> dict:
    """Responses usage in the loop's names (``cached_tokens`` is part of ``prompt_tokens``)."""
    out = {
        "prompt_tokens": usage.get("input_tokens"),
        "completion_tokens": usage.get("output_tokens"),
        "total_tokens": usage.get("total_tokens"),
    }
    details = usage.get("input_tokens_details")
    if isinstance(details, dict) and details.get("cached_tokens") is not None:
        out["cached_tokens"] = details["cached_tokens"]
    return {k: v for k, v in out.items() if v is not None}


@dataclass
class _Items:
    """What one response's stream says beyond the reply's text and calls."""

    #: Its reasoning items, to be sent back (:data:`~.base.PROVIDER_STATE`).
    kept: list[dict] = field(default_factory=list)
    #: The messages whose text came as deltas (a message sent whole came without).
    streamed: set[str] = field(default_factory=set)


try:  # an SDK over httpx (before 3.x) may let a connection lost mid-stream through unwrapped
    from httpx import TransportError as _HttpxTransportError

    _unwrapped: tuple[type[Exception], ...] = (_HttpxTransportError,)
except ImportError:
    _unwrapped = ()


class ResponsesClient(ChatCompletionsClient):
    """A :class:`~.base.ModelClient` over the OpenAI Responses API (``POST /responses``)."""

    retryable = (
        openai.APIConnectionError,  # includes timeouts and streams cut midway
        openai.RateLimitError,
        openai.InternalServerError,
        openai.APIResponseValidationError,
        *_unwrapped,
    )
    status_error = openai.APIStatusError
    api_error = openai.APIError

    def _make_client(self, timeout: float, headers: dict[str, str], query: dict[str, str]) -> Any:
        """The SDK client, over the process's connection pool for the endpoint."""
        return openai.OpenAI(
            api_key=self.endpoint.api_key,
            base_url=self.endpoint.base_url,
            timeout=timeout,
            max_retries=0,
            default_headers=headers or None,
            default_query=query or None,
            http_client=shared_http(self._key, timeout),
        )

    def _request(
        self, messages: list[dict], tools: list[dict], acc: _Reply, room: int | None
    ) -> None:
        body: dict[str, Any] = {
            **self.extra_body,
            "input": input_items(messages),
            "store": False,
            "include": ["reasoning.encrypted_content"],
        }
        if tools:
            body["tools"] = function_tools(tools)
        if room:
            body["max_output_tokens"] = room
        stream = self._client.responses.create(
            model=self.endpoint.model, stream=True, extra_body=body
        )
        try:
            items = _Items()
            for event in stream:
                if self.cancel.is_set():
                    raise Cancelled()
                data = event.model_dump(exclude_none=True, warnings=False)
                self._event(data, acc, items, stream.response.request)
            if items.kept:
                acc.provider_state = {"api": API, "items": items.kept}
        finally:
            stream.close()

    def _event(self, data: dict, acc: _Reply, items: _Items, request: Any) -> None:
        """Fold one stream event into the reply; an error event is raised as the SDK's error."""
        kind = data.get("type", "")
        if kind == "response.output_text.delta":
            items.streamed.add(str(data.get("item_id")))
            acc.text(data.get("delta"))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            acc.think(data.get("delta"))
        elif kind == "response.output_item.done":
            item = data.get("item") or {}
            if item.get("type") == "function_call":
                fn = {"name": item.get("name") or "", "arguments": item.get("arguments") or ""}
                acc.tool_call({"id": item.get("call_id") or "", "function": fn})
            elif item.get("type") == "reasoning":
                items.kept.append({k: v for k, v in item.items() if k != "status"})
            elif item.get("type") == "message" and str(item.get("id")) not in items.streamed:
                acc.text(_text(item.get("content")))  # sent whole, without deltas
        elif kind in ("response.completed", "response.incomplete"):
            response = data.get("response") or {}
            acc.usage = usage_of(response.get("usage") or {})
            reason = (response.get("incomplete_details") or {}).get("reason")
            if kind == "response.incomplete":
                acc.finish = _INCOMPLETE.get(str(reason), "length")
            else:
                acc.finish = "tool_calls" if acc.calls else "stop"
        elif kind in ("response.failed", "error"):
            error = (data.get("response") or {}).get("error") if kind != "error" else data
            error = error if isinstance(error, dict) else {"message": "the response failed"}
            message = str(error.get("message") or "the response failed")
            raise openai.APIError(message, request, body=error)
