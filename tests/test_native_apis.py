"""The native clients (Anthropic Messages, OpenAI Responses) over HTTP with the real SDKs.

The scripted server speaks both wire formats; what each client sends is read
back from its request log, so the mapping of the loop's conversation, the
reasoning kept between calls, the cache breakpoints and the retries are seen
as the provider would see them. The last tests pick the API as a user does,
in the test process's own IPython shell.
"""

from __future__ import annotations

import itertools
from typing import Any

import anthropic
import pytest
from IPython.core.error import UsageError

from jupyter_agent.errors import ConfigError, ContextOverflow, ModelError
from jupyter_agent.model.anthropic_messages import (
    MAX_BREAKPOINTS,
    AnthropicClient,
    breakpoints,
    to_messages,
)
from jupyter_agent.model.base import PROVIDER_STATE, Endpoint, with_api
from jupyter_agent.model.chat import ChatCompletionsClient, _Reply
from jupyter_agent.model.clients import client_class
from jupyter_agent.model.responses import ResponsesClient, _Items, input_items
from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer
from jupyter_agent.testing.anthropic_wire import breakpoints_in

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "python",
            "description": "Run Python code.",
            "parameters": {"type": "object", "properties": {"code": {"type": "string"}}},
        },
    }
]
START = [{"role": "system", "content": "You are careful."}, {"role": "user", "content": "Add."}]


def call(code: str, **extra: Any) -> dict:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}], **extra}


def client(api: str, server: ScriptedServer, **kw: Any) -> ChatCompletionsClient:
    endpoint = Endpoint("scripted", server.url, "sk-test-key-0000", server.url, api)
    return client_class(api)(endpoint, backoff=0, **kw)


def native(server: ScriptedServer, i: int = -1) -> dict:
    """The request body the server got, as the client sent it."""
    return server.requests[i]["body"]["native"]


def converse(api: str, server: ScriptedServer, steps: int) -> list[dict]:
    """``steps`` replies to a growing conversation, each tool call answered; the messages."""
    c = client(api, server)
    messages = list(START)
    for _ in range(steps):
        reply = c.complete(messages, TOOLS)
        messages.append(reply.message())
        for tc in reply.tool_calls:
            messages.append({"role": "tool", "tool_call_id": tc["id"], "content": "ok"})
    return messages


@pytest.mark.parametrize("api", ["anthropic", "responses"])
def test_tool_calls_and_results_round_trip_and_reasoning_is_sent_back(api: str) -> None:
    script = [call("x = 1", reasoning="First x."), call("y = 2"), {"content": "Done."}]
    with ScriptedServer(script) as server:
        messages = converse(api, server, 3)
        assert messages[-1]["content"] == "Done."
        first = messages[2]
        assert first["tool_calls"][0]["function"]["arguments"] == '{"code": "x = 1"}'
        state = first[PROVIDER_STATE]
        assert state["api"] == api and len(state["items"]) == 1
        assert server.turns_requested() == [0, 1, 2]
        last = native(server)
        if api == "anthropic":
            (turn,) = [m for m in last["messages"] if m["role"] == "assistant"][:1]
            thinking, use = turn["content"]
            assert thinking == {
                "type": "thinking",
                "thinking": "First x.",
                "signature": "sig-chatcmpl-0-0",
            }
            assert use["type"] == "tool_use" and use["input"] == {"code": "x = 1"}
            results = [
                b for m in last["messages"] for b in m["content"] if b["type"] == "tool_result"
            ]
            assert [b["tool_use_id"] for b in results] == ["call_0_0", "call_1_0"]
            assert last["system"][0]["text"] == "You are careful."
        else:
            assert last["store"] is False and last["include"] == ["reasoning.encrypted_content"]
            assert "previous_response_id" not in last
            kinds = [i.get("type") or i["role"] for i in last["input"]]
            assert kinds == [
                "system",
                "user",
                "reasoning",
                "function_call",
                "function_call_output",
                "function_call",
                "function_call_output",
            ]
            assert last["input"][2]["encrypted_content"] == "enc-chatcmpl-0-0"


@pytest.mark.parametrize("api", ["anthropic", "responses"])
def test_overload_cut_dropped_and_errored_streams_are_asked_again(api: str) -> None:
    faults = ["529", "cut", "drop", "stream_error"]
    with ScriptedServer([call("x = 1", faults=faults), {"content": "Done."}]) as server:
        sent: list[int] = []
        reply = client(api, server).complete(list(START), TOOLS, on_sent=lambda: sent.append(1))
        assert reply.tool_calls[0]["function"]["arguments"] == '{"code": "x = 1"}'
        assert reply.attempts == 5 == len(sent), reply.retries
        assert "529" in reply.retries[0]
        assert "ended before the model finished" in reply.retries[1]
        assert "mid-reply" in reply.retries[3]
        assert server.turns_requested() == [0] * 5


