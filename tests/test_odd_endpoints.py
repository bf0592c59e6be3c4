"""Endpoints that misreport: odd or missing ``usage``, streams cut behind a proxy.

The model is the scripted server over HTTP with the real openai client, the
store a real DuckDB file; what the server sends is what such endpoints send.
"""

from __future__ import annotations

from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer

from .conftest import BOTH_BACKENDS


def tool(code: str, **extra: object) -> dict:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}], **extra}


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


def plan_call(titles: list[str]) -> dict:
    items = [{"title": t, "status": "pending"} for t in titles]
    return {"tool_calls": [{"name": "update_plan", "arguments": {"items": items}}]}


def test_a_plan_too_large_for_the_window_is_a_tool_error_and_no_request_overflows(
    ip, scripted: ScriptedServer, store_path, capsys
):
    scripted.context_window = 4_000
    huge = [f"item {n}: " + "check the column and its units " * 8 for n in range(150)]
    scripted.set_script(
        [
            plan_call(huge),
            plan_call(["load", "clean", "report"]),
            {"content": "Planned."},
        ]
    )
    ip.run_cell_magic(
        "agent", "--model scripted --name planner --context-window 4000", "Plan the work."
    )
    out = capsys.readouterr().out
    store, run, cps = latest(store_path)
    assert cps[-1].status == "done", out
    refused = [r for r in scripted.requests if r["outcome"] == "error:context_length_exceeded"]
    assert refused == []  # no request was larger than the window
    results = [c for c in cps if c.kind == "tool_result"]
    assert results[0].info.get("error") or "error" in results[0].summary, results[0]
    body = scripted.requests[1]["body"]  # the model was told why, in a tool message
    told = [m["content"] for m in body["messages"] if m.get("role") == "tool"]
    assert "too large" in told[-1] and "4,000" in told[-1], told
    assert [i["title"] for i in cps[-1].info.get("plan") or results[-1].info["plan"]] == [
        "load",
        "clean",
        "report",
    ]


def test_a_stored_plan_larger_than_a_smaller_window_is_cut_in_the_view_around_its_current_item():
    """The window can shrink after a plan was written (learnt from the endpoint)."""
    from jupyter_agent.core import context
    from jupyter_agent.core import plan as plans

    plan = [
        {"title": f"step {n} " + "x" * 250, "status": "done" if n < 120 else "pending"}
        for n in range(1, 201)
    ]
    limit = plans.max_chars(context.MIN_WINDOW * 2)
    shown = plans.in_view(plan, limit)
    text = context.plan_text(shown)
    assert len(text) <= limit < len(context.plan_text(plan))
    assert "] 120. step 120" in text  # the current item, with its own number
    lines = text.splitlines()
    assert lines[1].startswith("… items 1–") and lines[1].endswith(" done)"), lines
    assert lines[-1].startswith("… items ") and lines[-1].endswith("–200 not shown (79 not done)")
    assert plans.in_view(plan[:2], limit) == plan[:2]  # a plan that fits is shown whole


def test_a_model_call_in_flight_at_a_kill_enters_the_ledger(kernel_factory, scripted, store_path):
    """The endpoint served the request the kernel died waiting for: the ledger counts it."""
    from jupyter_agent.model.offline import counted_usage

    from .conftest import eventually

    script = [tool(f"k{i} = {i}\nprint('x' * 880, {i})") for i in range(8)]
    script[5] = {**script[5], "delay": 30}  # the kernel is killed while it waits for this one
    scripted.set_script([*script, {"content": "All done."}])
    source = "%%agent --model scripted --name inflight --budget 200k\nSpend."
    k1 = kernel_factory()
    k1.start(source, cell_id="inflight")
    assert eventually(lambda: 5 in scripted.turns_requested(), 60)
    k1.kill()
    done = kernel_factory().run(source, cell_id="inflight")
    assert "All done." in done.text, done.text
    asked = [r for r in scripted.requests if r["turn"] >= 0]
    assert [r["turn"] for r in asked] == [0, 1, 2, 3, 4, 5, 5, 6, 7, 8]
    served = sum(counted_usage(r["body"]["messages"], 0)["prompt_tokens"] for r in asked)
    store = Store(store_path)
    run = store.runs()[-1]
    ledger = store.run_stats([run.run_id])[run.run_id]
    assert ledger.prompt_tokens >= served, (ledger, served)
    assert ledger.tokens == sum(c.tokens for c in store.checkpoints(run.run_id))


class Events:
    """Where a run's events go when no cell shows them: kept, for the assertions."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def text(self, chunk: str) -> None:
        pass

    def info(self, message: str) -> None:
        self.notes.append(message)

    def notice(self, message: str) -> None:
        self.notes.append(message)

    def checkpoint(self, run: object, row: object, delta: object) -> None:
        pass


@BOTH_BACKENDS
def test_a_checkpoint_never_holds_more_tokens_than_its_column(store_spec, tmp_path):
    """A child's tokens count towards its parent's: their sum is not an endpoint's
    number, and no store may refuse it at the end of the run."""
    from types import SimpleNamespace

    from jupyter_agent.core.state import DONE, RUNNING, RunState
    from jupyter_agent.kernel.identity import AgentIdentity
    from jupyter_agent.loop.checkpoints import Collaborators, Recorder
    from jupyter_agent.loop.runs import new_run
    from jupyter_agent.store.api import MAX_ROW_TOKENS
    from jupyter_agent.store.open import open_store

    store = open_store(store_spec)
    identity = AgentIdentity(str(tmp_path / "n.ipynb"), "ledger", None, "test")
    run = new_run(identity, "Count.", "scripted")
    collaborators = Collaborators(store, SimpleNamespace(user_ns={}), Events())
    recorder = Recorder(run, RunState(), collaborators, [])
    recorder.writer = store.writer(run.run_id)
    recorder.writer.put_run(run)
    recorder.checkpoint("start", RUNNING, "Count.")
    recorder.checkpoint("tool_result", RUNNING, "children's work", tokens=3 * 2**31)
    recorder.checkpoint("model", DONE, "Counted.", tokens=5)
    recorder.writer.close()
    cps = open_store(store_spec).checkpoints(run.run_id)
    assert [c.tokens for c in cps] == [0, MAX_ROW_TOKENS, 5]
    assert recorder.state.tokens == MAX_ROW_TOKENS + 5  # the state says what the store says
