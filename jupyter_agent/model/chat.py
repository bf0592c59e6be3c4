"""The model client: streaming Chat Completions with tool calls over the ``openai`` client.

Any OpenAI-compatible endpoint works (OpenAI, vLLM, Ollama, LM Studio, LiteLLM,
the built-in offline model; quirks in docs/endpoints.md). A model call has no
side effects, so every transient failure — 429 (honouring ``Retry-After``), 5xx,
timeouts, a stream dropped or cut short, an error event inside the stream, an
unparsable or empty reply, a reply cut at the length limit — is retried with
exponential backoff; what still fails after the retries becomes a
:class:`ModelError` and the agent pauses at its last checkpoint, resumable later.

A reply is complete only when the endpoint said so with a ``finish_reason``
other than ``length``: the caller checkpoints the reply, and a half reply
stored once would be restored forever. Every text produced here is redacted.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from ..core.redaction import redact, secrets_in_environment
from .offline import OFFLINE_MODEL


class ConfigError(Exception):
    """The model endpoint is not configured; the message says what to set."""


class ModelError(Exception):
    """The model endpoint kept failing; the agent pauses and can be resumed.

    ``str()`` is one short sentence for the user; ``detail`` keeps the whole
    (redacted) error the endpoint sent, for the checkpoint and for debugging.
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail or message


class ContextOverflow(ModelError):
    """The endpoint refused the prompt as too long for the model's context window.

    Never retried: the same prompt fails the same way. The caller shortens the
    conversation (compaction) and asks again. ``limit`` is the window and
    ``requested`` the prompt size, in tokens, where the endpoint's message says them.
    """

    def __init__(
        self,
        message: str,
        limit: int | None = None,
        requested: int | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message, detail)
        self.limit = limit
        self.requested = requested


class ReplyLimitExceeded(ModelError):
    """The reply grew past ``max_text`` characters or streamed past the deadline.

    Not retried (a runaway model would run away again); the run pauses, resumable.
    """


class Cancelled(Exception):
    """The user asked the agent to stop while a reply was streaming."""


@dataclass
class ModelReply:
    """One complete reply. ``reasoning`` is kept for display, never sent back to the API."""

    content: str
    tool_calls: list[dict]
    usage: dict = field(default_factory=dict)
    reasoning: str = ""
    finish_reason: str = "stop"
    #: Requests it took (1 when the first one succeeded).
    attempts: int = 1
    #: The problems that caused each retry, in order (redacted).
    retries: list[str] = field(default_factory=list)

    def message(self) -> dict:
        """The assistant message for the conversation (without the reasoning)."""
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
            return cls(model, None, "offline", "built-in offline demo model")
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
#: Error types and codes of an error event inside a stream that say "try again".
_TRANSIENT_STREAM_ERROR = re.compile(
    r"server_error|overloaded|rate_limit|timeout|temporar|unavailable|try again|retry|internal"
    r"|^(?:408|409|429|5\d\d)$",
    re.IGNORECASE,
)
#: Room asked for after a reply was cut at the length limit, and its ceiling.
MIN_ROOM, MAX_ROOM = 4096, 65536

# What each endpoint (by base URL) turned out not to support, for this process.
_quirks_lock = threading.Lock()
_QUIRKS: dict[str, dict[str, bool]] = {}


class _Retry(Exception):
    """A transient problem with this attempt; ``str()`` says what, for ``on_retry``."""

    def __init__(self, problem: str, wait: float | None = None) -> None:
        super().__init__(problem)
        self.wait = wait


class _Truncated(_Retry):
    """The reply was cut at the length limit (``finish_reason: "length"``)."""

    def __init__(self, completion_tokens: int) -> None:
        super().__init__("the reply was cut at the length limit")
        self.completion_tokens = completion_tokens


class _ReasoningOnly(_Retry):
    """The model reasoned and finished without an answer or a tool call."""

    def __init__(self, reply: ModelReply) -> None:
        super().__init__("the model only reasoned and gave no answer")
        self.reply = reply


