"""Runs against the native wire formats (Anthropic Messages, OpenAI Responses), end to end.

A stream the server cuts is asked for again, and a kernel SIGKILLed while a
reply streams resumes in a new kernel: no completed step is run or asked
again, and the reasoning each completed reply carried (Anthropic's signed
thinking, the Responses API's encrypted items) is sent back from the store.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer
from jupyter_agent.testing.wire import turn_of

APIS = ["anthropic", "responses"]
ENV = {"anthropic": "ANTHROPIC_BASE_URL", "responses": "OPENAI_BASE_URL"}


def script(log: Path) -> list[dict]:
    """Three tool steps, each reasoning first and appending a line to ``log``, then an answer."""
    codes = ["a = 1", "b = a + 1", "c = a + b"]
    steps = [
        {
            "reasoning": f"Step {i} next.",
            "tool_calls": [
                {
                    "name": "python",
                    "arguments": {
                        "code": f"with open({str(log)!r}, 'a') as f: f.write('step{i}\\n')\n"
                        f"{code}\nprint('ran step{i}')"
                    },
                }
            ],
        }
        for i, code in enumerate(codes)
    ]
    return [*steps, {"content": "Finished: c == 3."}]


def reasoning_sent(body: dict[str, Any]) -> list[str]:
    """The kept reasoning a request carried back: signatures, or encrypted contents."""
    if "messages" in body:
        blocks = [b for m in body["messages"] for b in m["content"]]
        return [b["signature"] for b in blocks if b.get("type") == "thinking"]
    return [i["encrypted_content"] for i in body["input"] if i.get("type") == "reasoning"]


@pytest.mark.parametrize("api", APIS)
def test_streams_the_server_cuts_are_asked_again_and_no_step_repeats(
    ip, store_path, tmp_path, monkeypatch, capsys, api: str
) -> None:
    log = tmp_path / "effects.log"
    steps = script(log)
    steps[1] = {**steps[1], "faults": ["cut", "drop", "stream_error"]}
    with ScriptedServer(steps) as server:
        monkeypatch.setenv(ENV[api], server.url)
        ip.run_cell_magic("agent", f"--model {api}:scripted --name cut", "Build a, b and c.")
        out = capsys.readouterr().out
        assert "Finished: c == 3." in out, out
        assert server.turns_requested() == [0, 1, 1, 1, 1, 2, 3]
        assert log.read_text().splitlines() == ["step0", "step1", "step2"]
        assert ip.user_ns["c"] == 3
        last = server.requests[-1]["body"]["native"]
        assert len(reasoning_sent(last)) == 3
    store = Store(store_path)
    (run,) = store.runs()
    assert run.model == f"{api}:scripted"
    model_steps = [c for c in store.checkpoints(run.run_id) if c.kind == "model"]
    assert model_steps[1].info["attempts"] == 4


@pytest.mark.parametrize("api", APIS)
def test_a_kernel_killed_mid_stream_resumes_and_sends_the_kept_reasoning_back(
    kernel_factory, tmp_path, api: str
) -> None:
    log = tmp_path / "effects.log"
    steps = script(log)
    cell = f"%%agent --model {api}:scripted\nBuild a, b and c step by step."
    with ScriptedServer() as server:

        def slow_turn_2(body: dict[str, Any]) -> dict[str, Any]:
            turn = turn_of(body["messages"])
            if turn == 2 and not server.chunk_delay:
                server.chunk_delay = 0.5  # turn 2 streams slowly: the kernel dies in it
            return steps[turn]

        server.set_script(slow_turn_2)
        k1 = kernel_factory(**{ENV[api]: server.url})
        k1.start(cell, cell_id="cell-n")
        deadline = time.monotonic() + 60
        while 2 not in server.turns_requested() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.2)  # the first events of turn 2 are out, the rest are not
        k1.kill()
        assert server.turns_requested() == [0, 1, 2]
        server.chunk_delay = 0
        server.set_script(steps)
        k2 = kernel_factory(**{ENV[api]: server.url})
        result = k2.run(cell, cell_id="cell-n")
        assert result.status == "ok", result.text
        assert "Finished: c == 3." in result.text
        # Only the call in flight (turn 2) was asked again; no step ran twice.
        assert server.turns_requested() == [0, 1, 2, 2, 3]
        assert log.read_text().splitlines() == ["step0", "step1", "step2"]
        assert k2.run("print(a, b, c)").stdout.strip() == "1 2 3"
        # The resumed request carried the reasoning of turns 0 and 1, read from the store.
        again = [r for r in server.requests if r["turn"] == 2][1]["body"]["native"]
        kept = reasoning_sent(again)
        assert len(kept) == 2 and all(k.endswith(("chatcmpl-0-0", "chatcmpl-1-0")) for k in kept)
