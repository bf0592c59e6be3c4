"""Faults of the model endpoint, injected by the scripted server, seen from a real kernel.

Transient faults (429 with Retry-After, 500/503, timeouts, streams dropped
midway, malformed chunks, empty replies) must be retried with growing backoff
and leave no trace in the transcript. A persistent fault must pause the agent
at a checkpoint with a clear message and status ``error``; re-running the cell
after the endpoint heals resumes it. Malformed tool calls (bad JSON, unknown
tool, bad arguments) are answered with an error the model sees in its next
request; nothing runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_agent.testing import ScriptedServer

from ..kernels import Kernel
from .harness import API_KEY, read_store, record, run, set_crash, start_kernel, transcript

PROMPT = "%%agent --model scripted\nCompute the numbers."


def step(n: int, faults: list[str] | None = None, **extra: object) -> dict:
    entry: dict = {
        "content": f"Step {n}.",
        "tool_calls": [{"name": "python", "arguments": {"code": f"r{n} = {n} * 7\nprint(r{n})"}}],
        **extra,
    }
    if faults:
        entry["faults"] = faults
    return entry


def answer(faults: list[str] | None = None) -> dict:
    entry: dict = {"content": "The numbers are computed."}
    if faults:
        entry["faults"] = faults
    return entry


class Env:
    """One kernel and one endpoint shared by the tests of this module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = ScriptedServer(fault_delay=3.0).start()
        env = {
            "JUPYTER_AGENT_STORE": str(root / "default.duckdb"),
            "OPENAI_BASE_URL": self.server.url,
            "OPENAI_API_KEY": API_KEY,
        }
        (root / "cwd").mkdir(parents=True)
        self.kernel: Kernel = start_kernel(env, root / "cwd")
        self.n = 0
        ok = run(self.kernel, "%config AgentMagics.timeout = 1.0\n%config AgentMagics.retries = 4")
        assert ok.status == "ok", ok.text

    def agent(self, script: list[dict]) -> tuple[object, Path, str]:
        """Run a fresh agent on ``script``; returns (cell execution, store, cell id)."""
        self.n += 1
        store = self.root / f"s{self.n}" / "agents.duckdb"
        self.server.set_script(script)
        self.server.reset_log()
        set_crash(self.kernel, None, store)
        cell_id = f"m{self.n}"
        return run(self.kernel, PROMPT, cell_id=cell_id), store, cell_id

    def close(self) -> None:
        self.kernel.shutdown()
        self.server.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("model-faults"))
    yield e
    e.close()


@pytest.fixture(scope="module")
def reference(env: Env) -> list[dict]:
    result, store, _ = env.agent([step(0), step(1), answer()])
    assert result.status == "ok", result.text
    return transcript(read_store(store).state)


TRANSIENT = {
    "429": ["429", "429"],
    "500": ["500"],
    "503": ["503", "503"],
    "timeout": ["timeout"],
    "drop": ["drop"],
    "malformed": ["malformed"],
    "empty": ["empty", "empty"],
    "mixed": ["429", "drop", "500", "malformed"],
    # A reply is complete only with a finish_reason that is not "length".
    "cut": ["cut", "cut"],
    "length": ["length"],
    "stream_error": ["stream_error"],
    "mixed incomplete": ["cut", "stream_error", "length"],
}
#: Retried at once: the endpoint is not overloaded, the reply just needs more room.
IMMEDIATE = {"length"}


@pytest.mark.parametrize("kind", list(TRANSIENT))
def test_transient_faults_are_retried_and_leave_no_trace(
    env: Env, reference: list[dict], kind: str
) -> None:
    faults = TRANSIENT[kind]
    # The fault hits every turn: before the first step, after a tool result, for the answer.
    result, store, _ = env.agent([step(0, faults), step(1, faults), answer(faults)])
    assert result.status == "ok" and "Traceback" not in result.text, result.text
    view = read_store(store)
    assert view.state.status == "done"
    assert transcript(view.state) == reference
    attempts = [(r["turn"], r["attempt"], r["outcome"]) for r in env.server.requests]
    for turn in range(3):
        tries = [a for a in attempts if a[0] == turn]
        assert len(tries) == len(faults) + 1, attempts
        assert tries[-1][2] == "reply"
    assert result.text.count("model: ") >= 3 * len(faults)  # each retry is reported
    if kind == "429":  # the server says Retry-After: 0, which wins over the backoff
        assert result.text.count("retrying in 0.0 s") == 3 * len(faults), result.text
    if not {"429", *IMMEDIATE} & set(faults):  # a 429 waits what Retry-After says (0 here)
        times = [r["time"] for r in env.server.requests if r["turn"] == 0]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert all(g >= 0.04 for g in gaps), gaps
    record(
        "model",
        f"transient {kind}",
        injection=f"faults {faults} on each of 3 turns",
        trials=3,
        completed=3,
        lost=0,
        duplicated=0,
        outcome="retried with backoff; transcript identical to a fault-free run",
    )


def test_backoff_doubles(env: Env) -> None:
    result, _, _ = env.agent([answer(["500", "500", "500", "500"])])
    assert result.status == "ok", result.text
    times = [r["time"] for r in env.server.requests]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(gaps) == 4
    # 0.05, 0.1, 0.2, 0.4 s plus request time: each at least the planned delay, and growing.
    for gap, planned in zip(gaps, [0.05, 0.1, 0.2, 0.4], strict=True):
        assert gap >= planned * 0.9, gaps
    # The first gap also holds the building of the cell's timeline widget, which waits
    # for the first request to go out (jupyter_agent.kernel.slot): compared from the second.
    assert gaps[3] > gaps[1] * 3, gaps
    record(
        "model",
        "backoff",
        injection="4 × HTTP 500 on one turn",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="delays " + ", ".join(f"{g:.2f}" for g in gaps) + " s (planned 0.05 doubling)",
    )


