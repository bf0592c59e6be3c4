"""Endpoints that misreport: odd or missing ``usage``, streams cut behind a proxy.

The model is the scripted server over HTTP with the real openai client, the
store a real DuckDB file; what the server sends is what such endpoints send.
"""

from __future__ import annotations

import pytest
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython

from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer


def tool(code: str, **extra: object) -> dict:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}], **extra}


@pytest.fixture
def ip(store_path, scripted, monkeypatch):
    monkeypatch.setenv("JUPYTER_AGENT_STORE", str(store_path))
    monkeypatch.setenv("OPENAI_BASE_URL", scripted.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    shell = start_ipython() or get_ipython()
    shell.run_line_magic("load_ext", "jupyter_agent")
    shell.run_line_magic("config", "AgentMagics.retry_backoff = 0.01")
    return shell


def latest(store_path):
    store = Store(store_path)
    run = store.runs()[-1]
    return store, run, store.checkpoints(run.run_id)


def test_odd_usage_counts_are_ignored_with_a_notice_and_the_run_folds(
    ip, scripted: ScriptedServer, store_path, capsys
):
    scripted.set_script(
        [
            tool("u1 = 1", usage={"prompt_tokens": 3_000_000_000, "completion_tokens": 5}),
            tool("u2 = 2", usage={"prompt_tokens": "many", "completion_tokens": "5"}),
            tool("u3 = 3", usage={"prompt_tokens": -2_000_000, "completion_tokens": -10}),
            {"content": "Done."},
        ]
    )
    ip.run_cell_magic("agent", "--model scripted --name odd --budget 50k", "Work.")
    out = capsys.readouterr().out
    store, run, cps = latest(store_path)  # opening the store folds the run's journal
    assert cps[-1].status == "done", out
    assert out.count("usage") >= 3, out  # one notice per odd reply
    ledger = store.run_stats([run.run_id])[run.run_id]
    assert 0 < ledger.tokens < 50_000 and ledger.tokens == sum(c.tokens for c in cps)
    assert ledger.prompt_tokens >= 0 and ledger.completion_tokens >= 0
    requests = len(scripted.requests)
    ip.run_cell_magic("agent", "--model scripted --name odd --budget 50k", "Work.")
    assert len(scripted.requests) == requests  # restored, nothing asked again
    assert len(Store(store_path).runs()) == 1


def test_without_usage_the_ledger_counts_estimates_and_the_budget_stops_the_run(
    ip, scripted: ScriptedServer, store_path, capsys
):
    scripted.send_usage = False
    script = [tool(f"n{i} = {i}\nprint('x' * 880, {i})") for i in range(30)]
    scripted.set_script([*script, {"content": "All done."}])
    ip.run_cell_magic("agent", "--model scripted --name nousage --budget 20k", "Spend.")
    out = capsys.readouterr().out
    store, run, cps = latest(store_path)
    assert cps[-1].status == "budget", out
    assert "paused at the budget" in out and "of 20,000 tokens" in out
    ledger = store.run_stats([run.run_id])[run.run_id]
    assert 0 < ledger.tokens <= 20_000
    assert ledger.tokens == ledger.prompt_tokens + ledger.completion_tokens
    model_steps = [c for c in cps if c.kind == "model"]
    assert all(c.tokens > 0 and c.info.get("estimated") for c in model_steps)


def test_a_tool_call_cut_behind_a_proxy_is_asked_again_not_a_step(
    ip, scripted: ScriptedServer, store_path, capsys
):
    """LiteLLM ends a cut upstream stream with ``finish_reason: "stop"`` and ``[DONE]``."""
    scripted.set_script(
        [tool("cut1 = 41 + 1\nprint(cut1)", faults=["cut_stop"]), {"content": "Done."}]
    )
    ip.run_cell_magic("agent", "--model scripted --name proxied", "Compute.")
    out = capsys.readouterr().out
    store, run, cps = latest(store_path)
    assert cps[-1].status == "done", out
    assert ip.user_ns["cut1"] == 42
    assert [c.kind for c in cps if c.kind in ("model", "tool_result")] == [
        "model",
        "tool_result",
        "model",
    ]
    assert not any(c.info.get("error") for c in cps if c.kind == "tool_result")
    assert scripted.turns_requested() == [0, 0, 1]  # the cut reply was asked for again
    assert "cut" in out  # the retry is told
