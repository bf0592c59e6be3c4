"""ModelClient against the scripted server over HTTP, with the real ``openai`` client.

Every broken reply format an endpoint can produce must be either repaired
(retried, continued, parsed another way) or turned into a :class:`ModelError`;
a truncated or half-streamed reply must never come back as a complete one,
because the caller checkpoints it and restores it forever.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jupyter_agent.model import ContextOverflow, Endpoint, ModelClient, context_overflow
from jupyter_agent.testing import ScriptedServer

USER = [{"role": "user", "content": "hello there"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "python",
            "description": "Run code.",
            "parameters": {"type": "object", "properties": {"code": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(fault_delay=2.0) as srv:
        yield srv


def model_client(srv: ScriptedServer, **kw: object) -> ModelClient:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5.0)
    return ModelClient(Endpoint("scripted", srv.url, "sk-test-key-0000", srv.url), **kw)  # type: ignore[arg-type]


# -- context overflow --------------------------------------------------------

OVERFLOW_MESSAGES = [
    # OpenAI
    (
        "This model's maximum context length is 16385 tokens. However, your messages resulted "
        "in 17000 tokens. Please reduce the length of the messages.",
        "context_length_exceeded",
        400,
        (16385, 17000),
    ),
    # vLLM
    (
        "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
        "(4000 in the messages, 1000 in the completion). Please reduce the length of the "
        "messages or completion.",
        None,
        400,
        (4096, 5000),
    ),
    (
        "Prompt length of 5000 is longer than the model's context length (4096).",
        None,
        400,
        (4096, 5000),
    ),
    (
        "The decoder prompt (length 5000) is longer than the maximum model length of 4096.",
        None,
        400,
        (4096, 5000),
    ),
    # Ollama
    ("the input length exceeds the context length", None, 400, (None, None)),
    # LM Studio
    (
        "Trying to keep the first 5000 tokens when context the overflows. However, the model is "
        "loaded with context length of only 4096 tokens, which is not enough.",
        None,
        400,
        (4096, 5000),
    ),
    # llama.cpp server (fields of its error body appended)
    (
        "the request exceeds the available context size, try increasing it "
        "exceed_context_size_error n_prompt_tokens=5000 n_ctx=4096",
        None,
        400,
        (4096, 5000),
    ),
    ("Requested tokens (5000) exceed context window of 4096", None, 400, (4096, 5000)),
    # LiteLLM
    (
        "litellm.ContextWindowExceededError: litellm.BadRequestError: ContextWindowExceededError: "
        "OpenAIException - This model's maximum context length is 8192 tokens. However, your "
        "messages resulted in 9000 tokens.",
        None,
        400,
        (8192, 9000),
    ),
    ("ContextWindowExceededError", None, 400, (None, None)),
    # Anthropic-compatible proxies
    ("prompt is too long: 210000 tokens > 200000 maximum", None, 400, (200000, 210000)),
    # Not overflows
    (
        "Rate limit reached for gpt-4 on tokens per min (TPM): Limit 10000, Requested 12000.",
        "rate_limit_exceeded",
        429,
        None,
    ),
    ("Invalid value for 'temperature': must be between 0 and 2.", None, 400, None),
    ("Incorrect API key provided: sk-bogus.", "invalid_api_key", 401, None),
]


@pytest.mark.parametrize(("message", "code", "status", "expected"), OVERFLOW_MESSAGES)
def test_context_overflow_classification(
    message: str, code: str | None, status: int, expected: tuple[int | None, int | None] | None
) -> None:
    assert context_overflow(message, code, status) == expected


def test_context_window_refusal_raises_context_overflow_without_retry(
    server: ScriptedServer,
) -> None:
    server.context_window = 50
    server.set_script([{"content": "never"}])
    messages = [{"role": "user", "content": "x" * 400}]
    retries: list[str] = []
    with pytest.raises(ContextOverflow) as info:
        model_client(server).complete(messages, TOOLS, on_retry=retries.append)
    assert info.value.limit == 50
    assert info.value.requested is not None and info.value.requested > 50
    assert "context window" in str(info.value)
    assert retries == []
    assert [r["outcome"] for r in server.requests] == ["error:context_length_exceeded"]

    server.context_window = 10_000  # the same request fits a larger window
    reply = model_client(server).complete(messages, TOOLS)
    assert reply.content == "never"