def test_persistent_fault_pauses_with_a_clear_message_and_resumes_after_healing(
    env: Env, reference: list[dict]
) -> None:
    # Turn 1 fails on all 5 attempts (1 + 4 retries), then the endpoint heals.
    script = [step(0), step(1, ["503"] * 5), answer()]
    result, store, cell_id = env.agent(script)
    assert "UsageError: Agent" in result.text and "Traceback" not in result.text, result.text
    assert "paused after an error" in result.text
    assert "kept failing" in result.text and "after 5 attempts" in result.text
    view = read_store(store)
    assert view.state.status == "error"
    assert view.checkpoints[-1].kind == "error"
    before = view.keys()
    effects_before = view.state.vars

    again = run(env.kernel, PROMPT, cell_id=cell_id)  # the server has healed
    assert again.status == "ok", again.text
    assert "resuming after step" in again.text
    final = read_store(store)
    assert final.state.status == "done"
    assert transcript(final.state) == reference
    assert set(before) <= set(final.keys())  # nothing lost
    assert effects_before.items() <= final.state.vars.items()
    turns = [r["turn"] for r in env.server.requests]
    assert turns.count(0) == 1  # the completed turn was not asked again
    assert turns.count(1) == 6  # 5 failures, then one success after the re-run
    record(
        "model",
        "persistent 503",
        injection="HTTP 503 on all 5 attempts of turn 1; then the endpoint heals",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="paused at an error checkpoint (UsageError, no traceback); "
        "re-running the cell resumed and finished",
    )


def test_wrong_key_error_is_redacted_in_the_cell(env: Env) -> None:
    # The endpoint echoes the key it was given, as OpenAI does for a wrong key.
    result, store, _ = env.agent([answer(["401"])])
    assert "Incorrect API key provided: [REDACTED]." in result.text, result.text
    assert API_KEY not in result.text
    view = read_store(store)
    assert view.state.status == "error"
    assert API_KEY not in json.dumps(view.checkpoints[-1].info)
    record(
        "model",
        "wrong API key",
        injection="HTTP 401 whose message repeats the key",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="paused with the key redacted in the cell output and the checkpoint",
    )


def test_unreachable_endpoint_pauses_and_resumes(env: Env, reference: list[dict]) -> None:
    script = [step(0), step(1), answer()]
    result, store, cell_id = env.agent(script)
    assert result.status == "ok"
    # Same agent, new run, endpoint gone.
    dead = run(
        env.kernel,
        "import os; _url = os.environ['OPENAI_BASE_URL']; "
        "os.environ['OPENAI_BASE_URL'] = 'http://127.0.0.1:9/v1'",
    )
    assert dead.status == "ok"
    second = run(env.kernel, PROMPT + " Again.", cell_id=cell_id)
    assert "UsageError: Agent" in second.text and "Traceback" not in second.text, second.text
    assert "cannot reach the endpoint" in second.text
    run(env.kernel, "os.environ['OPENAI_BASE_URL'] = _url")
    env.server.reset_log()
    healed = run(env.kernel, PROMPT + " Again.", cell_id=cell_id)
    assert healed.status == "ok", healed.text
    view = read_store(store)
    assert view.state.status == "done" and len(view.runs) == 2
    assert view.runs[0].run_id != view.runs[1].run_id
    record(
        "model",
        "unreachable endpoint",
        injection="OPENAI_BASE_URL pointing at a closed port, then restored",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="UsageError after the retries; resumed once reachable",
    )


MALFORMED = {
    "bad JSON": ('{"code": "x = ', "not valid JSON"),
    "unknown tool": ("shell", "Unknown tool 'shell'"),
    "missing code": ('{"source": "x = 1"}', 'Missing argument "code"'),
    "code not a string": ('{"code": 42}', 'Missing argument "code"'),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_tool_calls_are_explained_to_the_model(env: Env, kind: str) -> None:
    bad, message = MALFORMED[kind]
    call = (
        {"name": "shell", "arguments": {"code": "rm -rf /"}}
        if kind == "unknown tool"
        else {"name": "python", "arguments": bad}
    )
    script = [
        {"content": "Trying.", "tool_calls": [call]},
        step(1),
        answer(),
    ]
    result, store, _ = env.agent(script)
    assert result.status == "ok" and "Traceback" not in result.text, result.text
    # The next request carries the tool message with the explanation.
    body = next(r["body"] for r in env.server.requests if r["turn"] == 1)
    tool_msgs = [m for m in body["messages"] if m.get("role") == "tool"]
    assert len(tool_msgs) == 1 and message in tool_msgs[0]["content"], tool_msgs
    view = read_store(store)
    assert view.state.status == "done"
    assert "x" not in view.state.vars  # nothing ran
    record(
        "model",
        f"malformed call: {kind}",
        injection=f"tool call {json.dumps(call)[:60]}",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome=f"tool result says {message!r}; the model saw it in its next request",
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "3600"}, 60.0),
        ({}, None),
    ],
)
def test_retry_after_is_honoured_and_capped(headers: dict, expected: float | None) -> None:
    import httpx
    import openai

    from jupyter_agent.model.endpoint_errors import retry_after

    request = httpx.Request("POST", "http://x/v1/chat/completions")
    response = httpx.Response(429, headers=headers, request=request)
    exc = openai.RateLimitError("slow down", response=response, body=None)
    assert retry_after(exc) == expected