@pytest.mark.parametrize("api", ["anthropic", "responses"])
@pytest.mark.parametrize(
    "fault, said", [("stream_error_fatal", "mid-reply"), ("content_filter", "content filter")]
)
def test_a_fatal_error_event_or_a_refusal_is_a_model_error(api: str, fault: str, said: str) -> None:
    with ScriptedServer([{"content": "A reply.", "faults": [fault]}]) as server:
        with pytest.raises(ModelError, match=said):
            client(api, server).complete(list(START), TOOLS)
        assert server.turns_requested() == [0]


@pytest.mark.parametrize("api", ["anthropic", "responses"])
def test_a_prompt_over_the_window_is_a_context_overflow_with_its_numbers(api: str) -> None:
    with ScriptedServer([{"content": "x"}], context_window=50) as server:
        long = [*START, {"role": "user", "content": "word " * 200}]
        with pytest.raises(ContextOverflow) as info:
            client(api, server).complete(long, TOOLS)
        assert info.value.limit == 50 and info.value.requested and info.value.requested > 50


@pytest.mark.parametrize("api", ["anthropic", "responses"])
def test_a_reply_cut_at_the_length_limit_is_asked_again_with_room(api: str) -> None:
    with ScriptedServer([{"content": "A long answer.", "faults": ["length"]}]) as server:
        reply = client(api, server).complete(list(START), [])
        assert reply.content == "A long answer." and reply.attempts == 2
        key = "max_tokens" if api == "anthropic" else "max_output_tokens"
        assert native(server)[key] == 4096


def test_anthropic_usage_counts_cache_reads_and_writes_in_the_prompt() -> None:
    script = [call(f"v{i} = {i}") for i in range(4)]
    with ScriptedServer(script) as server:
        c = client("anthropic", server)
        messages = list(START)
        usages = []
        for _ in range(4):
            reply = c.complete(messages, TOOLS)
            usages.append(reply.usage)
            messages += [
                reply.message(),
                {"role": "tool", "tool_call_id": reply.tool_calls[0]["id"], "content": "ok " * 50},
            ]
        first, *later = usages
        assert first["cached_tokens"] == 0 and first["cache_write_tokens"] > 0
        for usage in later:  # each reads what the one before wrote, and writes its new end
            assert usage["cached_tokens"] > 0 and usage["cache_write_tokens"] > 0
            assert usage["prompt_tokens"] >= usage["cached_tokens"] + usage["cache_write_tokens"]
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def shapes() -> list[list[dict]]:
    """Conversations of every shape the loop makes: notes, pinned user words, tool results."""
    pieces = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "python", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "ok"},
        {"role": "user", "content": "More."},
        {"role": "system", "content": "A note."},
        {"role": "assistant", "content": "Text."},
    ]
    out = []
    for n in range(6):
        out += [START + list(combo) for combo in itertools.product(pieces, repeat=n)][:400]
    return out


def test_the_harness_never_places_more_cache_breakpoints_than_anthropic_accepts() -> None:
    for shape in shapes():
        system, turns = to_messages(shape)
        placed = breakpoints(system, turns)
        assert placed == breakpoints_in({"system": system, "messages": turns}) <= MAX_BREAKPOINTS
        assert "cache_control" in turns[-1]["content"][-1]  # the end is always written


