"""The model client: streaming Chat Completions with tool calls over the ``openai`` client.

Any OpenAI-compatible endpoint works (OpenAI, vLLM, Ollama, LM Studio, the
built-in offline model). A model call has no side effects, so every transient
failure — 429 (honouring ``Retry-After``), 5xx, timeouts, a stream dropped
midway, an unparsable or empty reply — is retried with exponential backoff;
what still fails after the retries becomes a :class:`ModelError` and the agent
pauses at its last checkpoint, resumable later.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import openai

from .offline import OFFLINE_MODEL, offline_base_url


class ConfigError(Exception):
    """The model endpoint is not configured; the message says what to set."""


class ModelError(Exception):
    """The model endpoint kept failing; the agent pauses and can be resumed."""


class ContextOverflow(ModelError):
    """The endpoint refused the prompt as too long for the model's context window.

    Never retried: the same prompt fails the same way. The caller shortens the
    conversation (compaction) and asks again. ``limit`` is the window and
    ``requested`` the prompt size, in tokens, where the endpoint's message says them.
    """

    def __init__(self, message: str, limit: int | None = None, requested: int | None = None):
        super().__init__(message)
        self.limit = limit
        self.requested = requested


class Cancelled(Exception):
    """The user asked the agent to stop while a reply was streaming."""


@dataclass
class ModelReply:
    content: str
    tool_calls: list[dict]
    usage: dict = field(default_factory=dict)

    def message(self) -> dict:
        msg: dict = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        return msg

    @property
    def tokens(self) -> int:
        return int(self.usage.get("total_tokens") or 0)


@dataclass(frozen=True)
class Endpoint:
    model: str
    base_url: str | None
    api_key: str
    label: str  # how the endpoint is described to the user

    @classmethod
    def resolve(
        cls, model: str, base_url: str | None = None, api_key: str | None = None
    ) -> Endpoint:
        if model == OFFLINE_MODEL:
            return cls(model, offline_base_url(), "offline", "built-in offline demo model")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        if not model:
            raise ConfigError(
                "No model chosen. Pass --model NAME (e.g. %%agent --model gpt-4o-mini), or set a "
                "default with %config AgentMagics.model = 'NAME'. Use --model offline for the "
                "built-in offline demo model, which needs no API key."
            )
        if not api_key and not base_url:
            raise ConfigError(
                f"No model endpoint configured for model {model!r}. Set OPENAI_API_KEY for "
                "OpenAI, or OPENAI_BASE_URL for another OpenAI-compatible server (vLLM, Ollama, "
                "LM Studio; add OPENAI_API_KEY if it needs one). Or use --model offline for the "
                "built-in offline demo model."
            )
        return cls(model, base_url, api_key or "none", base_url or "OpenAI")


RETRYABLE = (
    openai.APIConnectionError,  # includes timeouts and streams cut midway
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APIResponseValidationError,
    httpx.TransportError,  # a connection lost while a stream is read, if not wrapped
)
#: Statuses that say "try again" without being a 429 or a 5xx.
RETRYABLE_STATUS = {408, 409}


class ModelClient:
    """Streams one completion at a time; ephemeral (holds sockets), never checkpointed."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 0.5,
        cancel: threading.Event | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.retries = retries
        self.backoff = backoff
        self.cancel = cancel or threading.Event()
        self._client = openai.OpenAI(
            api_key=endpoint.api_key, base_url=endpoint.base_url, timeout=timeout, max_retries=0
        )

    def complete(
        self,
        messages: list[dict],
        tools: list[dict],
        on_text: Callable[[str], None] = lambda _: None,
        on_retry: Callable[[str], None] = lambda _: None,
    ) -> ModelReply:
        attempt = 0
        while True:
            wait: float | None = None
            try:
                reply = self._stream(messages, tools, on_text)
                if reply.content.strip() or reply.tool_calls:
                    return reply
                problem = "the model sent an empty reply"
            except Cancelled:
                raise
            except RETRYABLE as exc:
                problem = _describe(exc)
                wait = _retry_after(exc)
            except ValueError as exc:  # unparsable chunk
                problem = f"the model sent a malformed reply ({exc})"
            except openai.APIStatusError as exc:
                overflow = _overflow_of(exc)
                if overflow is not None:
                    raise overflow from exc
                if exc.status_code not in RETRYABLE_STATUS:
                    raise ModelError(
                        f"The model endpoint refused the request: {_describe(exc)}"
                    ) from exc
                problem = _describe(exc)
                wait = _retry_after(exc)
            if attempt >= self.retries:
                raise ModelError(
                    f"The model endpoint kept failing ({problem}) after {attempt + 1} attempts."
                )
            delay = wait if wait is not None else self.backoff * 2**attempt
            on_retry(f"{problem}; retrying in {delay:.1f} s")
            if self.cancel.wait(delay):
                raise Cancelled()
            attempt += 1

    def _stream(
        self, messages: list[dict], tools: list[dict], on_text: Callable[[str], None]
    ) -> ModelReply:
        stream = self._client.chat.completions.create(
            model=self.endpoint.model,
            # The client walks typed params in Python on every request (0.4 s for a
            # 1,000-message conversation); the messages are plain JSON already, so
            # they go in extra_body, which is merged into the body as it is.
            messages=[],
            extra_body={"messages": messages},
            tools=tools or openai.NOT_GIVEN,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        content: list[str] = []
        calls: dict[int, dict] = {}
        usage: dict = {}
        try:
            for chunk in stream:
                if self.cancel.is_set():
                    raise Cancelled()
                if chunk.usage:
                    usage = chunk.usage.model_dump(exclude_none=True)
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                if delta.content:
                    content.append(delta.content)
                    on_text(delta.content)
                for tc in delta.tool_calls or []:
                    call = calls.setdefault(
                        tc.index,
                        {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                    )
                    if tc.id:
                        call["id"] = tc.id
                    if tc.function and tc.function.name:
                        call["function"]["name"] += tc.function.name
                    if tc.function and tc.function.arguments:
                        call["function"]["arguments"] += tc.function.arguments
        finally:
            stream.close()
        tool_calls = [calls[i] for i in sorted(calls)]
        for i, call in enumerate(tool_calls):
            call["id"] = call["id"] or f"call_{len(messages)}_{i}"
        return ModelReply("".join(content), tool_calls, usage)

    def close(self) -> None:
        self._client.close()


# How endpoints word "the prompt does not fit": OpenAI, vLLM, Ollama, llama.cpp and
# LM Studio, LiteLLM, Anthropic-compatible proxies.
_OVERFLOW = re.compile(
    r"context[_ ](?:length|window|size)|contextwindowexceeded|maximum model length|n_ctx"
    r"|prompt is too long|too many tokens|exceeds? the (?:model's )?(?:max(?:imum)? )?context",
    re.IGNORECASE,
)
_NUMBER = r"(\d[\d,]*)"
_LIMIT = [
    re.compile(p, re.IGNORECASE)
    for p in (
        rf"maximum context length (?:is|of) {_NUMBER}",
        rf"maximum model length (?:is |of )?{_NUMBER}",
        rf"context (?:length|window|size) (?:is |of )?(?:only )?\(?{_NUMBER}",
        rf"n_ctx\W{{0,4}}{_NUMBER}",
        rf"(?:limit|maximum) of {_NUMBER}",
        rf"> {_NUMBER} maximum",
    )
]
_REQUESTED = [
    re.compile(p, re.IGNORECASE)
    for p in (
        rf"(?:resulted in|requested|keep the first) {_NUMBER} tokens",
        rf"requested tokens \({_NUMBER}",
        rf"prompt(?: length)? (?:of |\(length |\()?{_NUMBER}",
        rf"n_prompt_tokens\W{{0,4}}{_NUMBER}",
        rf"(?:too long|input length)\W+{_NUMBER} tokens",
        rf"{_NUMBER} tokens >",
    )
]


def _first_number(patterns: list[re.Pattern[str]], text: str) -> int | None:
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            return int(match.group(1).replace(",", ""))
    return None


def context_overflow(
    message: str, code: str | None = None, status: int | None = None
) -> tuple[int | None, int | None] | None:
    """``(limit, requested)`` if an endpoint's error says the prompt is too long, else None.

    ``message`` is the error text (plus, for proxies, the error type or body),
    ``code`` the OpenAI error code. A 429 is a rate limit, never an overflow.
    """
    if status == 429:
        return None
    if code != "context_length_exceeded" and not _OVERFLOW.search(message):
        return None
    return _first_number(_LIMIT, message), _first_number(_REQUESTED, message)


def _overflow_of(exc: openai.APIError) -> ContextOverflow | None:
    """The :class:`ContextOverflow` an endpoint error amounts to, if it is one."""
    body = exc.body if isinstance(exc.body, dict) else {}
    message = str(body.get("message") or exc.message)
    text = " ".join(
        [message, str(body.get("type") or "")]
        + [f"{k}={body[k]}" for k in ("n_ctx", "n_prompt_tokens") if k in body]
    )
    found = context_overflow(text, exc.code, getattr(exc, "status_code", None))
    if found is None:
        return None
    limit, requested = found
    size = f" ({requested:,} tokens of {limit:,})" if limit and requested else ""
    return ContextOverflow(
        f"The conversation is too long for the model's context window{size}: "
        + _first_line(message),
        limit,
        requested,
    )


def _first_line(text: str, limit: int = 200) -> str:
    line = text.strip().split("\n", 1)[0].strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _retry_after(exc: Exception) -> float | None:
    """The server's requested wait (``retry-after-ms`` or ``retry-after`` seconds), capped."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = response.headers.get(header)
        if value is None:
            continue
        try:
            return min(max(float(value) * scale, 0.0), 60.0)
        except ValueError:
            continue  # an HTTP date: fall back to our own backoff
    return None


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    if isinstance(exc, openai.APITimeoutError):
        return "the request timed out"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach the endpoint ({exc.__cause__ or exc})"
    if status:
        return f"HTTP {status}: {getattr(exc, 'message', exc)}"
    return str(exc)
