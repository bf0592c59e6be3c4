"""The seam between the agent loop and a model: :class:`ModelClient` and its records.

The loop asks a model for one reply at a time and checkpoints what it gets,
so it depends on nothing but this small protocol. The Chat Completions client
(:class:`~jupyter_agent.model.chat.ChatCompletionsClient`), the built-in
offline model (:class:`~jupyter_agent.model.offline.OfflineClient`) and test
doubles all implement it; none inherits from it, the match is structural.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypedDict

from ..errors import ConfigError

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: The model name of the built-in offline model (:mod:`jupyter_agent.model.offline`).
OFFLINE_MODEL = "offline"
#: The token counts of ``usage`` the loop reads; each is checked before it is kept.
USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")
#: The counts of a prompt's tokens a provider's cache served (``cached_tokens``) or
#: stored (``cache_write_tokens``), normalized from each API's own names; both are
#: part of ``prompt_tokens`` and priced at their own rates (:mod:`..core.budget`).
CACHE_COUNTS = ("cached_tokens", "cache_write_tokens")
_CHECKED = USAGE_COUNTS + CACHE_COUNTS
#: The key of an assistant message under which a native client keeps what its API
#: needs sent back on the next request (Anthropic's thinking blocks, the Responses
#: API's encrypted reasoning items): ``{"api": NAME, "items": [...]}``. It is
#: checkpointed with the message, so a resume sends it back; other APIs never see it.
PROVIDER_STATE = "provider_state"
#: The largest count one reply can report: ten times the largest context windows
#: known. A larger one is a misreport, and would overflow the ledger's columns.
MAX_COUNT = 100_000_000


#: The APIs a model is asked through: OpenAI Chat Completions (any OpenAI-compatible
#: server), the OpenAI Responses API, Anthropic's Messages API.
APIS = ("chat", "responses", "anthropic")


def split_api(model: str) -> tuple[str | None, str]:
    """``("anthropic", "claude-x")`` for ``"anthropic:claude-x"``; ``(None, model)`` without
    a known API prefix (``llama3:8b`` is an Ollama model name, not an API)."""
    prefix, colon, rest = model.partition(":")
    return (prefix, rest) if colon and prefix in APIS else (None, model)


def with_api(model: str, api: str | None) -> str:
    """``model`` with the API of the setting ``api`` (``AgentMagics.api``) as its prefix.

    A model that names its API keeps it; naming another than the setting is
    an error, said in one line before anything is written.
    """
    if not api or model == OFFLINE_MODEL:
        return model
    if api not in APIS:
        raise ConfigError(f"Unknown API {api!r}: AgentMagics.api is one of {', '.join(APIS)}.")
    named, bare = split_api(model)
    if named and named != api:
        raise ConfigError(
            f"The model {model} asks for the {named} API but AgentMagics.api is {api!r}: "
            "drop the prefix or change the setting."
        )
    return f"{api}:{bare}"


@dataclass(frozen=True)
class Endpoint:
    """Where a model is reached: its name, the server, the key, how to describe it, the API."""

    model: str
    base_url: str | None
    api_key: str
    label: str  # how the endpoint is described to the user
    api: str = "chat"  # one of APIS

    @property
    def name(self) -> str:
        """The model as the user names it: with its API (``anthropic:NAME``) unless Chat
        Completions. What a run records, so a resume asks the same API; ``model`` is what
        the API is sent, and what windows and prices are known by."""
        return self.model if self.api == "chat" else f"{self.api}:{self.model}"

    @classmethod
    def resolve(
        cls, model: str, base_url: str | None = None, api_key: str | None = None
    ) -> Endpoint:
        """The endpoint of ``model``, the environment filling in what is not given.

        ``model`` may name its API (``anthropic:claude-sonnet-4-5``,
        ``responses:gpt-5``, ``chat:NAME``; see :func:`with_api`), else Chat
        Completions. Raises :class:`ConfigError` before anything is written when
        no model or no server is known, saying what to set.
        """
        if model == OFFLINE_MODEL:
            return cls(model, None, "offline", "built-in offline demo model")
        named, model = split_api(model)
        api = named or "chat"
        if api == "anthropic":
            return cls._anthropic(model, base_url, api_key)
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
        return cls(model, base_url, api_key or "none", base_url or "OpenAI", api)

    @classmethod
    def _anthropic(cls, model: str, base_url: str | None, api_key: str | None) -> Endpoint:
        """An Anthropic endpoint: ``$ANTHROPIC_BASE_URL`` and ``$ANTHROPIC_API_KEY`` fill in."""
        base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        api_key = api_key or os.environ.get("ANTHROPIC_API_KEY") or None
        if not model:
            raise ConfigError(
                "No model named after 'anthropic:' (e.g. anthropic:claude-sonnet-4-5)."
            )
        if not api_key and not base_url:
            raise ConfigError(
                f"No Anthropic endpoint configured for model {model!r}. Set ANTHROPIC_API_KEY "
                "(or ANTHROPIC_BASE_URL for a proxy speaking the Messages API)."
            )
        return cls(model, base_url, api_key or "none", base_url or "Anthropic", "anthropic")


def sendable(messages: list[dict]) -> list[dict]:
    """``messages`` without :data:`PROVIDER_STATE`, for an API that does not know it.

    The list itself when no message has any (the usual case: no copy).
    """
    if not any(PROVIDER_STATE in m for m in messages):
        return messages
    return [{k: v for k, v in m.items() if k != PROVIDER_STATE} for m in messages]


def provider_items(message: dict, api: str) -> list:
    """The items :data:`PROVIDER_STATE` keeps for ``api`` in an assistant message, if any."""
    state = message.get(PROVIDER_STATE)
    if isinstance(state, dict) and state.get("api") == api:
        items = state.get("items")
        return items if isinstance(items, list) else []
    return []


def checked_usage(usage: dict) -> dict:
    """``usage`` without what cannot be a token count: the loop budgets and sizes with it.

    An endpoint's numbers are not trusted blindly: a count of
    :data:`USAGE_COUNTS` or :data:`CACHE_COUNTS` that is not a whole number from 0 to :data:`MAX_COUNT`
    (a string, a negative, NaN, 2**40) is dropped, as is any ``None``; the rest
    is kept as sent. :func:`odd_counts` says what was dropped.
    """
    if not isinstance(usage, dict):
        return {}
    return {
        key: value
        for key, value in usage.items()
        if value is not None and (key not in _CHECKED or _is_count(value))
    }


def odd_counts(usage: object) -> dict[str, object]:
    """The counts of ``usage`` that :func:`checked_usage` drops, as sent (``None`` aside)."""
    if not isinstance(usage, dict):
        return {} if usage is None else {"usage": usage}
    return {
        key: usage[key]
        for key in _CHECKED
        if usage.get(key) is not None and not _is_count(usage[key])
    }


def _is_count(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and 0 <= value <= MAX_COUNT


@dataclass
class ModelReply:
    """One complete reply. ``reasoning`` is kept for display, never sent back to the API.

    ``usage`` is checked on construction (:func:`checked_usage`), whoever made the reply.
    """

    content: str
    tool_calls: list[dict]
    usage: dict = field(default_factory=dict)
    reasoning: str = ""
    finish_reason: str = "stop"
    #: Requests it took (1 when the first one succeeded).
    attempts: int = 1
    #: The problems that caused each retry, in order (redacted).
    retries: list[str] = field(default_factory=list)
    #: What the API needs sent back with this reply (see :data:`PROVIDER_STATE`).
    provider_state: dict | None = None
    #: The counts the endpoint sent that were not token counts (dropped from ``usage``).
    odd_usage: dict[str, object] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.odd_usage = odd_counts(self.usage)
        self.usage = checked_usage(self.usage)

    def message(self) -> dict:
        """The assistant message for the conversation (without the reasoning)."""
        msg: dict = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        if self.provider_state:
            msg[PROVIDER_STATE] = self.provider_state
        return msg

    @property
    def tokens(self) -> int:
        return int(self.usage.get("total_tokens") or 0)

    def counted(self, prompt: int, completion: int) -> tuple[int, dict, list[str]]:
        """The reply's tokens for the ledger, its usage to record, and the counts estimated.

        A count the endpoint did not send (some servers and proxies send no
        ``usage``) or sent wrong is the caller's estimate (``prompt``,
        ``completion``), so a budget still stops a run. The total is the
        endpoint's if it sent one, else the sum.
        """
        usage = dict(self.usage)
        estimated = [k for k in ("prompt_tokens", "completion_tokens") if k not in usage]
        usage.setdefault("prompt_tokens", max(prompt, 0))
        usage.setdefault("completion_tokens", max(completion, 0))
        if "total_tokens" not in usage:
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            estimated.append("total_tokens")
        return int(usage["total_tokens"]), usage, estimated


class Hooks(TypedDict, total=False):
    """What a caller of :meth:`ModelClient.complete` hears while the reply is made.

    Every hook is optional and called in the caller's thread; a client calls
    none of them after ``complete`` has returned or raised.
    """

    #: Each piece of the reply's text as it arrives (the reply still carries all of it).
    on_text: Callable[[str], None]
    #: A transient failure and the wait before the next attempt, before waiting.
    on_retry: Callable[[str], None]
    #: A request has gone out: work that would slow it down may start now. Called
    #: once per request, so possibly more than once; the caller must not rely on
    #: it being called at all (a client may have nothing to send).
    on_sent: Callable[[], None] | None


class ModelClient(Protocol):
    """What the agent loop needs of a model: one complete reply per call.

    Like an HTTP transport, a client is ephemeral (it may hold sockets, it is
    never checkpointed) and made for one execution of a run, which closes it.
    A conforming client guarantees:

    * **Only a complete reply is returned.** The loop checkpoints the reply and
      restores it forever, so a half reply (a stream cut short, a reply cut at
      the length limit) must be retried or raised, never returned.
    * **Failures are errors of** :mod:`jupyter_agent.errors`: :class:`ModelError`
      when the model cannot answer (the run pauses, resumable),
      :class:`ContextOverflow` when the prompt does not fit (the loop compacts
      and asks again), :class:`ReplyLimitExceeded` for a runaway reply.
    * **Usage is checked, not trusted**: the reply's ``usage`` holds only counts
      that are numbers from 0 to :data:`MAX_COUNT` (:class:`ModelReply` sees to
      that, and keeps what it dropped in ``odd_usage``) and may be empty when
      the model did not say.
    * **Cancellation**: once :attr:`cancel` is set, ``complete`` raises
      :class:`Cancelled` instead of waiting or streaming on; the loop also
      reads it between steps and passes it to the namespace lock.
    * **Hooks** (:class:`Hooks`) are called as documented there, ``on_sent``
      for each request that goes out.
    """

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint asked; the loop reads its ``model`` (window, price, learnt limits)."""
        ...

    @property
    def cancel(self) -> threading.Event:
        """Set by the user's stop: the reply in progress and the run stop at once."""
        ...

    def complete(
        self, messages: list[dict], tools: list[dict], **hooks: Unpack[Hooks]
    ) -> ModelReply:
        """The model's complete reply to ``messages``, offered ``tools`` (none: a summary)."""
        ...

    def close(self) -> None:
        """Release what the client holds; called once, when the execution ends."""
        ...
