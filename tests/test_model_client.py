"""ChatCompletionsClient against the scripted server over HTTP.

Every broken reply format an endpoint can produce must be either repaired
(retried, continued, parsed another way) or turned into a :class:`ModelError`;
a truncated or half-streamed reply must never come back as a complete one,
because the caller checkpoints it and restores it forever.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from jupyter_agent.errors import ContextOverflow, ModelError, ReplyLimitExceeded
from jupyter_agent.model.base import Endpoint
from jupyter_agent.model.chat import ChatCompletionsClient
from jupyter_agent.model.endpoint_errors import context_overflow
from jupyter_agent.model.transport import shared_pool
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


def model_client(srv: ScriptedServer, **kw: object) -> ChatCompletionsClient:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5.0)
    return ChatCompletionsClient(Endpoint("scripted", srv.url, "sk-test-key-0000", srv.url), **kw)  # type: ignore[arg-type]


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


def call(code: str, **extra: object) -> dict:
    return {"name": "python", "arguments": {"code": code}, **extra}


def outcomes(srv: ScriptedServer) -> list[str]:
    return [r["outcome"] for r in srv.requests]


# -- 1. a cut stream is not a reply --------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
def test_cut_reply_is_retried_not_returned(server: ScriptedServer, streaming: bool) -> None:
    server.stream_json = not streaming
    code = "total = sum(range(10))\nprint(total)"
    server.set_script([{"content": "Computing.", "tool_calls": [call(code)], "faults": ["cut"]}])
    retries: list[str] = []
    reply = model_client(server).complete(USER, TOOLS, on_retry=retries.append)
    assert json.loads(reply.tool_calls[0]["function"]["arguments"]) == {"code": code}
    assert reply.content == "Computing." and reply.finish_reason == "tool_calls"
    assert outcomes(server) == ["fault:cut", "reply"]
    assert reply.attempts == 2 and reply.retries == [
        "the reply stream ended before the model finished"
    ]
    assert retries and retries[0].startswith("the reply stream ended before the model finished")


def test_cut_text_reply_after_retries_is_an_error(server: ScriptedServer) -> None:
    server.set_script([{"content": "A long final answer.", "faults": ["cut"] * 3}])
    with pytest.raises(ModelError, match="ended before the model finished"):
        model_client(server, retries=2).complete(USER, TOOLS)
    assert outcomes(server) == ["fault:cut"] * 3


# -- 2. finish_reason "length" ---------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
def test_length_cut_asks_for_room(server: ScriptedServer, streaming: bool) -> None:
    server.stream_json = not streaming
    code = "x = 1\n" * 20
    server.set_script([{"tool_calls": [call(code)], "faults": ["length"]}])
    retries: list[str] = []
    reply = model_client(server).complete(USER, TOOLS, on_retry=retries.append)
    assert json.loads(reply.tool_calls[0]["function"]["arguments"]) == {"code": code}
    first, second = (r["body"] for r in server.requests)
    assert "max_tokens" not in first and second["max_tokens"] >= 4096
    assert "cut at the length limit" in retries[0] and "4,096 tokens" in retries[0]
    assert reply.retries == [
        "the reply was cut at the length limit; asking for room for 4,096 tokens"
    ]


def test_length_cut_every_time_is_an_error_never_a_reply(server: ScriptedServer) -> None:
    server.set_script([{"content": "An answer that is always cut.", "faults": ["length"] * 3}])
    with pytest.raises(ModelError, match="length limit"):
        model_client(server, retries=2).complete(USER, TOOLS)
    rooms = [r["body"].get("max_tokens") for r in server.requests]
    assert rooms == [None, 4096, 8192]


def test_content_filter_stop_is_an_error_not_a_reply(server: ScriptedServer) -> None:
    server.set_script([{"content": "Half of this is filtered.", "faults": ["content_filter"]}])
    with pytest.raises(ModelError, match="content filter stopped"):
        model_client(server).complete(USER, TOOLS)
    assert outcomes(server) == ["fault:content_filter"]


# -- 3. error events inside the stream -------------------------------------------


def test_transient_stream_error_event_is_retried(server: ScriptedServer) -> None:
    server.set_script([{"content": "Fine now.", "faults": ["stream_error"]}])
    reply = model_client(server).complete(USER, TOOLS)
    assert reply.content == "Fine now." and reply.attempts == 2
    assert "error mid-reply: The server had an error" in reply.retries[0]


def test_permanent_stream_error_event_is_a_model_error(server: ScriptedServer) -> None:
    server.set_script([{"content": "Never.", "faults": ["stream_error_fatal"] * 5}])
    with pytest.raises(ModelError) as info:
        model_client(server).complete(USER, TOOLS)
    assert str(info.value) == (
        "The model endpoint reported an error mid-reply: The response was filtered due to the "
        "prompt triggering the content management policy."
    )
    assert "content_filter" in info.value.detail
    assert outcomes(server) == ["fault:stream_error_fatal"]


# -- 4. parallel tool calls without index -----------------------------------------


@pytest.mark.parametrize("mode", ["omit", "same", None])
def test_parallel_tool_calls_are_kept_apart(server: ScriptedServer, mode: str | None) -> None:
    entry = {"tool_calls": [call("a = 1"), call("b = 2"), call("c = 3")], "tool_call_index": mode}
    server.set_script([entry])
    reply = model_client(server).complete(USER, TOOLS)
    names = [c["function"]["name"] for c in reply.tool_calls]
    codes = [json.loads(c["function"]["arguments"])["code"] for c in reply.tool_calls]
    assert names == ["python"] * 3 and codes == ["a = 1", "b = 2", "c = 3"]
    assert [c["id"] for c in reply.tool_calls] == ["call_0_0", "call_0_1", "call_0_2"]


# -- 5. reasoning models ------------------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
@pytest.mark.parametrize("streaming", [True, False])
def test_reasoning_is_kept_apart_from_the_message(
    server: ScriptedServer, field: str, streaming: bool
) -> None:
    server.stream_json = not streaming
    server.set_script(
        [{"reasoning": "First I think.", "reasoning_field": field, "content": "Answer."}]
    )
    thoughts: list[str] = []
    reply = model_client(server).complete(USER, TOOLS, on_reasoning=thoughts.append)
    assert reply.reasoning == "First I think." and "".join(thoughts) == "First I think."
    assert reply.content == "Answer."
    assert reply.message() == {"role": "assistant", "content": "Answer."}
    assert reply.attempts == 1


def test_reasoning_only_reply_is_asked_once_more_then_accepted(server: ScriptedServer) -> None:
    server.set_script([{"reasoning": "Hmm, nothing to add.", "content": ""}])
    retries: list[str] = []
    reply = model_client(server).complete(USER, TOOLS, on_retry=retries.append)
    assert reply.content == "" and reply.reasoning == "Hmm, nothing to add."
    assert reply.attempts == 2 and len(server.requests) == 2
    assert retries[0].startswith("the model only reasoned and gave no answer")


def test_reasoning_only_then_answer(server: ScriptedServer) -> None:
    replies = iter([{"reasoning": "thinking", "content": ""}, {"content": "Answer."}])
    server.set_script(lambda body: next(replies))
    reply = model_client(server).complete(USER, TOOLS)
    assert reply.content == "Answer." and reply.attempts == 2
    assert reply.retries == ["the model only reasoned and gave no answer"]


# -- 6. endpoints without streaming or stream_options --------------------------------


def test_plain_json_answer_to_a_streaming_request(server: ScriptedServer) -> None:
    server.stream_json = True
    server.set_script([{"content": "Plain.", "tool_calls": [call("1 + 1")]}, {"content": "Two."}])
    c = model_client(server)
    reply = c.complete(USER, TOOLS)
    assert reply.content == "Plain." and reply.usage["total_tokens"] > 0
    assert json.loads(reply.tool_calls[0]["function"]["arguments"]) == {"code": "1 + 1"}
    assert c.quirks == {"stream": True}
    # Remembered: the next request (even from a new client) does not ask for a stream.
    again = model_client(server).complete(
        [*USER, reply.message(), {"role": "user", "content": "?"}], TOOLS
    )
    assert again.content == "Two."
    assert [r["body"].get("stream") for r in server.requests] == [True, None]


def test_refused_stream_options_are_dropped(server: ScriptedServer) -> None:
    server.reject_stream_options = True
    server.set_script([{"content": "Streamed."}])
    c = model_client(server)
    reply = c.complete(USER, TOOLS)
    assert reply.content == "Streamed." and reply.attempts == 1
    assert outcomes(server) == ["error:stream_options", "reply"]
    assert c.quirks == {"stream_options": True}
    model_client(server).complete(USER, TOOLS)
    assert outcomes(server) == ["error:stream_options", "reply", "reply"]


# -- 7. retries are visible --------------------------------------------------------


def test_attempts_and_retries_recorded_on_the_reply(server: ScriptedServer) -> None:
    server.set_script([{"content": "ok", "faults": ["429", "500", "drop"]}])
    reply = model_client(server).complete(USER, TOOLS)
    assert reply.attempts == 4
    assert reply.retries[0] == "HTTP 429: Rate limit reached (scripted fault)."
    assert reply.retries[1] == "HTTP 500: The server had an error (scripted fault)."
    assert reply.retries[2].startswith("cannot reach the endpoint")
    assert model_client(server).complete(USER, TOOLS).retries == []


# -- 8. one short sentence per error -------------------------------------------------


def test_error_message_is_one_short_line_with_detail_kept(server: ScriptedServer) -> None:
    server.set_script([{"content": "x", "faults": ["proxy_400"]}])
    with pytest.raises(ModelError) as info:
        model_client(server).complete(USER, TOOLS)
    text = str(info.value)
    assert "\n" not in text and len(text) <= 260
    assert "Error code: 400 -" not in text.split("HTTP 400: ")[0]
    assert text.startswith(
        "The model endpoint refused the request: HTTP 400: litellm.BadRequestError"
    )
    assert "Traceback" in info.value.detail and "Received Model Group" in info.value.detail


def test_server_error_after_retries_names_status_once(server: ScriptedServer) -> None:
    server.set_script([{"content": "x", "faults": ["503"] * 3}])
    with pytest.raises(ModelError) as info:
        model_client(server, retries=2).complete(USER, TOOLS)
    assert str(info.value) == (
        "The model endpoint kept failing (HTTP 503: The server is overloaded (scripted fault).) "
        "after 3 attempts."
    )
    assert info.value.detail.count("HTTP 503") == 3


# -- 9. redaction ----------------------------------------------------------------------


def test_wrong_key_is_redacted_from_the_error(server: ScriptedServer) -> None:
    server.set_script([{"content": "x", "faults": ["401"]}])
    client = ChatCompletionsClient(
        Endpoint("scripted", server.url, "sk-bogus", server.url), backoff=0.01
    )
    with pytest.raises(ModelError) as info:
        client.complete(USER, TOOLS)
    assert "Incorrect API key provided: [REDACTED]." in str(info.value)
    assert "sk-bogus" not in str(info.value) and "sk-bogus" not in info.value.detail
    assert server.requests[0]["headers"]["authorization"] == "Bearer sk-bogus"


def test_secret_in_environment_is_redacted_from_retry_notices(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTHER_SERVICE_TOKEN", "tok-secret-value-42")
    server.set_script([{"content": "x", "faults": ["401"]}])
    client = ChatCompletionsClient(
        Endpoint("scripted", server.url, "tok-secret-value-42", server.url), backoff=0.01
    )
    with pytest.raises(ModelError) as info:
        client.complete(USER, TOOLS)
    assert "tok-secret-value-42" not in str(info.value) + info.value.detail


# -- 10. size cap and deadline -----------------------------------------------------------


def test_reply_larger_than_the_cap_is_stopped(server: ScriptedServer) -> None:
    server.set_script([{"content": "x" * 5000}])
    with pytest.raises(ReplyLimitExceeded, match="passed 1,000 characters"):
        model_client(server, max_text=1000).complete(USER, TOOLS)
    assert len(server.requests) == 1  # not retried


def test_endless_stream_hits_the_deadline(server: ScriptedServer) -> None:
    server.set_script([{"content": "x", "faults": ["endless"]}])
    started = time.monotonic()
    with pytest.raises(ReplyLimitExceeded, match="still streaming after 1 s"):
        model_client(server, deadline=1.0).complete(USER, TOOLS)
    assert time.monotonic() - started < 5
    assert len(server.requests) == 1
    assert model_client(server).deadline == 600.0


def test_clients_of_one_endpoint_share_one_http_client(server: ScriptedServer) -> None:
    """Each execution makes a client: the SSL context and connection pool are made once."""
    server.set_script([{"content": "first"}])
    first = model_client(server)
    assert first.complete(USER, TOOLS).content == "first"
    first.close()
    pool = shared_pool(server.url, 5.0)
    assert not pool.is_closed  # closing an execution's client leaves the pool to the next
    second = model_client(server)
    assert second._client.pool is pool
    server.set_script([{"content": "second"}])
    assert second.complete(USER, TOOLS).content == "second"
    assert model_client(server, timeout=7.0)._client.pool is not pool
