"""The scripted server must speak real OpenAI wire format and inject faults faithfully.

Everything here goes over HTTP with the official ``openai`` client, because the
point of the server is that agent code cannot tell it from the real service.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from jupyter_agent.model.base import OFFLINE_MODEL
from jupyter_agent.model.offline import offline_reply
from jupyter_agent.testing import ScriptedServer, offline_base_url
from jupyter_agent.testing.wire import (
    EXHAUSTED,
    SUMMARY_PROMPT_PREFIX,
    is_summary_request,
    summary_text,
)

USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(fault_delay=2.0) as srv:
        yield srv


def client(
    srv: ScriptedServer | str, *, retries: int = 0, timeout: float = 5.0, key: str = "sk-test"
) -> openai.OpenAI:
    url = srv if isinstance(srv, str) else srv.url
    return openai.OpenAI(base_url=url, api_key=key, max_retries=retries, timeout=timeout)


def after(turns: int) -> list[dict[str, Any]]:
    """A conversation with ``turns`` assistant messages already in it."""
    msgs: list[dict[str, Any]] = list(USER)
    for i in range(turns):
        msgs += [{"role": "assistant", "content": f"a{i}"}, {"role": "user", "content": "more"}]
    return msgs


def stream(c: openai.OpenAI, messages: list[dict[str, Any]], **kw: Any) -> list[Any]:
    return list(
        c.chat.completions.create(
            model="scripted",
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            **kw,
        )
    )


def http(srv: ScriptedServer, method: str, path: str, data: bytes | None = None) -> Any:
    base = srv.url.removesuffix("/v1")
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


# -- wire format -------------------------------------------------------------


def test_streaming_text_in_several_chunks_with_usage(server: ScriptedServer) -> None:
    server.set_script([{"content": "The quick brown fox jumps."}])
    chunks = stream(client(server), USER)

    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices]
    pieces = [p for p in pieces if p]
    assert len(pieces) == 3
    assert "".join(pieces) == "The quick brown fox jumps."
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == len("The quick brown fox jumps.") // 4 + 1
    assert last.usage.prompt_tokens == len("hello there") // 4
    assert {ch.id for ch in chunks} == {"chatcmpl-0-0"}
    assert {ch.model for ch in chunks} == {"scripted"}


def test_streaming_tool_calls_reassemble(server: ScriptedServer) -> None:
    args = {"code": "import math\nprint(math.pi)", "timeout": 10}
    server.set_script(
        [
            {
                "content": "Running two things.",
                "tool_calls": [
                    {"name": "python", "arguments": args},
                    {"name": "broken", "arguments": '{"code": "x', "id": "my-id"},
                ],
            }
        ]
    )
    chunks = stream(client(server), USER)

    calls: dict[int, dict[str, str]] = {}
    fragments: dict[int, int] = {}
    for ch in chunks:
        if not ch.choices:
            continue
        for tc in ch.choices[0].delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            fragments[tc.index] = fragments.get(tc.index, 0) + 1
            if tc.id:
                slot["id"] = tc.id
            if tc.function and tc.function.name:
                slot["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                slot["arguments"] += tc.function.arguments
    assert fragments == {0: 2, 1: 2}
    assert calls[0]["id"] == "call_0_0" and calls[0]["name"] == "python"
    assert json.loads(calls[0]["arguments"]) == args
    assert calls[1] == {"id": "my-id", "name": "broken", "arguments": '{"code": "x'}
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1].usage is not None


def test_stream_helper_accumulates_final_message(server: ScriptedServer) -> None:
    server.set_script([{"tool_calls": [{"name": "python", "arguments": {"code": "1+1"}}]}])
    with client(server).chat.completions.stream(
        model="scripted",
        messages=USER,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    ) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    msg = final.choices[0].message
    assert msg.tool_calls is not None
    assert json.loads(msg.tool_calls[0].function.arguments) == {"code": "1+1"}  # type: ignore[union-attr]
    assert final.usage is not None and final.usage.total_tokens > 0


def test_no_usage_chunk_without_include_usage(server: ScriptedServer) -> None:
    server.set_script([{"content": "hi"}])
    chunks = list(
        client(server).chat.completions.create(
            model="m",
            messages=USER,  # type: ignore[arg-type]
            stream=True,
        )
    )
    assert all(ch.choices for ch in chunks)
    assert all(ch.usage is None for ch in chunks)


def test_non_stream_completion(server: ScriptedServer) -> None:
    server.set_script(
        [
            {
                "content": "calling",
                "tool_calls": [{"name": "python", "arguments": {"code": "2"}}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7},
            }
        ]
    )
    r = client(server).chat.completions.create(model="gpt-x", messages=USER)  # type: ignore[arg-type]
    assert r.id == "chatcmpl-0-0" and r.model == "gpt-x" and r.object == "chat.completion"
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "calling"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id == "call_0_0" and call.function.name == "python"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"code": "2"}  # type: ignore[union-attr]
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (11, 7, 18)


def test_models_endpoint(server: ScriptedServer) -> None:
    ids = [m.id for m in client(server).models.list()]
    assert ids == ["scripted", "offline"]


def test_invalid_body_is_400(server: ScriptedServer) -> None:
    for data in (b"{not json", b'{"model": "m"}'):
        with pytest.raises(urllib.error.HTTPError) as info:
            http(server, "POST", "/v1/chat/completions", data)
        assert info.value.code == 400
        assert "message" in json.loads(info.value.read())["error"]
    assert server.turns_requested() == []
    assert [r["outcome"] for r in server.requests] == ["error:400", "error:400"]


# -- turn selection and the log ---------------------------------------------


def test_turn_selection_and_attempts(server: ScriptedServer) -> None:
    server.set_script([{"content": "zero"}, {"content": "one"}])
    c = client(server, key="sk-secret-123")

    def ask(turns: int) -> str | None:
        r = c.chat.completions.create(model="m", messages=after(turns))  # type: ignore[arg-type]
        return r.choices[0].message.content

    assert ask(0) == "zero"
    assert ask(1) == "one"
    assert ask(0) == "zero"  # a re-issued request gets the same reply
    assert ask(5) == EXHAUSTED
    assert server.turns_requested() == [0, 1, 0, 5]
    assert [r["attempt"] for r in server.requests] == [0, 0, 1, 0]
    rec = server.requests[1]
    assert rec["path"] == "/v1/chat/completions" and rec["outcome"] == "reply"
    assert rec["body"]["messages"] == after(1)
    assert rec["headers"]["authorization"] == "Bearer sk-secret-123"
    assert isinstance(rec["time"], float)

    log = http(server, "GET", "/_log?brief=1")
    assert [r["turn"] for r in log] == [0, 1, 0, 5] and "body" not in log[0]
    assert http(server, "GET", "/_log")[0]["body"]["model"] == "m"
    assert [r["turn"] for r in http(server, "GET", "/_log?brief=1&since=2")] == [0, 5]
    assert http(server, "GET", "/_log?since=9") == []
    with pytest.raises(urllib.error.HTTPError, match="400"):
        http(server, "GET", "/_log?since=-1")

    assert http(server, "POST", "/_script", json.dumps({"script": [{"content": "new"}]}).encode())
    assert http(server, "POST", "/_reset_log", b"{}") == {"ok": True}
    assert server.requests == []
    assert ask(0) == "new"


def test_bad_script_entry_is_a_500(server: ScriptedServer) -> None:
    server.set_script([{"tool_calls": [{"arguments": {}}]}, {"faults": ["bogus"]}])
    c = client(server)
    for turns in (0, 1):
        with pytest.raises(openai.InternalServerError):
            c.chat.completions.create(model="m", messages=after(turns))  # type: ignore[arg-type]
    assert server.requests[-1]["outcome"] == "error:unknown fault 'bogus'"


def test_callable_script_sees_request_body(server: ScriptedServer) -> None:
    server.set_script(lambda body: {"content": f"{len(body['messages'])} messages"})
    r = client(server).chat.completions.create(model="m", messages=after(2))  # type: ignore[arg-type]
    assert r.choices[0].message.content == "5 messages"


def test_chunk_delay_spreads_stream(server: ScriptedServer) -> None:
    server.chunk_delay = 0.05
    server.set_script([{"content": "abcdef"}])
    times = []
    for _ in client(server).chat.completions.create(
        model="m",
        messages=USER,  # type: ignore[arg-type]
        stream=True,
    ):
        times.append(time.monotonic())
    assert times[-1] - times[0] >= 0.1


# -- faults -------------------------------------------------------------------


def test_429_then_success_with_client_retries(server: ScriptedServer) -> None:
    server.set_script([{"content": "finally", "faults": ["429"]}])
    r = client(server, retries=2).chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "finally"
    assert [(x["attempt"], x["outcome"]) for x in server.requests] == [
        (0, "fault:429"),
        (1, "reply"),
    ]


def test_429_without_retries_raises_rate_limit(server: ScriptedServer) -> None:
    server.set_script([{"content": "x", "faults": ["429"]}])
    with pytest.raises(openai.RateLimitError) as info:
        client(server).chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    assert info.value.response.headers["retry-after"] == "0"
    assert info.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize("kind", ["500", "503"])
def test_server_errors(server: ScriptedServer, kind: str) -> None:
    server.set_script([{"content": "ok", "faults": [kind]}])
    c = client(server)
    with pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    assert info.value.status_code == int(kind)
    r = c.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "ok"


def test_drop_mid_stream_raises_connection_error(server: ScriptedServer) -> None:
    server.set_script([{"content": "a long answer that gets cut", "faults": ["drop"]}])
    got: list[Any] = []
    with pytest.raises(openai.APIConnectionError) as info:
        for ch in client(server).chat.completions.create(
            model="m",
            messages=USER,  # type: ignore[arg-type]
            stream=True,
        ):
            got.append(ch)
    assert type(info.value) is openai.APIConnectionError
    assert "incomplete chunked read" in str(info.value.__cause__)
    assert [ch.choices[0].delta.content for ch in got] == ["", "a long an"]
    # The retried request (same conversation, attempt 1) completes.
    chunks = stream(client(server), USER)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "a long answer that gets cut"
    assert [r["outcome"] for r in server.requests] == ["fault:drop", "reply"]


@pytest.mark.parametrize("module", ["httpx", "httpx2"])
def test_sse_framing_with_plain_httpx(server: ScriptedServer, module: str) -> None:
    httpx = pytest.importorskip(module)
    server.set_script([{"content": "abc"}, {"content": "abcdef", "faults": ["drop"]}])
    body = {"model": "m", "messages": USER, "stream": True}
    with httpx.stream("POST", server.url + "/chat/completions", json=body, timeout=5) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["transfer-encoding"] == "chunked"
        lines = [line for line in resp.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)

    body["messages"] = after(1)
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", server.url + "/chat/completions", json=body, timeout=5) as resp,
    ):
        list(resp.iter_lines())


def test_drop_non_stream_and_retry(server: ScriptedServer) -> None:
    server.set_script([{"content": "ok", "faults": ["drop", "drop"]}])
    with pytest.raises(openai.APIConnectionError):
        client(server).chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    r = client(server, retries=1).chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "ok"
    assert server.turns_requested() == [0, 0, 0]


@pytest.mark.parametrize("streaming", [False, True])
def test_timeout(server: ScriptedServer, streaming: bool) -> None:
    server.set_script([{"content": "late", "faults": ["timeout"], "fault_delay": 1.0}])
    c = client(server, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(model="m", messages=USER, stream=streaming)  # type: ignore[call-overload]
    assert time.monotonic() - start < 1.0
    r = c.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "late"


def test_malformed_non_stream_raises_json_error(server: ScriptedServer) -> None:
    server.set_script([{"content": "ok", "faults": ["malformed"]}])
    with pytest.raises(json.JSONDecodeError):
        client(server, retries=2).chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    assert server.turns_requested() == [0]  # not retried by the client


def test_malformed_stream_raises_json_error(server: ScriptedServer) -> None:
    server.set_script([{"content": "ok", "faults": ["malformed"]}])
    with pytest.raises(json.JSONDecodeError):
        stream(client(server), USER)


@pytest.mark.parametrize("streaming", [False, True])
def test_empty_reply(server: ScriptedServer, streaming: bool) -> None:
    server.set_script([{"content": "not this", "tool_calls": [{"name": "t"}], "faults": ["empty"]}])
    if streaming:
        chunks = stream(client(server), USER)
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == ""
        assert not any(ch.choices[0].delta.tool_calls for ch in chunks if ch.choices)
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    else:
        r = client(server).chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
        assert r.choices[0].message.content == ""
        assert not r.choices[0].message.tool_calls
    assert server.requests[-1]["outcome"] == "fault:empty"


def test_faults_apply_in_attempt_order(server: ScriptedServer) -> None:
    server.set_script([{"content": "ok", "faults": ["500", "empty"]}])
    c = client(server)
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    contents = [
        c.chat.completions.create(model="m", messages=USER).choices[0].message.content  # type: ignore[arg-type]
        for _ in range(2)
    ]
    assert contents == ["", "ok"]
    assert [r["outcome"] for r in server.requests] == ["fault:500", "fault:empty", "reply"]


def test_stop_interrupts_sleeping_fault() -> None:
    srv = ScriptedServer([{"content": "x", "faults": ["timeout"]}]).start()
    c = client(srv, timeout=0.2)
    with pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    start = time.monotonic()
    srv.stop()
    assert time.monotonic() - start < 2.0


# -- offline model ------------------------------------------------------------

TASK = """Compute a few things.

