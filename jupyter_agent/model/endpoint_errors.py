"""What an endpoint's failures mean, and how they are told to the user.

Every OpenAI-compatible server words its errors its own way (docs/endpoints.md).
Here they are sorted — worth retrying, a parameter to do without, a prompt too
long for the context window, or a refusal — and described in one short phrase
for the user, the whole of the error kept as the detail.

The errors read are the Chat Completions transport's (:class:`~jupyter_agent.errors.EndpointError`)
and the SDKs' of the native APIs, which have the same shape (``status_code``,
``body``, ``message``, ``code``, ``response``): they are read by that shape,
and no SDK is imported here.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import ContextOverflow, EndpointTimeout, TransportError
from ..vocab import clipped

#: Statuses that say "try again" besides 429 and the 5xx (529: Anthropic overloaded).
RETRYABLE_STATUS = {408, 409, 529}
#: Error types and codes of an error event inside a stream that say "try again".
_TRANSIENT_STREAM_ERROR = re.compile(
    r"server_error|overloaded|rate_limit|timeout|temporar|unavailable|try again|retry|internal"
    r"|^(?:408|409|429|5\d\d)$",
    re.IGNORECASE,
)


def body_of(exc: Exception) -> dict:
    """The error object of an SDK error: OpenAI's ``body``, or the ``error`` of Anthropic's
    ``{"type": "error", "error": {...}}`` envelope."""
    body = getattr(exc, "body", None)
    if not isinstance(body, dict):
        return {}
    inner = body.get("error")
    return inner if body.get("type") == "error" and isinstance(inner, dict) else body


def retryable_status(status: int) -> bool:
    """Whether an error status says "try again": a rate limit, a server error, a conflict."""
    return status == 429 or status >= 500 or status in RETRYABLE_STATUS


def is_a(exc: Exception, name: str) -> bool:
    """Whether ``exc`` is the SDK exception ``name`` of either SDK (they name them alike)."""
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def stream_error(exc: Any) -> tuple[str, bool]:
    """What an error event inside a stream said (one line), and whether it is transient."""
    body = body_of(exc)
    kind = " ".join(str(body.get(k) or "") for k in ("type", "code")).strip()
    said = first_line(str(body.get("message") or exc.message))
    transient = any(_TRANSIENT_STREAM_ERROR.search(w) for w in [*kind.split(), said])
    return said, transient


def stream_error_detail(exc: Any, said: str) -> str:
    """The whole error event, for ``ModelError.detail``."""
    return f"{said} ({json.dumps(exc.body, default=str)})"


def refused_parameter(exc: Any, body: dict) -> str | None:
    """The quirk to learn when an endpoint refuses (400) a parameter of ``body`` we can
    do without."""
    text = f"{exc.message} {exc.body}".lower()
    if "stream_options" in body and "stream_options" in text:
        return "stream_options"
    if "max_tokens" in body and "max_completion_tokens" in text:
        return "max_tokens"
    return None


# How endpoints word "the prompt does not fit": OpenAI, vLLM, Ollama, llama.cpp and
# LM Studio, LiteLLM, Anthropic-compatible proxies.
_OVERFLOW = re.compile(
    r"context[_ ](?:length|window|size)|contextwindowexceeded|maximum model length|n_ctx"
    r"|prompt is too long|too many tokens|exceeds? the (?:model's )?(?:max(?:imum)? )?context",
    re.IGNORECASE,
)
_NUMBER = r"(\d[\d,]*)"


def _patterns(*patterns: str) -> list[re.Pattern[str]]:
    return [re.compile(p, re.IGNORECASE) for p in patterns]


_LIMIT = _patterns(
    rf"maximum context length (?:is|of) {_NUMBER}",
    rf"maximum model length (?:is |of )?{_NUMBER}",
    rf"context (?:length|window|size) (?:is |of )?(?:only )?\(?{_NUMBER}",
    rf"n_ctx\W{{0,4}}{_NUMBER}",
    rf"(?:limit|maximum) of {_NUMBER}",
    rf"> {_NUMBER} maximum",
)
_REQUESTED = _patterns(
    rf"(?:resulted in|requested|keep the first) {_NUMBER} tokens",
    rf"requested tokens \({_NUMBER}",
    rf"prompt(?: length)? (?:of |\(length |\()?{_NUMBER}",
    rf"n_prompt_tokens\W{{0,4}}{_NUMBER}",
    rf"(?:too long|input length)\W+{_NUMBER} tokens",
    rf"{_NUMBER} tokens >",
)


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


def overflow_of(exc: Any) -> ContextOverflow | None:
    """The :class:`ContextOverflow` an endpoint error amounts to, if it is one."""
    body = body_of(exc)
    message = str(body.get("message") or exc.message)
    text = " ".join(
        [message, str(body.get("type") or "")]
        + [f"{k}={body[k]}" for k in ("n_ctx", "n_prompt_tokens") if k in body]
    )
    code = getattr(exc, "code", None)
    found = context_overflow(text, code, getattr(exc, "status_code", None))
    if found is None:
        return None
    limit, requested = found
    size = f" ({requested:,} tokens of {limit:,})" if limit and requested else ""
    return ContextOverflow(
        f"The conversation is too long for the model's context window{size}: "
        + first_line(message),
        limit,
        requested,
    )


def first_line(text: str, limit: int = 200) -> str:
    """The first non-empty line, at most ``limit`` characters."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return clipped(lines[0] if lines else "", limit)


_ERROR_CODE_PREFIX = re.compile(r"^Error code: \d+ - ")


def _server_message(exc: Exception) -> str:
    """What the server said, without the client's ``Error code: NNN -`` preamble."""
    body = body_of(exc)
    if isinstance(body.get("message"), str):
        return body["message"]
    message = str(getattr(exc, "message", None) or exc)
    return _ERROR_CODE_PREFIX.sub("", message)


def retry_after(exc: Exception) -> float | None:
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


def describe(exc: Exception) -> str:
    """One short phrase: the status and the first line of the server's message."""
    status = getattr(exc, "status_code", None)
    if isinstance(exc, EndpointTimeout) or is_a(exc, "APITimeoutError"):
        return "the request timed out"
    if isinstance(exc, TransportError) or is_a(exc, "APIConnectionError"):
        return first_line(f"cannot reach the endpoint ({exc.__cause__ or exc})")
    if status:
        return f"HTTP {status}: {first_line(_server_message(exc))}"
    return first_line(str(exc))


def detail(exc: Exception) -> str:
    """The whole error, for ``ModelError.detail``."""
    response = getattr(exc, "response", None)
    try:
        text = response.text if response is not None else ""
    except Exception:  # a streamed response not read
        text = ""
    status = getattr(exc, "status_code", None)
    return (f"HTTP {status}: " if status else "") + (text or _server_message(exc))
