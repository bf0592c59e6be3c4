"""The Chat Completions client: streamed replies with tool calls, over the standard library.

:class:`ChatCompletionsClient` is a :class:`~jupyter_agent.model.base.ModelClient`.

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

Requests go through :mod:`.transport` (the standard library), not the ``openai`` SDK,
whose import alone would delay a new agent's first request most of a second.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from ..core.redaction import redact, secrets_in_environment
from ..errors import (
    Cancelled,
    ContextOverflow,
    EndpointError,
    ErrorEvent,
    ModelError,
    ReplyLimitExceeded,
    StatusError,
    TransportError,
)
from . import endpoint_errors as errors
from .base import Endpoint, Hooks, ModelReply, sendable
from .http import announcing
from .transport import ChatTransport, Response, without_none

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: Room asked for after a reply was cut at the length limit, and its ceiling.
MIN_ROOM, MAX_ROOM = 4096, 65536

# What each endpoint (by base URL) turned out not to support. Process-wide on
# purpose: each execution makes a new client, and none should ask again.
# Concurrency: its place in the lock order is in the docstring of jupyter_agent.loop.
_quirks_lock = threading.Lock()
_QUIRKS: dict[str, dict[str, bool]] = {}


class ChatHooks(Hooks, total=False):
    """The hooks of :class:`~jupyter_agent.model.base.Hooks`, and one of this client's own."""

    #: Each piece of the model's reasoning as it arrives, for endpoints that send it.
    on_reasoning: Callable[[str], None] | None


def _ignore(_: str) -> None:
    """A hook not given."""


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


class _CutCall(_Retry):
    """A tool call's arguments do not parse as JSON though the reply said it finished.

    Proxies (LiteLLM) end a stream cut upstream with ``finish_reason: "stop"``
    and ``[DONE]``; half arguments are the one trace of it a client can see.
    """

    def __init__(self, reply: ModelReply, name: str) -> None:
        super().__init__(f"the arguments of the {name!r} call were cut (not valid JSON)")
        self.reply = reply


def _parses(arguments: str) -> bool:
    """Whether tool-call ``arguments`` are whole JSON (empty counts: no arguments)."""
    if not arguments.strip():
        return True
    try:
        json.loads(arguments)
    except ValueError:
        return False
    return True


class _ReasoningOnly(_Retry):
    """The model reasoned and finished without an answer or a tool call."""

    def __init__(self, reply: ModelReply) -> None:
        super().__init__("the model only reasoned and gave no answer")
        self.reply = reply


def chat_usage(usage: dict) -> dict:
    """Chat Completions' ``usage`` with its cached prompt tokens under the normalized name.

    OpenAI reports what its prompt cache served as
    ``usage.prompt_tokens_details.cached_tokens`` (part of ``prompt_tokens``); the
    ledger and the prices read ``cached_tokens`` whatever the API
    (:data:`~.base.CACHE_COUNTS`). The details are kept as sent.
    """
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    if not isinstance(details, dict) or details.get("cached_tokens") is None:
        return usage
    return {**usage, "cached_tokens": details["cached_tokens"]}