class _Reply:
    """Accumulates one reply from stream deltas or a whole message, within the limits."""

    def __init__(self, client: ModelClient, on_text: Callable[[str], None], on_reasoning: Any):
        self.client = client
        self.on_text = on_text
        self.on_reasoning = on_reasoning
        self.started = time.monotonic()
        self.size = 0
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[dict] = []
        self.by_index: dict[int, dict] = {}
        self.by_id: dict[str, dict] = {}
        self.finish: str | None = None
        self.usage: dict = {}

    def _grow(self, text: str) -> None:
        self.size += len(text)
        client = self.client
        if self.size > client.max_text:
            raise ReplyLimitExceeded(
                f"The model's reply passed {client.max_text:,} characters and was stopped; "
                "re-run the cell to ask again."
            )
        if time.monotonic() - self.started > client.deadline:
            raise ReplyLimitExceeded(
                f"The model's reply was still streaming after {client.deadline:.0f} s and was "
                "stopped; re-run the cell to ask again."
            )

    def text(self, piece: str | None) -> None:
        if piece:
            self._grow(piece)
            self.content.append(piece)
            self.on_text(piece)

    def think(self, piece: str | None) -> None:
        if piece and isinstance(piece, str):
            self._grow(piece)
            self.reasoning.append(piece)
            if self.on_reasoning is not None:
                self.on_reasoning(piece)

    def tool_call(self, fragment: dict) -> None:
        """Add one tool-call fragment, keyed by index, else by id, else by order.

        Some servers send parallel calls without ``index`` or all with index 0;
        a new ``id`` then starts a new call, and so does a new name on a call
        that has one, instead of gluing them together (``pythonpython``).
        """
        index, call_id = fragment.get("index"), fragment.get("id") or ""
        fn = fragment.get("function") or {}
        name, args = fn.get("name") or "", fn.get("arguments") or ""
        call = self.by_id.get(call_id) if call_id else None
        if call is None and isinstance(index, int) and index in self.by_index:
            known = self.by_index[index]
            if not (call_id and known["id"] and known["id"] != call_id):
                call = known
        if call is None and not call_id and index is None and self.calls:
            last = self.calls[-1]
            if not (name and last["function"]["name"]):
                call = last
        if call is None:
            call = {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            self.calls.append(call)
        if isinstance(index, int):
            self.by_index[index] = call
        if call_id and not call["id"]:
            call["id"] = call_id
            self.by_id[call_id] = call
        self._grow(name + args)
        call["function"]["name"] += name
        call["function"]["arguments"] += args

    def delta(self, delta: dict) -> None:
        self.think(delta.get("reasoning_content") or delta.get("reasoning"))
        self.text(delta.get("content"))
        for fragment in delta.get("tool_calls") or []:
            self.tool_call(fragment)

    def choice(self, choice: dict) -> None:
        """One streamed choice, or (with ``message``) a whole non-streamed one."""
        message = choice.get("message")
        if message is not None:
            for i, call in enumerate(message.get("tool_calls") or []):
                self.tool_call({**call, "index": i})
            message = {**message, "tool_calls": None}
        self.delta(message or choice.get("delta") or {})
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]

    def chunk(self, data: dict) -> None:
        if data.get("usage"):
            self.usage = {k: v for k, v in data["usage"].items() if v is not None}
        for choice in (data.get("choices") or [])[:1]:
            self.choice(choice)

    def result(self, n_messages: int) -> ModelReply:
        """The reply if it is complete; raises :class:`_Retry` if it is not."""
        for i, call in enumerate(self.calls):
            call["id"] = call["id"] or f"call_{n_messages}_{i}"
        reply = ModelReply(
            "".join(self.content),
            self.calls,
            self.usage,
            "".join(self.reasoning),
            self.finish or "",
        )
        if self.finish is None:
            raise _Retry("the reply stream ended before the model finished")
        if self.finish == "content_filter":
            raise ModelError("The endpoint's content filter stopped the model's reply.")
        if self.finish == "length":
            raise _Truncated(int(self.usage.get("completion_tokens") or self.size // 3))
        if reply.content.strip() or reply.tool_calls:
            return reply
        if reply.reasoning.strip():
            raise _ReasoningOnly(reply)
        raise _Retry("the model sent an empty reply")


class ModelClient:
    """Streams one completion at a time; ephemeral (holds sockets), never checkpointed.

    ``max_text`` caps the characters of one reply (text, reasoning and tool
    arguments); ``deadline`` caps how long one reply may stream, in seconds
    (default ``max(timeout, 600)``).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 0.5,
        cancel: threading.Event | None = None,
        max_text: int = 1_000_000,
        deadline: float | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.retries = retries
        self.backoff = backoff
        self.cancel = cancel or threading.Event()
        self.max_text = max_text
        self.deadline = deadline if deadline is not None else max(timeout, 600.0)
        self.secrets = secrets_in_environment(endpoint.api_key)
        self._key = endpoint.base_url or "https://api.openai.com/v1"
        with _quirks_lock:
            #: What this endpoint does not support: "stream", "stream_options", "max_tokens".
            self.quirks: dict[str, bool] = dict(_QUIRKS.get(self._key, {}))
        self._client = openai.OpenAI(
            api_key=endpoint.api_key,
            base_url=endpoint.base_url,
            timeout=timeout,
            max_retries=0,
            http_client=shared_http(self._key, timeout),
        )

    def _clean(self, text: str) -> str:
        return redact(text, self.secrets)

    def _learn(self, quirk: str) -> None:
        """Remember that the endpoint refuses something, here and for this process."""
        self.quirks[quirk] = True
        with _quirks_lock:
            _QUIRKS.setdefault(self._key, {})[quirk] = True

    def complete(
        self,
        messages: list[dict],
        tools: list[dict],
        on_text: Callable[[str], None] = lambda _: None,
        on_retry: Callable[[str], None] = lambda _: None,
        on_reasoning: Callable[[str], None] | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> ModelReply:
        """One complete reply, after retrying what is transient.

        ``on_sent`` is called in this thread as each attempt's request goes out
        (work that would slow the request down can start then).

        Raises :class:`ContextOverflow` (the prompt does not fit: compact and ask
        again), :class:`ReplyLimitExceeded`, :class:`ModelError` or :class:`Cancelled`.
        A reply that is only reasoning is asked for once more, then accepted with
        empty content.
        """
        problems: list[str] = []
        room: int | None = None
        reasoning_only: ModelReply | None = None
        attempt = 0
        while True:
            try:
                _sending.hook = on_sent
                try:
                    reply = self._attempt(messages, tools, on_text, on_reasoning, room)
                finally:
                    _sending.hook = None
                reply.attempts, reply.retries = attempt + 1, problems
                return reply
            except Cancelled:
                raise
            except _ReasoningOnly as exc:
                if reasoning_only is not None:
                    exc.reply.attempts, exc.reply.retries = attempt + 1, problems
                    return exc.reply
                reasoning_only, problem, wait = exc.reply, str(exc), 0.0
            except _Truncated as exc:
                room = min(max(MIN_ROOM, 2 * exc.completion_tokens, 2 * (room or 0)), MAX_ROOM)
                problem, wait = f"{exc}; asking for room for {room:,} tokens", 0.0
            except _Retry as exc:
                problem, wait = str(exc), exc.wait
            problem = self._clean(problem)
            problems.append(problem)
            if attempt >= self.retries:
                raise ModelError(
                    f"The model endpoint kept failing ({problem}) after {attempt + 1} attempts.",
                    "; ".join(problems),
                )
            delay = wait if wait is not None else self.backoff * 2**attempt
            on_retry(f"{problem}; retrying in {delay:.1f} s")
            if self.cancel.wait(delay):
                raise Cancelled()
            attempt += 1

    def _attempt(
        self,
        messages: list[dict],
        tools: list[dict],
        on_text: Callable[[str], None],
        on_reasoning: Callable[[str], None] | None,
        room: int | None,
    ) -> ModelReply:
        """One request, its failures sorted into retryable (:class:`_Retry`) or not."""
        acc = _Reply(self, on_text, on_reasoning)
        try:
            self._request(messages, tools, acc, room)
        except (Cancelled, ModelError):
            raise
        except RETRYABLE as exc:
            if isinstance(exc, openai.APIError) and (overflow := self._overflow(exc)):
                raise overflow from None
            raise _Retry(self._clean(_describe(exc)), _retry_after(exc)) from None
        except openai.APIStatusError as exc:
            if overflow := self._overflow(exc):
                raise overflow from None
            if exc.status_code not in RETRYABLE_STATUS:
                raise ModelError(
                    self._clean(f"The model endpoint refused the request: {_describe(exc)}"),
                    self._clean(_detail(exc)),
                ) from None
            raise _Retry(self._clean(_describe(exc)), _retry_after(exc)) from None
        except openai.APIError as exc:  # an error event inside the stream
            if overflow := self._overflow(exc):
                raise overflow from None
            body = exc.body if isinstance(exc.body, dict) else {}
            kind = " ".join(str(body.get(k) or "") for k in ("type", "code")).strip()
            said = _first_line(str(body.get("message") or exc.message))
            if any(_TRANSIENT_STREAM_ERROR.search(w) for w in [*kind.split(), said]):
                raise _Retry(
                    self._clean(f"the endpoint reported an error mid-reply: {said}")
                ) from None
            raise ModelError(
                self._clean(f"The model endpoint reported an error mid-reply: {said}"),
                self._clean(f"{said} ({json.dumps(exc.body, default=str)})"),
            ) from None
        except ValueError as exc:  # unparsable chunk
            problem = f"the model sent a malformed reply ({_first_line(str(exc), 120)})"
            raise _Retry(problem) from None
        return acc.result(len(messages))

    def _request(self, messages: list[dict], tools: list[dict], acc: _Reply, room: int | None):
        """Send the request (adapting to what the endpoint refuses) and read the reply."""
        while True:
            params: dict[str, Any] = {
                "model": self.endpoint.model,
                # The client walks typed params in Python on every request (0.4 s for a
                # 1,000-message conversation); the messages are plain JSON already, so
                # they go in extra_body, which is merged into the body as it is.
                "messages": [],
                "extra_body": {"messages": messages},
            }
            if tools:
                params["tools"] = tools
            if room:
                name = "max_completion_tokens" if self.quirks.get("max_tokens") else "max_tokens"
                params["extra_body"][name] = room
            streaming = not self.quirks.get("stream")
            if streaming:
                params["stream"] = True
                if not self.quirks.get("stream_options"):
                    params["stream_options"] = {"include_usage": True}
            try:
                response = self._client.chat.completions.create(**params)
            except openai.BadRequestError as exc:
                if quirk := _refused_parameter(exc, params):
                    self._learn(quirk)
                    continue
                raise
            if not streaming:
                acc.chunk(response.model_dump(exclude_none=True))
                return
            self._read_stream(response, acc)
            return

    def _read_stream(self, stream: Any, acc: _Reply) -> None:
        try:
            ctype = stream.response.headers.get("content-type", "")
            if "json" in ctype:  # a plain completion in answer to a streaming request
                data = json.loads(stream.response.read())
                if isinstance(data, dict) and isinstance(data.get("error"), dict):
                    raise openai.APIError(
                        str(data["error"].get("message") or "error"),
                        stream.response.request,
                        body=data["error"],
                    )
                self._learn("stream")
                acc.chunk(data if isinstance(data, dict) else {})
                return
            for chunk in stream:
                if self.cancel.is_set():
                    raise Cancelled()
                acc.chunk(chunk.model_dump(exclude_none=True))
        finally:
            stream.close()

    def _overflow(self, exc: openai.APIError) -> ContextOverflow | None:
        overflow = _overflow_of(exc)
        if overflow is not None:
            overflow.args = (self._clean(str(overflow)),)
            overflow.detail = self._clean(_detail(exc))
        return overflow

    def close(self) -> None:
        """Nothing to release: the connection pool is the process's (:func:`shared_http`)."""


_http_lock = threading.Lock()
_HTTP: dict[tuple[str, float], httpx.Client] = {}


def shared_http(base_url: str, timeout: float) -> httpx.Client:
    """The process's HTTP client for an endpoint and timeout, closed at exit.

    A new one builds an SSL context and loads the CA bundle (~50 ms), which every
    cell execution would otherwise pay before its first model request; sharing
    it also keeps the endpoint's connections alive between executions.
    """
    key = (base_url, timeout)
    with _http_lock:
        client = _HTTP.get(key)
        if client is None or client.is_closed:
            client = _HTTP[key] = openai.DefaultHttpxClient(
                timeout=timeout, verify=ssl_context(), event_hooks={"request": [_sent]}
            )
        return client


#: The ``on_sent`` of the :meth:`ModelClient.complete` running in this thread, if any.
_sending = threading.local()


def _sent(request: httpx.Request) -> None:
    """httpx calls this as a request goes out (in the thread that sends it)."""
    hook = getattr(_sending, "hook", None)
    if hook is not None:
        hook()


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """The process's SSL context, as httpx makes it (CA bundle, ``SSL_CERT_FILE``)."""
    return httpx.create_ssl_context()


def warm_up() -> None:
    """Do in the background, before the first agent cell, what it would otherwise wait for.

    Called by ``%load_ext``: a new kernel's first agent cell (a resume after a
    restart) then does not wait for the CA bundle to load or for the modules
    of its first model request and its timeline to be imported.
    """
    threading.Thread(target=_warm, name="jupyter-agent-warm-up", daemon=True).start()


def _warm() -> None:
    import importlib

    with contextlib.suppress(Exception):  # a warm-up: the cell does it all anyway
        openai.DefaultHttpxClient(verify=ssl_context()).close()  # imports the transport
        for module in ("openai.resources.chat.completions", "jupyter_agent.kernel.widget"):
            importlib.import_module(module)


def close_shared_http() -> None:
    """Close the shared HTTP clients (at exit; a later :func:`shared_http` makes new ones)."""
    with _http_lock:
        clients = list(_HTTP.values())
        _HTTP.clear()
    for client in clients:
        client.close()


atexit.register(close_shared_http)


def _refused_parameter(exc: openai.BadRequestError, params: dict) -> str | None:
    """The quirk to learn when an endpoint refuses a parameter we can do without."""
    text = f"{exc.message} {exc.body}".lower()
    if "stream_options" in params and "stream_options" in text:
        return "stream_options"
    if "max_tokens" in params["extra_body"] and "max_completion_tokens" in text:
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
    """The first non-empty line, at most ``limit`` characters."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


_ERROR_CODE_PREFIX = re.compile(r"^Error code: \d+ - ")


def _server_message(exc: Exception) -> str:
    """What the server said, without the client's ``Error code: NNN -`` preamble."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    message = str(getattr(exc, "message", None) or exc)
    return _ERROR_CODE_PREFIX.sub("", message)


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
    """One short phrase: the status and the first line of the server's message."""
    status = getattr(exc, "status_code", None)
    if isinstance(exc, openai.APITimeoutError):
        return "the request timed out"
    if isinstance(exc, openai.APIConnectionError):
        return _first_line(f"cannot reach the endpoint ({exc.__cause__ or exc})")
    if status:
        return f"HTTP {status}: {_first_line(_server_message(exc))}"
    return _first_line(str(exc))


def _detail(exc: Exception) -> str:
    """The whole error, for ``ModelError.detail``."""
    response = getattr(exc, "response", None)
    try:
        text = response.text if response is not None else ""
    except Exception:  # a streamed response not read
        text = ""
    status = getattr(exc, "status_code", None)
    return (f"HTTP {status}: " if status else "") + (text or _server_message(exc))