def test_the_server_refuses_a_fifth_breakpoint_as_anthropic_does() -> None:
    with ScriptedServer([{"content": "x"}]) as server:
        c = client("anthropic", server)
        system, turns = to_messages(
            [*START, {"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
        )
        mark = {"type": "ephemeral"}
        for block in [*system, *(m["content"][-1] for m in turns)]:  # four, and a tool: five
            block["cache_control"] = mark
        with pytest.raises(
            anthropic.BadRequestError, match="maximum of 4 blocks with cache_control"
        ):
            tool = {"name": "python", "input_schema": {"type": "object"}, "cache_control": mark}
            c._client.messages.create(
                model="m", max_tokens=10, messages=turns, system=system, tools=[tool]
            )


def test_provider_state_is_never_sent_to_another_api() -> None:
    with ScriptedServer([{"content": "Done."}]) as server:
        said = {
            "role": "assistant",
            "content": "Hi.",
            PROVIDER_STATE: {"api": "anthropic", "items": [{"type": "thinking"}]},
        }
        client("chat", server).complete([*START, said, {"role": "user", "content": "Go on."}], [])
        sent = server.requests[-1]["body"]["messages"]
        assert sent[2] == {"role": "assistant", "content": "Hi."}
        client("responses", server).complete(
            [*START, said, {"role": "user", "content": "Go on."}], []
        )
        assert {"role": "assistant", "content": "Hi."} in native(server)["input"]
        assert not any(i.get("type") == "thinking" for i in native(server)["input"])


def test_headers_and_query_go_with_every_request_and_header_keys_are_redacted() -> None:
    with ScriptedServer([{"content": "x", "faults": ["401"]}]) as server:
        headers = {"api-key": "azure-secret-key-123456", "HTTP-Referer": "https://example.org"}
        c = client("chat", server, headers=headers, query={"api-version": "2024-10-21"})
        with pytest.raises(ModelError) as info:
            c.complete(list(START), [])
        request = server.requests[-1]
        assert request["headers"]["api-key"] == "azure-secret-key-123456"
        assert request["headers"]["http-referer"] == "https://example.org"
        assert request["path"].endswith("?api-version=2024-10-21")
        assert "azure-secret-key-123456" not in str(info.value) + str(info.value.detail)


def test_an_unknown_model_or_a_missing_api_is_one_clear_line() -> None:
    with ScriptedServer([]) as server:
        endpoint = Endpoint("claude-nope", server.url + "/missing", "k", "x", "anthropic")
        with pytest.raises(ModelError) as info:
            AnthropicClient(endpoint, backoff=0).complete(list(START), [])
        message = str(info.value)
        assert "does not know the model 'claude-nope'" in message and "\n" not in message
        assert "anthropic:NAME" in message
        endpoint = Endpoint("gpt-nope", server.url + "/missing", "k", "x", "responses")
        with pytest.raises(ModelError, match="does not speak the responses API"):
            ResponsesClient(endpoint, backoff=0).complete(list(START), [])


def test_the_model_prefix_or_the_setting_picks_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai.test/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://anthropic.test")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    e = Endpoint.resolve("anthropic:claude-sonnet-4-5")
    assert (e.api, e.model, e.base_url) == (
        "anthropic",
        "claude-sonnet-4-5",
        "http://anthropic.test",
    )
    e = Endpoint.resolve("responses:gpt-5")
    assert (e.api, e.model, e.base_url) == ("responses", "gpt-5", "http://openai.test/v1")
    assert Endpoint.resolve(with_api("gpt-5", "responses")).api == "responses"
    assert with_api("offline", "anthropic") == "offline"
    assert Endpoint.resolve("llama3:8b").model == "llama3:8b"  # an Ollama tag, not an API
    assert Endpoint.resolve("chat:llama3:8b").model == "llama3:8b"
    with pytest.raises(
        ConfigError, match="asks for the anthropic API but AgentMagics.api is 'responses'"
    ):
        with_api("anthropic:claude-x", "responses")
    with pytest.raises(ConfigError, match="Unknown API 'gemini'"):
        with_api("x", "gemini")
    monkeypatch.delenv("ANTHROPIC_BASE_URL")
    with pytest.raises(ConfigError, match="Set ANTHROPIC_API_KEY"):
        Endpoint.resolve("anthropic:claude-x")
    with pytest.raises(ConfigError, match="No model named after 'anthropic:'"):
        Endpoint.resolve("anthropic:", base_url="http://x")


@pytest.mark.parametrize(
    "api, extra",
    [
        ("anthropic", {"thinking": {"type": "enabled", "budget_tokens": 4096}}),
        ("responses", {"reasoning": {"effort": "high", "summary": "auto"}}),
        ("chat", {"temperature": 0.2}),
    ],
)
def test_extra_body_fields_go_with_every_request(api: str, extra: dict) -> None:
    with ScriptedServer([{"content": "x"}]) as server:
        client(api, server, extra_body=extra).complete(list(START), TOOLS)
        body = server.requests[-1]["body"]
        sent = body if api == "chat" else body["native"]
        assert {k: sent[k] for k in extra} == extra


def test_anthropic_max_tokens_is_lowered_to_what_the_model_allows_and_remembered() -> None:
    script = [{"content": "Short.", "faults": ["max_tokens"]}, {"content": "Again."}]
    with ScriptedServer(script) as server:
        c = client("anthropic", server)
        reply = c.complete(list(START), [])
        assert reply.content == "Short." and reply.attempts == 1  # not a retry: a setting
        assert [native(server, i)["max_tokens"] for i in (0, 1)] == [8192, 4096]
        c.complete([*START, reply.message(), {"role": "user", "content": "More."}], [])
        assert native(server)["max_tokens"] == 4096


def test_the_api_setting_picks_the_wire_and_a_contradicting_prefix_is_refused(
    ip, store_path, monkeypatch, capsys
) -> None:
    with ScriptedServer([{"content": "Hello from Messages."}]) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        ip.run_line_magic("config", "AgentMagics.api = 'anthropic'")
        try:
            ip.run_cell_magic("agent", "--model scripted --name picked", "Say hello.")
            assert "Hello from Messages." in capsys.readouterr().out
            assert [r["path"] for r in server.requests] == ["/v1/messages"]
            with pytest.raises(UsageError) as info:
                ip.run_cell_magic("agent", "--model responses:scripted --name mismatch", "Hi.")
        finally:
            ip.run_line_magic("config", "AgentMagics.api = ''")
        message = str(info.value)
        assert "asks for the responses API but AgentMagics.api is 'anthropic'" in message
        assert "\n" not in message
        assert len(server.requests) == 1
    assert [r.agent for r in Store(store_path).runs()] == ["picked"]


def test_a_run_resumed_without_a_model_keeps_asking_its_api(
    ip, store_path, monkeypatch, capsys
) -> None:
    """The API is part of the model a run records, so every later resume asks it again."""
    script = [
        {"tool_calls": [{"name": "python", "arguments": {"code": f"r{i} = {i}"}}]} for i in range(3)
    ]
    with ScriptedServer([*script, {"content": "Done."}]) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        ip.run_cell_magic("agent", "--model anthropic:scripted --name keep --max-steps 1", "Go.")
        for _ in range(3):
            ip.run_cell_magic("agent", "--name keep --max-steps 1", "Go.")
        out = capsys.readouterr().out
        assert "Done." in out, out
        assert {r["path"] for r in server.requests} == {"/v1/messages"}
        assert server.turns_requested() == [0, 1, 2, 3]


def test_images_are_sent_as_each_api_wants_them() -> None:
    data = "data:image/png;base64,iVBORw0KGgo="
    parts = [{"type": "text", "text": "Look."}, {"type": "image_url", "image_url": {"url": data}}]
    _, turns = to_messages([*START, {"role": "user", "content": parts}])
    image = turns[0]["content"][-1]
    assert image == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    items = input_items([{"role": "user", "content": parts}])
    assert items[0]["content"][1] == {"type": "input_image", "image_url": data, "detail": "auto"}


def test_after_a_compaction_the_system_prompt_and_task_are_still_read_from_the_cache() -> None:
    """A summary joins the task's turn; the task's own breakpoint keeps its prefix cached."""

    def second_read(first: list[dict], second: list[dict]) -> int:
        with ScriptedServer([{"content": "x"}, {"content": "y"}]) as server:
            c = client("anthropic", server)
            c.complete(first, TOOLS)
            return int(c.complete(second, TOOLS).usage["cached_tokens"])

    def view(task: str, summary: str) -> list[dict]:
        return [START[0], {"role": "user", "content": task}, {"role": "user", "content": summary}]

    task = "Add the numbers in the sales table and explain the total. " * 5
    compacted = second_read(view(task, "Summary one."), view(task, "Summary two, changed."))
    other = task.replace("Add", "Sum")  # as long: the same prompt size, another prefix
    system_only = second_read(view(task, "Summary one."), view(other, "Summary two, changed."))
    assert compacted > system_only > 0


def test_a_responses_message_sent_whole_without_deltas_is_kept() -> None:
    """Some gateways send a message's text only in its ``output_item.done``."""
    with ScriptedServer([]) as server:
        c = client("responses", server)
        acc = _Reply(c, lambda _: None, None)
        items = _Items()
        part = {"type": "output_text", "text": "Whole."}
        item = {"id": "msg_1", "type": "message", "role": "assistant", "content": [part]}
        for event in (
            {"type": "response.output_item.done", "item": item},
            {"type": "response.completed", "response": {"usage": {"input_tokens": 3}}},
        ):
            c._event(event, acc, items, None)  # type: ignore[attr-defined]
        assert acc.result(2).content == "Whole."
        streamed = _Reply(c, lambda _: None, None)
        delta = {"type": "response.output_text.delta", "item_id": "msg_1", "delta": "Whole."}
        seen = _Items()
        for event in (delta, {"type": "response.output_item.done", "item": item}):
            c._event(event, streamed, seen, None)  # type: ignore[attr-defined]
        assert "".join(streamed.content) == "Whole."  # not twice
