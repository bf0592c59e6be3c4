"""Prompt caching: the scripted server's simulated OpenAI cache, and what the client reads of it.

OpenAI serves a prompt's longest prefix shared with an earlier request from its
cache, in 128-token blocks once the prefix is 1,024 tokens long, and reports
it as ``usage.prompt_tokens_details.cached_tokens``. The scripted server does
the same, so the ledger, the prices and the context view's stability are
tested over HTTP with the real ``openai`` SDK, without a provider.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from jupyter_agent.model.base import Endpoint, ModelReply
from jupyter_agent.model.chat import ChatCompletionsClient
from jupyter_agent.testing import ScriptedServer

SYSTEM = {"role": "system", "content": "You are a careful agent. " * 400}  # ~2,500 tokens


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer([{"content": "ok"}] * 20) as srv:
        yield srv


def ask(srv: ScriptedServer, messages: list[dict[str, Any]], **kw: Any) -> Any:
    client = openai.OpenAI(base_url=srv.url, api_key="sk-test", max_retries=0, timeout=5)
    return client.chat.completions.create(model="scripted", messages=messages, **kw)  # type: ignore[arg-type]


def cached(usage: Any) -> int:
    details = usage.prompt_tokens_details
    assert details is not None
    return int(details.cached_tokens)


def test_a_repeated_prefix_is_served_from_the_cache_in_128_token_blocks(
    server: ScriptedServer,
) -> None:
    first = [SYSTEM, {"role": "user", "content": "task one"}]
    r1 = ask(server, first)
    assert cached(r1.usage) == 0  # nothing seen before
    r2 = ask(
        server, [*first, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "go"}]
    )
    # The shared prefix is the whole first request: its tokens, rounded down to a block.
    shared = (len(SYSTEM["content"]) + len("task one")) // 4
    assert cached(r2.usage) == shared // 128 * 128
    assert cached(r2.usage) >= 1024 and cached(r2.usage) <= r2.usage.prompt_tokens


def test_a_changed_start_or_a_short_prefix_reads_nothing(server: ScriptedServer) -> None:
    ask(server, [SYSTEM, {"role": "user", "content": "task"}])
    changed = {"role": "system", "content": "Changed. " + SYSTEM["content"]}
    assert cached(ask(server, [changed, {"role": "user", "content": "task"}]).usage) == 0
    short = [{"role": "system", "content": "x" * 4000}, {"role": "user", "content": "a"}]
    ask(server, short)
    # 1,000 shared tokens: under the 1,024 a cache needs.
    assert cached(ask(server, [*short[:1], {"role": "user", "content": "b"}]).usage) == 0


def test_other_tools_are_another_prefix_and_streams_report_it_too(server: ScriptedServer) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    msgs = [SYSTEM, {"role": "user", "content": "task"}]
    ask(server, msgs, tools=[tool])
    assert cached(ask(server, msgs).usage) == 0  # no tools: not the same prefix
    chunks = list(
        ask(server, msgs, tools=[tool], stream=True, stream_options={"include_usage": True})
    )
    assert cached(chunks[-1].usage) >= 1024
    assert [u["prompt_tokens_details"]["cached_tokens"] > 0 for u in server.usage_log] == [
        False,
        False,
        True,
    ]


def test_no_cache_no_details(server: ScriptedServer) -> None:
    server.prompt_cache = False
    msgs = [SYSTEM, {"role": "user", "content": "task"}]
    ask(server, msgs)
    assert ask(server, msgs).usage.prompt_tokens_details is None


def test_the_client_reads_cached_tokens_into_the_usage_it_returns(server: ScriptedServer) -> None:
    client = ChatCompletionsClient(Endpoint("scripted", server.url, "sk-test", "scripted"))
    try:
        msgs = [SYSTEM, {"role": "user", "content": "task"}]
        assert client.complete(msgs, []).usage["cached_tokens"] == 0
        reply = client.complete(msgs, [])
        assert reply.usage["cached_tokens"] == reply.usage["prompt_tokens"] // 128 * 128 > 0
    finally:
        client.close()


def test_odd_cache_counts_are_dropped_like_any_count() -> None:
    reply = ModelReply(
        "hi", [], {"prompt_tokens": 10, "cached_tokens": -1, "cache_write_tokens": "3"}
    )
    assert reply.usage == {"prompt_tokens": 10}
    assert reply.odd_usage == {"cached_tokens": -1, "cache_write_tokens": "3"}


# -- the cache-aware context: a stable prefix between compactions ------------------------


def long_script(steps: int) -> list[dict[str, Any]]:
    """A python call a step (~0.9 KB of output), and the plan updated every 7th step."""
    out: list[dict[str, Any]] = []
    for i in range(steps):
        if i % 7 == 3:
            items = [{"title": f"part {n}", "status": "done" if n < i // 7 else "pending"}
                     for n in range(steps // 7 + 1)]  # fmt: skip
            out.append({"tool_calls": [{"name": "update_plan", "arguments": {"items": items}}]})
        else:
            code = f"print('x' * 880, {i})"
            out.append({"tool_calls": [{"name": "python", "arguments": {"code": code}}]})
    return [*out, {"content": "done"}]


def _sent(request: dict[str, Any]) -> list[dict[str, Any]]:
    """A request's messages without the notes the harness adds after the steps (the plan)."""
    messages = list(request["body"]["messages"])
    while messages and str(messages[-1].get("content") or "").startswith("(jupyter-agent) "):
        messages.pop()
    return messages


def test_the_prefix_only_changes_at_compactions_and_the_cache_serves_most_of_it(
    ip: Any, scripted: ScriptedServer, store_path: Any
) -> None:
    from jupyter_agent.store.duckdb.store import DuckDBStore

    steps = 120
    scripted.set_script(long_script(steps))
    ip.run_cell_magic(
        "agent", f"--model scripted --name stable --context-window 8000 --max-steps {steps + 5}",
        "Work through the steps.",
    )  # fmt: skip
    store = DuckDBStore(store_path)
    cps = store.checkpoints(store.runs()[-1].run_id)
    assert cps[-1].status == "done"
    compactions = sum(1 for c in cps if c.kind == "compaction")
    assert compactions >= 3  # the window was filled, several times
    chat = [r for r in scripted.requests if r["turn"] >= 0 and not r.get("summary")]
    assert any(m["content"].startswith("(jupyter-agent) Current plan")
               for m in chat[-1]["body"]["messages"] if m["role"] == "user")  # fmt: skip
    broken = [
        i for i in range(1, len(chat))
        if _sent(chat[i])[: len(_sent(chat[i - 1]))] != _sent(chat[i - 1])
    ]  # fmt: skip
    # Each request starts with the one before it, but after a compaction.
    assert len(broken) <= compactions, broken
    served = [u for u in scripted.usage_log if u["prompt_tokens"] > 1500]
    share = sum(u["prompt_tokens_details"]["cached_tokens"] for u in served) / sum(
        u["prompt_tokens"] for u in served
    )
    assert share >= 0.8, share
    run_rows = [c for c in cps if c.kind == "model"]
    assert sum(c.info["usage"]["cached_tokens"] for c in run_rows) > 0