@dataclass(eq=False)
class _Reply:
    """Accumulates one reply from stream deltas or a whole message, within the limits."""

    client: ChatCompletionsClient
    on_text: Callable[[str], None]
    on_reasoning: Callable[[str], None] | None
    started: float = field(default_factory=time.monotonic)
    size: int = 0
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)
    by_index: dict[int, dict] = field(default_factory=dict)
    by_id: dict[str, dict] = field(default_factory=dict)
    finish: str | None = None
    usage: dict = field(default_factory=dict)
    #: What the API needs sent back with the reply (:data:`~.base.PROVIDER_STATE`).
    provider_state: dict | None = None

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
            self.usage = chat_usage(data["usage"])
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
            provider_state=self.provider_state,
        )
        if self.finish is None:
            raise _Retry("the reply stream ended before the model finished")
        if self.finish == "content_filter":
            raise ModelError("The endpoint's content filter stopped the model's reply.")
        if self.finish == "length":
            raise _Truncated(int(reply.usage.get("completion_tokens") or self.size // 3))
        for call in reply.tool_calls:
            if not _parses(call["function"]["arguments"]):
                raise _CutCall(reply, call["function"]["name"][:60])
        if reply.content.strip() or reply.tool_calls:
            return reply
        if reply.reasoning.strip():
            raise _ReasoningOnly(reply)
        raise _Retry("the model sent an empty reply")


class ChatCompletionsClient:
    """A :class:`~jupyter_agent.model.base.ModelClient` over the Chat Completions API.

    Streams one completion at a time; ephemeral (holds sockets), never checkpointed.

    ``max_text`` caps the characters of one reply (text, reasoning and tool
    arguments); ``deadline`` caps how long one reply may stream, in seconds
    (default ``max(timeout, 600)``). ``headers`` are sent with every request
    (OpenRouter's and other gateways'); ``query`` is added to every URL (Azure's
    ``api-version``); ``extra_body`` to every request's body (Anthropic's
    ``thinking``, the Responses API's ``reasoning``).

    The native clients (:mod:`.responses`, :mod:`.anthropic_messages`) are this
    class with another request and stream reader: the retries, limits and error
    sorting are this one's, over their SDK's exceptions (the attributes below).
    """

    #: Exceptions of one attempt that are worth another (a lost connection, a timeout).
    retryable: tuple[type[Exception], ...] = (TransportError,)
    #: The endpoint answered with an error status (retried if 429, 5xx, 408, 409, 529).
    status_error: type[Exception] = StatusError
    #: The endpoint said it failed, with or without a status (an error event).
    api_error: type[Exception] = EndpointError

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
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.retries = retries
        self.backoff = backoff
        self.cancel = cancel or threading.Event()
        self.max_text = max_text
        self.deadline = deadline if deadline is not None else max(timeout, 600.0)
        # A header may carry a key (Azure's ``api-key``, a gateway's): redacted like the key.
        self.secrets = secrets_in_environment(endpoint.api_key, *(headers or {}).values())
        self._key = endpoint.base_url or "https://api.openai.com/v1"
        with _quirks_lock:
            #: What this endpoint does not support: "stream", "stream_options", "max_tokens".
            self.quirks: dict[str, bool] = dict(_QUIRKS.get(self._key, {}))
        #: Fields added to every request's body (``thinking``, ``reasoning``, ``temperature``).
        self.extra_body = dict(extra_body or {})
        self._client = self._make_client(timeout, dict(headers or {}), dict(query or {}))

    def _make_client(self, timeout: float, headers: dict[str, str], query: dict[str, str]) -> Any:
        """Where requests go, over the process's connection pool for the endpoint."""
        return ChatTransport(self._key, self.endpoint.api_key, timeout, headers, query, os.environ)

    def _clean(self, text: str) -> str:
        return redact(text, self.secrets)

    def _learn(self, quirk: str) -> None:
        """Remember that the endpoint refuses something, here and for this process."""
        self.quirks[quirk] = True
        with _quirks_lock:
            _QUIRKS.setdefault(self._key, {})[quirk] = True

    def complete(
        self, messages: list[dict], tools: list[dict], **hooks: Unpack[ChatHooks]
    ) -> ModelReply:
        """One complete reply, after retrying what is transient.

        Raises :class:`ContextOverflow` (the prompt does not fit: compact and ask
        again), :class:`ReplyLimitExceeded`, :class:`ModelError` or :class:`Cancelled`.
        A reply that is only reasoning is asked for once more, then accepted with
        empty content. A reply whose tool call's arguments are not valid JSON is
        taken for a cut stream and asked for again; if every attempt says the
        same, it is returned, and the caller answers the call as malformed.
        """
        on_text = hooks.get("on_text") or _ignore
        on_retry = hooks.get("on_retry") or _ignore
        problems: list[str] = []
        room: int | None = None
        reasoning_only: ModelReply | None = None
        attempt = 0
        while True:
            wait: float | None
            try:
                with announcing(hooks.get("on_sent")):
                    reply = self._attempt(messages, tools, on_text, hooks.get("on_reasoning"), room)
                reply.attempts, reply.retries = attempt + 1, problems
                return reply
            except Cancelled:
                raise
            except _ReasoningOnly as exc:
                if reasoning_only is not None:
                    exc.reply.attempts, exc.reply.retries = attempt + 1, problems
                    return exc.reply
                reasoning_only, problem, wait = exc.reply, str(exc), 0.0
            except _CutCall as exc:
                if attempt >= self.retries:  # whole each time: the model's own mistake
                    exc.reply.attempts, exc.reply.retries = attempt + 1, problems
                    return exc.reply
                problem, wait = str(exc), 0.0
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
        except self.retryable as exc:
            if isinstance(exc, self.api_error) and (overflow := self._overflow(exc)):
                raise overflow from None
            raise _Retry(self._clean(errors.describe(exc)), errors.retry_after(exc)) from None
        except self.status_error as exc:
            if overflow := self._overflow(exc):
                raise overflow from None
            status = getattr(exc, "status_code", None) or 0
            if status < 400:  # an error event inside a stream (Anthropic's)
                self._stream_failure(exc)
            if not errors.retryable_status(status):
                raise ModelError(
                    self._clean(self._refusal(exc)),
                    self._clean(errors.detail(exc)),
                ) from None
            raise _Retry(self._clean(errors.describe(exc)), errors.retry_after(exc)) from None
        except self.api_error as exc:  # an error event inside the stream
            if overflow := self._overflow(exc):
                raise overflow from None
            self._stream_failure(exc)
        except ValueError as exc:  # unparsable chunk
            problem = f"the model sent a malformed reply ({errors.first_line(str(exc), 120)})"
            raise _Retry(problem) from None
        return acc.result(len(messages))

    def _refusal(self, exc: Any) -> str:
        """One line for a refused request; a 404 is a model, or an API, the endpoint lacks."""
        said = errors.describe(exc)
        if exc.status_code != 404:
            return f"The model endpoint refused the request: {said}"
        model, api = self.endpoint.model, self.endpoint.api
        return (
            f"The endpoint does not know the model {model!r} or does not speak the {api} API "
            f"({said}); check the model name, or pick the API with --model "
            "anthropic:NAME, responses:NAME or chat:NAME."
        )

    def _stream_failure(self, exc: Any) -> NoReturn:
        """Raise what an error event inside the stream amounts to: a retry or a refusal."""
        said, transient = errors.stream_error(exc)
        if transient:
            raise _Retry(self._clean(f"the endpoint reported an error mid-reply: {said}")) from None
        raise ModelError(
            self._clean(f"The model endpoint reported an error mid-reply: {said}"),
            self._clean(errors.stream_error_detail(exc, said)),
        ) from None

    def _request(
        self, messages: list[dict], tools: list[dict], acc: _Reply, room: int | None
    ) -> None:
        """Send the request (adapting to what the endpoint refuses) and read the reply."""
        while True:
            body: dict[str, Any] = {"model": self.endpoint.model}
            if tools:
                body["tools"] = tools
            streaming = not self.quirks.get("stream")
            if streaming:
                body["stream"] = True
                if not self.quirks.get("stream_options"):
                    body["stream_options"] = {"include_usage": True}
            body.update(self.extra_body)
            body["messages"] = sendable(messages)
            if room:
                name = "max_completion_tokens" if self.quirks.get("max_tokens") else "max_tokens"
                body[name] = room
            try:
                response = self._client.post("/chat/completions", body)
            except StatusError as exc:
                if exc.status_code == 400 and (quirk := errors.refused_parameter(exc, body)):
                    self._learn(quirk)
                    continue
                raise
            self._read(response, acc, streaming)
            return

    def _read(self, response: Response, acc: _Reply, streaming: bool) -> None:
        """Fold the reply into ``acc``: events of a stream, or one JSON completion."""
        try:
            if not streaming or "json" in response.headers.get("content-type", ""):
                data = response.json()  # a plain completion, asked for or not
                if isinstance(data, dict) and isinstance(data.get("error"), dict):
                    error = data["error"]
                    raise ErrorEvent(str(error.get("message") or "error"), error)
                if streaming:
                    self._learn("stream")
                acc.chunk(without_none(data) if isinstance(data, dict) else {})
                return
            for chunk in response.events():
                if self.cancel.is_set():
                    raise Cancelled()
                acc.chunk(without_none(chunk) if isinstance(chunk, dict) else {})
        finally:
            response.close()

    def _overflow(self, exc: Any) -> ContextOverflow | None:
        overflow = errors.overflow_of(exc)
        if overflow is not None:
            overflow.args = (self._clean(str(overflow)),)
            overflow.detail = self._clean(errors.detail(exc))
        return overflow

    def close(self) -> None:
        """Nothing to release: the connection pool is the process's (:func:`.shared_pool`)."""