```python
x = 6 * 7
print(x)
```

Some prose, and a shell block that is skipped:

```bash
ls
```

```
print(x + 1)
```
"""


def test_offline_model_runs_blocks_then_summarises() -> None:
    c = client(offline_base_url())
    assert offline_base_url() == offline_base_url()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are an agent."},
        {"role": "user", "content": TASK},
    ]
    codes = []
    for step in range(3):
        r = c.chat.completions.create(model=OFFLINE_MODEL, messages=messages)  # type: ignore[arg-type]
        msg = r.choices[0].message
        if not msg.tool_calls:
            break
        assert msg.content == f"Step {step + 1} of 2: running the next code block."
        call = msg.tool_calls[0]
        assert call.function.name == "python"  # type: ignore[union-attr]
        codes.append(json.loads(call.function.arguments)["code"])  # type: ignore[union-attr]
        messages.append(msg.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": f"{42 + step}\n"})
    assert codes == ["x = 6 * 7\nprint(x)", "print(x + 1)"]
    assert r.model == OFFLINE_MODEL
    assert msg.content is not None
    assert msg.content.startswith("Done: ran 2 code block(s).")
    assert "Last result:\n43" in msg.content
    assert "error" not in msg.content


def test_offline_model_streams_and_reports_errors() -> None:
    messages = [
        {"role": "user", "content": "```python\n1/0\n```"},
        {"role": "assistant", "content": "Step 1 of 1"},
        {
            "role": "tool",
            "content": "Traceback (most recent call last):\n  ...\nZeroDivisionError: division by zero"
            + "x" * 1000,
        },
    ]
    chunks = stream(client(offline_base_url()), messages)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert "The last block raised an error; see above." in text
    assert "ZeroDivisionError" in text
    assert len(text) < 700


def test_offline_model_without_code_explains_itself() -> None:
    r = client(offline_base_url()).chat.completions.create(
        model=OFFLINE_MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    text = r.choices[0].message.content or ""
    assert not r.choices[0].message.tool_calls
    assert "offline demo model" in text
    for needle in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "--model NAME", "```python"):
        assert needle in text


def test_offline_reply_uses_first_user_message() -> None:
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "```py\na = 1\n```"}]},
            {"role": "user", "content": "```python\nignored()\n```"},
        ]
    }
    entry = offline_reply(body)
    assert entry["tool_calls"] == [{"name": "python", "arguments": {"code": "a = 1"}}]


# -- context window, compaction markers, summaries ---------------------------


def test_context_window_refused_like_openai(server: ScriptedServer) -> None:
    server.set_script([{"content": "fits"}])
    server.context_window = 30
    c = client(server)
    long = [{"role": "user", "content": "y" * 200}]
    with pytest.raises(openai.BadRequestError) as info:
        stream(c, long)
    assert info.value.status_code == 400 and info.value.code == "context_length_exceeded"
    assert "maximum context length is 30 tokens" in info.value.message
    assert "resulted in 50 tokens" in info.value.message
    # Tools count too: this prompt fits alone, not with the tool schema.
    tools = [{"type": "function", "function": {"name": "p" * 100, "parameters": {}}}]
    short = [{"role": "user", "content": "z" * 80}]
    with pytest.raises(openai.BadRequestError):
        stream(c, short, tools=tools)
    assert [r["outcome"] for r in server.requests] == ["error:context_length_exceeded"] * 2
    assert "".join(ch.choices[0].delta.content or "" for ch in stream(c, short) if ch.choices) == (
        "fits"
    )
    assert server.requests[-1]["attempt"] == 0  # refusals are no attempts of the turn


def test_context_window_from_constructor() -> None:
    assert ScriptedServer().context_window is None
    with (
        ScriptedServer([{"content": "x"}], context_window=5) as srv,
        pytest.raises(openai.BadRequestError),
    ):
        client(srv).chat.completions.create(model="m", messages=after(3))  # type: ignore[arg-type]


def test_turn_counts_replies_summarized_by_compaction(server: ScriptedServer) -> None:
    server.set_script([{"content": f"reply {i}"} for i in range(8)])
    compacted = [
        {"role": "system", "content": "You are an agent."},
        {"role": "user", "content": "[5 earlier model replies summarized] Summary: ..."},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "go on"},
    ]
    r = client(server).chat.completions.create(model="m", messages=compacted)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "reply 6"
    assert server.turns_requested() == [6]


def test_offline_model_continues_after_compaction() -> None:
    task = "```python\na = 1\n```\n```python\nb = 2\n```\n```python\nc = 3\n```"
    messages = [
        {"role": "user", "content": task},
        {"role": "user", "content": "[2 earlier tool results summarized] ran a and b"},
    ]
    c = client(offline_base_url())
    r = c.chat.completions.create(model=OFFLINE_MODEL, messages=messages)  # type: ignore[arg-type]
    call = (r.choices[0].message.tool_calls or [])[0]
    assert json.loads(call.function.arguments) == {"code": "c = 3"}  # type: ignore[union-attr]
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "ok"})
    r = c.chat.completions.create(model=OFFLINE_MODEL, messages=messages)  # type: ignore[arg-type]
    assert (r.choices[0].message.content or "").startswith("Done: ran 3")


def summary_request(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    prompt = SUMMARY_PROMPT_PREFIX + ". Summarize the conversation below."
    return [{"role": "system", "content": prompt}, *history]


def test_summary_request_answered_outside_the_script(server: ScriptedServer) -> None:
    server.set_script([{"content": "turn zero", "faults": ["500"]}, {"content": "turn one"}])
    history: list[dict[str, Any]] = [{"role": "user", "content": "task"}]
    for i in range(25):
        code = f"x{i} = {i}  # a long comment that goes well beyond sixty characters\nmore()"
        history += [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"c{i}",
                        "type": "function",
                        "function": {"name": "python", "arguments": json.dumps({"code": code})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": f"c{i}", "content": f"result {i}\nsecond line"},
        ]
    c = client(server)
    chunks = stream(c, summary_request(history))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    lines = text.split("\n")
    assert lines[0] == "Summary of the work so far: "
    ran = [line for line in lines if line.startswith("- ran: ")]
    assert len(ran) == 20
    assert (
        ran[0] == "- ran: " + "x5 = 5  # a long comment that goes well beyond sixty characters"[:60]
    )
    assert lines[-1] == "- last result: result 24"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert summary_text(history) == text
    # Non-streaming too; neither consumed the script nor counted as an attempt.
    r = c.chat.completions.create(model="m", messages=summary_request(history[:3]))  # type: ignore[arg-type]
    assert r.choices[0].message.content == (
        "Summary of the work so far: \n- ran: "
        + "x0 = 0  # a long comment that goes well beyond sixty characters"[:60]
        + "\n- last result: result 0"
    )
    assert sum(1 for r in server.requests if r["summary"]) == 2
    assert server.turns_requested() == []
    with pytest.raises(openai.InternalServerError):  # the fault of turn 0 is still ahead
        c.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    # With tools, or without the system prompt, it is an ordinary request.
    r = c.chat.completions.create(
        model="m",
        messages=summary_request([])[1:] + USER,  # type: ignore[arg-type]
    )
    assert r.choices[0].message.content == "turn zero"
    assert not is_summary_request({"messages": summary_request([]), "tools": [{}]})
    assert is_summary_request({"messages": summary_request([])})


# -- command line --------------------------------------------------------------


def test_cli_serves_script(tmp_path: Any) -> None:
    path = tmp_path / "script.json"
    path.write_text(json.dumps([{"content": "from the cli"}]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_agent.testing", "--script", str(path), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        r = client(url).chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
        assert r.choices[0].message.content == "from the cli"
    finally:
        proc.terminate()
        proc.wait(timeout=5)
