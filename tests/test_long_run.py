"""Long runs in an in-process shell: bounded context, budgets, stuck runs, plans.

The model is the scripted server over HTTP with the real openai client; its
``context_window`` refuses over-long requests the way OpenAI does, so a run
that did not compact would fail here exactly as it would against a real API.
"""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest
from IPython.core.error import UsageError

from jupyter_agent.core import context
from jupyter_agent.core.plan import parse_items
from jupyter_agent.core.state import (
    COMPACTED,
    Delta,
    RunState,
    encode_delta,
    fold,
    fold_from_snapshot,
)
from jupyter_agent.core.stuck import stuck_reason
from jupyter_agent.core.summary import summary_message
from jupyter_agent.errors import PlanError
from jupyter_agent.loop.runs import load_state
from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer

OUTPUT = "x" * 900  # each step adds ~0.9 KB of tool output, as in the report


def tool(code: str) -> dict:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}]}


def plan_call(items: list[tuple[str, str]]) -> dict:
    arguments = {"items": [{"title": t, "status": s} for t, s in items]}
    return {"tool_calls": [{"name": "update_plan", "arguments": arguments}]}


def long_script(steps: int) -> list[dict]:
    script = [tool(f"v{i} = {i}\nprint('x' * 880, {i})") for i in range(steps)]
    return [*script, {"content": f"All {steps} steps done."}]


@pytest.fixture
def ip(ip):
    """The shared in-process shell, without the variables a long run leaves behind."""
    shell = ip
    yield shell
    for name in [n for n in shell.user_ns if n.startswith("v") and n[1:].isdigit()]:
        del shell.user_ns[name]


def latest(store_path):
    store = Store(store_path)
    run = store.runs()[-1]
    return store, run, store.checkpoints(run.run_id)


# -- the pure core ---------------------------------------------------------------------


def conversation(steps: int, output: str = OUTPUT) -> list[dict]:
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "task"}]
    for i in range(steps):
        call = {
            "id": f"c{i}",
            "type": "function",
            "function": {"name": "python", "arguments": "{}"},
        }
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": output})
    return messages


def test_a_view_that_fits_is_not_compacted():
    assert context.decide(conversation(3), {}, [], window=16_000) is None


def test_trim_first_then_summary_and_the_view_keeps_task_pins_and_latest_results():
    messages = conversation(40)
    messages.insert(30, {"role": "user", "content": "Use euros, not dollars."})
    decision = context.decide(messages, {}, [], window=12_000)
    assert decision is not None and decision.summarize is None  # trimming is enough
    view = context.model_view(messages, decision.compaction, [])
    assert context.estimate_tokens(view) <= 12_000 * context.COMPACT_TO
    tools = [m for m in view if m["role"] == "tool"]
    assert all(m["content"] == OUTPUT for m in tools[-context.KEEP_RESULTS :])
    assert "output trimmed" in tools[0]["content"]

    decision = context.decide(messages, {}, [], window=5_000)
    assert decision is not None and decision.summarize is not None
    start, end = decision.summarize
    compaction = {**decision.compaction, "summary": summary_message("did things", 9, 9)}
    plan = [{"title": "load", "status": "done"}, {"title": "plot", "status": "pending"}]
    view = context.model_view(messages, compaction, plan)
    assert view[:2] == messages[:2]  # the system prompt and the task
    texts = [m.get("content") or "" for m in view]
    assert any("Use euros" in t for t in texts)  # a pinned user instruction
    assert "[x] 1. load" in texts[-1]  # the plan, after the steps: it changes most often
    assert view[-2] == messages[-1]  # the latest result, whole
    assert view[2]["content"] == "Use euros, not dollars."  # pinned, then the summary
    assert view[3]["content"].startswith("Summary of the earlier work")
    assert "[9 earlier model replies summarized]" in view[3]["content"]
    # A cut never separates a tool call from its result.
    assert messages[end]["role"] == "assistant"


def test_remembered_sizes_are_only_those_of_messages_still_in_the_view():
    messages = conversation(200, output="x" * 5_000)
    sizes = context.Sizes()
    compaction = {"summary": "s", "upto": 2, "trim_before": len(messages) - 10}
    view = context.model_view(messages, compaction, [], sizes)
    full = context.estimate_tokens(view, sizes=sizes)
    for upto in range(100, len(messages) - 20, 20):  # compacted further and further
        compaction = {**compaction, "upto": upto}
        view = context.model_view(messages, compaction, [], sizes)
        context.estimate_tokens(view, sizes=sizes)
        context.model_view(messages, compaction, [], sizes)
    remembered = {**sizes._chars, **sizes._older[0]}
    assert len(remembered) <= 2 * (len(messages) - 100)  # the view's and their stubs only
    assert all(m is not messages[3] for m, _ in remembered.values())
    # Forgotten sizes are measured again when needed: the same figures.
    compaction = {**compaction, "upto": 2}
    view = context.model_view(messages, compaction, [], sizes)
    assert context.estimate_tokens(view, sizes=sizes) == full


class History:
    """Checkpoints written the way the agent loop writes them, compactions with snapshots."""

    def __init__(self) -> None:
        self.state = RunState()
        self.rows: list[tuple[SimpleNamespace, bytes]] = []

    def write(self, kind: str, delta: Delta, info: dict | None = None) -> None:
        if kind == "compaction":  # as Execution.checkpoint does
            point = self.state.snapshot(int(delta.compaction.get("upto") or 0))
            if point is not None:
                delta.snapshot = point[1]
                info = {**(info or {}), "resume_from": point[0]}
        row = SimpleNamespace(
            step=self.state.step + 1, kind=kind, status="running", tokens=7, info=info or {}
        )
        self.rows.append((row, encode_delta(delta)))
        self.state.apply(delta, step=row.step, kind=kind, status="running", tokens=7, info=row.info)

    def steps(self, start: int, end: int, window: int) -> None:
        for i in range(start, end):
            decision = context.decide(
                self.state.messages, self.state.compaction, self.state.plan, window
            )
            if decision is not None:
                compaction = decision.compaction
                if decision.summarize:
                    compaction = {**compaction, "summary": f"summary before {i}"}
                self.write("compaction", Delta(compaction=compaction))
            call = {"id": f"c{i}", "type": "function", "function": {"name": "python"}}
            reply = {"role": "assistant", "content": "", "tool_calls": [call]}
            self.write("model", Delta(messages=[reply]), {"usage": {"prompt_tokens": 5}})
            self.write("tool_call", Delta(tool_call_id=f"c{i}"))
            result = {"role": "tool", "tool_call_id": f"c{i}", "content": OUTPUT}
            self.write("tool_result", Delta(messages=[result], vars={f"v{i}": f"h{i}"}))
            if i == 30:  # the user's own instruction, pinned however much is compacted
                user = {"role": "user", "content": "Use euros, not dollars."}
                self.write("resume", Delta(messages=[user]), {"budget": {"tokens": 9}})
            if i == 40:
                decision = {"call_id": "c40", "action": "approve"}
                self.write("tool_result", Delta(decision=decision, vars={"v3": None}))

    def since(self) -> int:
        rows = [r for r, _ in self.rows if r.kind == "compaction" and "resume_from" in r.info]
        return rows[-1].info["resume_from"]


def _same_state(partial: RunState, full: RunState) -> None:
    skip = {"messages", "message_steps"}
    assert {k: v for k, v in vars(partial).items() if k not in skip} == {
        k: v for k, v in vars(full).items() if k not in skip
    }
    assert len(partial.messages) == len(full.messages)
    assert context.model_view(partial.messages, partial.compaction, partial.plan) == (
        context.model_view(full.messages, full.compaction, full.plan)
    )
    assert partial.pending_tool_call() == full.pending_tool_call()


def test_a_fold_from_the_latest_snapshot_is_the_state_and_view_of_the_whole_history():
    history = History()
    history.write("start", Delta(messages=conversation(0)), {"budget": {"tokens": 5}})
    history.steps(0, 150, window=8_000)
    since = history.since()
    read = [pair for pair in history.rows if pair[0].step >= since]
    assert len(read) < len(history.rows) / 5  # a window's worth, not the run
    partial = fold_from_snapshot(read)
    full = fold(history.rows)
    assert partial is not None
    _same_state(partial, full)
    texts = [m.get("content") for m in context.model_view(partial.messages, partial.compaction, [])]
    assert "Use euros, not dollars." in texts and "summary before" in " ".join(map(str, texts))
    assert partial.messages[40] is COMPACTED and partial.vars == full.vars and "v3" not in full.vars
    # The resumed state goes on like the whole one: later snapshots are the same.
    resumed = History()
    resumed.state, resumed.rows = partial, list(history.rows)
    history.steps(150, 220, window=8_000)
    resumed.steps(150, 220, window=8_000)
    assert resumed.rows[-1][0].step == history.rows[-1][0].step
    assert [p for _, p in resumed.rows] == [p for _, p in history.rows]
    assert fold_from_snapshot([p for p in history.rows if p[0].step >= history.since()])
    # Nothing to fold from: no snapshot among the pairs.
    assert fold_from_snapshot(history.rows[:10]) is None


def test_the_views_estimate_is_counted_as_it_grows_and_equals_that_of_the_view():
    history = History()
    history.write("start", Delta(messages=conversation(0)), {})
    each = [context.Sizes(), context.Sizes()]  # one a kind of view: each grows as it goes
    plan = [{"title": "one", "status": "pending"}]
    for start in range(0, 200, 5):
        history.steps(start, start + 5, window=8_000)
        state = history.state
        untrimmed = {**state.compaction, "trim_before": 0}
        for compaction, sizes in zip((state.compaction, untrimmed), each, strict=True):
            view = context.model_view(state.messages, compaction, plan, sizes)
            extra = [{"role": "user", "content": "and this"}]
            expected = context.estimate_tokens(view + extra, 1.3, [{"t": 1}])
            got = context.view_tokens(
                state.messages, compaction, plan, 1.3, [{"t": 1}], sizes, extra
            )
            assert got == expected, (start, compaction)
    assert history.since() > 0  # compacted (summaries and trims) on the way


def test_known_windows_and_budgets_parse():
    assert context.default_window("gpt-4o-mini") == 128_000
    assert context.default_window("openai/gpt-3.5-turbo-0125") == 16_385
    assert context.default_window("my-local-model") == context.DEFAULT_WINDOW


def test_stuck_detection_reads_the_history():
    failing = conversation(3, output="Traceback ...\nNameError: name 'x' is not defined")
    assert "failed 3 times" in stuck_reason(failing)
    assert stuck_reason(conversation(3, output="ok")) is not None  # the same reply 3 times
    assert stuck_reason(conversation(2, output="Traceback\nNameError")) is None
    failing.append({"role": "user", "content": "try again"})
    assert stuck_reason(failing) is None  # a note from the user resets it


def test_update_plan_arguments_are_validated():
    assert parse_items(json.dumps({"items": [{"title": "a", "status": "done"}]})) == [
        {"title": "a", "status": "done"}
    ]
    for bad, message in [
        ("{", "not valid JSON"),
        ("{}", 'Missing argument "items"'),
        ('{"items": [{"title": ""}]}', "non-empty string 'title'"),
        ('{"items": [{"title": "a", "status": "later"}]}', "status 'later'"),
    ]:
        with pytest.raises(PlanError, match=message):
            parse_items(bad)


# -- runs --------------------------------------------------------------------------------


def test_a_run_longer_than_the_window_completes_with_a_bounded_context(
    ip, scripted: ScriptedServer, store_path
):
    scripted.context_window = 15_000
    scripted.set_script(long_script(80))
    ip.run_cell_magic(
        "agent", "--model scripted --name long --max-steps 200 --context-window 15000", "Work."
    )
    store, run, cps = latest(store_path)
    assert cps[-1].status == "done", cps[-1].summary
    assert not [r for r in scripted.requests if r["outcome"] == "error:context_length_exceeded"]
    chat = [r for r in scripted.requests if r["turn"] >= 0]
    assert scripted.turns_requested() == list(range(81))  # no step asked twice
    sizes = [context.estimate_tokens(r["body"]["messages"]) for r in chat]
    assert max(sizes) <= 15_000
    assert max(sizes[-20:]) <= max(sizes[20:40]) * 1.5  # prompt size plateaus
    kinds = [c.kind for c in cps]
    assert "compaction" in kinds
    # The full history stays in the store; only the view was compacted.
    state = load_state(store, run, full=True)
    assert sum(1 for m in state.messages if m["role"] == "tool") == 80
    assert ip.user_ns["v79"] == 79


def test_a_resume_reads_from_the_latest_compaction_and_sends_the_same_view(
    ip, scripted: ScriptedServer, store_path, monkeypatch
):
    from jupyter_agent.store.duckdb import store as store_module

    scripted.context_window = 8_000
    scripted.set_script(long_script(80))
    line = "--model scripted --name resumed --context-window 8000 --max-steps"
    ip.run_cell_magic("agent", f"{line} 60", "Work.")
    store, run, cps = latest(store_path)
    assert cps[-1].status == "limit"
    whole = load_state(store, run, full=True)
    expected = context.model_view(whole.messages, whole.compaction, whole.plan)
    read: list[int] = []
    real = store_module.DuckDBStore.payloads
    monkeypatch.setattr(
        store_module.DuckDBStore,
        "payloads",
        lambda self, chain, since=0: (
            read.extend(r.step for r, _ in real(self, chain, since)) or real(self, chain, since)
        ),
    )
    for saved in store.journal_dir.glob("*.state"):
        saved.unlink()  # as after a crash: the fold, not the state file, answers
    before = len(scripted.requests)
    ip.run_cell_magic("agent", f"{line} 200", "Work.")
    assert read and min(read) > 40 and len(read) < len(cps) / 3, (len(cps), read[:3])
    first = scripted.requests[before]["body"]["messages"]
    assert first == [{k: v for k, v in m.items() if v is not None} for m in expected]
    store, run, cps = latest(store_path)
    assert cps[-1].status == "done", cps[-1].summary
    assert scripted.turns_requested() == list(range(81))  # no step asked twice
    assert ip.user_ns["v79"] == 79 and ip.user_ns["v3"] == 3


def test_a_python_step_is_made_durable_by_its_results_sync(
    ip, scripted: ScriptedServer, store_path, monkeypatch
):
    from jupyter_agent.store.duckdb import journal

    synced: list[int] = []
    real = journal.os.fdatasync
    monkeypatch.setattr(journal.os, "fdatasync", lambda fd: synced.append(fd) or real(fd))
    scripted.set_script(long_script(5))
    ip.run_cell_magic("agent", "--model scripted --name syncs", "Work.")
    _, _, cps = latest(store_path)
    kinds = [c.kind for c in cps]
    assert kinds.count("tool_call") == 5 and cps[-1].status == "done"
    # Every checkpoint is synced but the replies that call tools and the starts of
    # python calls (which run again if lost): the result syncs all three. The run's
    # row and the values go with the checkpoint written next.
    assert len(synced) == len(cps) - 10
    assert sorted(ip.user_ns[f"v{i}"] for i in range(5)) == list(range(5))


def test_the_window_is_learnt_from_a_refusal_and_remembered(
    ip, scripted: ScriptedServer, store_path
):
    scripted.context_window = 9_000
    scripted.set_script(long_script(40))
    ip.run_cell_magic("agent", "--model scripted --name learner --max-steps 100", "Work.")
    store, run, cps = latest(store_path)
    assert cps[-1].status == "done", cps[-1].summary
    refused = [r for r in scripted.requests if r["outcome"] == "error:context_length_exceeded"]
    assert len(refused) == 1  # learnt once, then compacted ahead of time
    assert store.learnt_window("scripted") == 9_000
    # Only the refused request was asked again, after compacting.
    turns = scripted.turns_requested()
    assert sorted(set(turns)) == list(range(41)) and len(turns) == 42


def test_budget_pauses_and_a_larger_budget_continues(
    ip, scripted: ScriptedServer, store_path, capsys
):
    scripted.set_script(long_script(12))
    ip.run_cell_magic("agent", "--model scripted --name spender --budget 8000", "Spend.")
    out = capsys.readouterr().out
    store, run, cps = latest(store_path)
    assert cps[-1].status == "budget" and cps[-1].kind == "budget"
    assert "paused at the budget" in out and "of 8,000 tokens" in out
    spent = cps[-1].info["spent"]
    assert spent <= 8_000
    turns_before = scripted.turns_requested()

    ip.run_cell_magic("agent", "--model scripted --name spender --budget 1M", "Spend.")
    store, run, cps = latest(store_path)
    assert cps[-1].status == "done"
    turns = scripted.turns_requested()
    assert turns == sorted(set(turns))  # no step requested twice
    assert turns[len(turns_before)] == turns_before[-1] + 1
    assert len(store.runs()) == 1


def test_a_budget_below_what_was_spent_pauses_at_once(ip, scripted, store_path, capsys):
    scripted.set_script(long_script(12))
    ip.run_cell_magic("agent", "--model scripted --name cheap --budget 3000", "Spend.")
    _, _, cps = latest(store_path)
    spent = cps[-1].info["spent"]
    requests = len(scripted.requests)
    capsys.readouterr()
    ip.run_cell_magic("agent", "--model scripted --name cheap --budget 100", "Spend.")
    out = capsys.readouterr().out
    assert f"{spent:,} of 100 tokens" in out
    assert len(scripted.requests) == requests  # no model call


def test_a_dollar_budget_uses_the_model_price(ip, scripted, store_path, capsys):
    scripted.set_script(long_script(12))
    with pytest.raises(UsageError, match="needs a price for model 'scripted'"):
        ip.run_cell_magic("agent", "--model scripted --name dollars --budget $0.05", "Spend.")
    assert not store_path.exists() or Store(store_path).runs() == []
    ip.run_line_magic("config", "AgentMagics.prices = {'scripted': [10.0, 30.0]}")
    try:
        ip.run_cell_magic("agent", "--model scripted --name dollars --budget $0.05", "Spend.")
    finally:
        ip.run_line_magic("config", "AgentMagics.prices = {}")
    _, _, cps = latest(store_path)
    assert cps[-1].status == "budget"
    assert 0 < cps[-1].info["cost"] <= 0.05 and cps[-1].info["budget_cost"] == 0.05
    assert "paused at the budget: $0.0" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--budget 0", "positive number of tokens"),
        ("--budget abc", "is not a budget"),
        ("--budget $0", "more than \\$0"),
        ("--context-window 10", "at least 1,024 tokens"),
    ],
)
def test_bad_long_run_options(ip, store_path, line, message):
    with pytest.raises(UsageError, match=message):
        ip.run_cell_magic("agent", f"--model scripted --name bad {line}", "task")
    assert not store_path.exists() or Store(store_path).runs() == []


def test_a_stuck_run_pauses_and_continues_with_a_note(ip, scripted, store_path, capsys):
    failing = tool("undefined_name + 1")
    scripted.set_script([failing, failing, failing, {"content": "I give up on that; done."}])
    ip.run_cell_magic("agent", "--model scripted --name looper", "Loop.")
    out = capsys.readouterr().out
    _, _, cps = latest(store_path)
    assert cps[-1].status == "stuck" and "failed 3 times" in cps[-1].summary
    assert "stuck" in out
    ip.run_cell_magic("agent", "--model scripted --name looper", "Loop.")
    _, _, cps = latest(store_path)
    assert cps[-1].status == "done"
    last = scripted.requests[-1]["body"]["messages"]
    assert any("You were stuck" in (m.get("content") or "") for m in last)


def test_plan_mode_works_item_by_item_with_fresh_context(ip, scripted, store_path, capsys):
    items = [("load", "pending"), ("clean", "pending"), ("report", "pending")]
    scripted.set_script(
        [
            plan_call(items),  # the initializer writes the plan
            {"content": "Plan written."},
            tool("loaded = 1"),
            {"content": "Loaded the data."},
            tool("cleaned = 2"),
            {"content": "Cleaned it."},
            tool("reported = 3"),
            {"content": "Report ready: 3."},
        ]
    )
    ip.run_cell_magic("agent", "--model scripted --name planner --plan", "Do three things.")
    store, run, cps = latest(store_path)
    assert cps[-1].status == "done"
    state = load_state(store, run)
    assert [i["status"] for i in state.plan] == ["done", "done", "done"]
    items_started = [c for c in cps if c.kind == "compaction" and c.info.get("strategy") == "item"]
    assert [c.info["item"] for c in items_started] == [0, 1, 2]
    # Each item starts afresh: the request for item 3 holds no earlier tool output.
    third = [r for r in scripted.requests if r["turn"] == 6][0]["body"]["messages"]
    assert not [m for m in third if m["role"] == "tool"]
    assert any("Cleaned it." in (m.get("content") or "") for m in third)  # progress notes
    assert any("[x] 2. clean" in (m.get("content") or "") for m in third)
    assert ip.user_ns["reported"] == 3
    capsys.readouterr()
    ip.run_line_magic("agent", "list")
    listing = capsys.readouterr().out
    row = next(line for line in listing.splitlines() if line.startswith("planner"))
    assert "done after 8 steps" in row and " 3/3 " in row
    assert f"{sum(c.tokens for c in cps):,}" in row  # the ledger: tokens spent


def test_a_malformed_plan_is_told_to_the_model(ip, scripted, store_path):
    bad = {"tool_calls": [{"name": "update_plan", "arguments": {"items": "all of it"}}]}
    scripted.set_script([bad, {"content": "ok"}])
    ip.run_cell_magic("agent", "--model scripted --name badplan", "Plan.")
    _, _, cps = latest(store_path)
    assert cps[-1].status == "done"
    second = scripted.requests[-1]["body"]["messages"]
    assert any('Missing argument "items"' in (m.get("content") or "") for m in second)


def test_a_resume_opens_the_store_at_most_twice_before_its_first_model_request(
    ip, scripted: ScriptedServer, monkeypatch
):
    import duckdb

    from jupyter_agent.store.duckdb import files as store_module

    scripted.set_script([tool("v0 = 0"), tool("v1 = 1"), {"content": "done"}])
    ip.run_cell_magic("agent", "--model scripted --name opens --max-steps 1", "Count opens.")
    opened_at: list[int] = []  # requests the endpoint had seen at each open
    real_connect = duckdb.connect

    def counting_connect(*args, **kwargs):
        opened_at.append(len(scripted.requests))
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(store_module.duckdb, "connect", counting_connect)
    before = len(scripted.requests)
    ip.run_cell_magic("agent", "--model scripted --name opens --max-steps 5", "Count opens.")
    assert len(scripted.requests) > before  # it did resume and call the model
    opens = sum(1 for n in opened_at if n == before)
    print(f"opens before the first model request of a resume: {opens}")
    assert 1 <= opens <= 2, opened_at


def test_a_resume_reads_its_history_once(ip, scripted: ScriptedServer, monkeypatch):
    from jupyter_agent.store.duckdb import store as store_module

    scripted.set_script([tool("v0 = 0"), tool("v1 = 1"), {"content": "done"}])
    ip.run_cell_magic("agent", "--model scripted --name once --max-steps 1", "Read once.")
    reads: list[str] = []
    real = store_module.DuckDBStore.checkpoints

    def counting(self, run_id, kind=None):
        if kind is None:  # the whole history; a kind's few rows are read on their own
            reads.append(run_id)
        return real(self, run_id, kind)

    monkeypatch.setattr(store_module.DuckDBStore, "checkpoints", counting)
    real_payloads = store_module.DuckDBStore.payloads
    monkeypatch.setattr(
        store_module.DuckDBStore,
        "payloads",
        lambda self, chain, since=0: (
            reads.extend(r for r, _ in chain) or real_payloads(self, chain, since)
        ),
    )
    before = len(scripted.requests)
    ip.run_cell_magic("agent", "--model scripted --name once --max-steps 5", "Read once.")
    assert len(scripted.requests) > before and "v1" in ip.user_ns  # it resumed and went on
    assert len(reads) == len(set(reads)), reads  # the run's checkpoints were read once


def test_a_large_changed_value_is_saved_while_the_model_is_asked(
    ip, scripted: ScriptedServer, store_path, monkeypatch
):
    """The next request goes out before the value is serialized; its checkpoint comes after."""
    from jupyter_agent.namespace import tracking as namespace

    saved_at: list[float] = []
    real = namespace.save_groups

    def slow(*args, **kwargs):
        if threading.current_thread().name == "jupyter-agent-save":
            time.sleep(0.3)  # a large value's dill and file write
            saved_at.append(time.time())
        return real(*args, **kwargs)

    monkeypatch.setattr(namespace, "save_groups", slow)
    scripted.set_script(
        [
            tool("big = bytearray(9 * 2**20)\nsmall = [1]"),
            tool("big[0] = 7\nprint(big[0])"),
            {"content": "Done."},
        ]
    )
    ip.run_cell_magic("agent", "--model scripted --name big", "Make a big value.")
    asked = [r["time"] for r in scripted.requests if r["turn"] >= 0]
    assert len(saved_at) == 2 and len(asked) == 3
    # Each step's request went out while its value was being saved, not after.
    assert asked[1] < saved_at[0] and asked[2] < saved_at[1]
    store, run, cps = latest(store_path)
    results = [c for c in cps if c.kind == "tool_result"]
    assert all(r.created_at <= s for r, s in zip(results, saved_at, strict=True))
    assert [set(r.info["vars"]) for r in results] == [{"big", "small"}, {"big"}]
    assert [c.step for c in cps] == list(range(len(cps)))  # written in step order
    state = load_state(store, run, full=True)
    restored: dict = {}
    namespace.restore(restored, state.vars, store.blobs)
    assert restored["big"][0] == 7 and len(restored["big"]) == 9 * 2**20
    assert restored["small"] == [1]
    del ip.user_ns["big"], ip.user_ns["small"]


def test_a_view_kept_between_steps_is_the_view_made_anew():
    """The view's latest steps are kept between steps (``Sizes.body``); whatever the history
    and its compaction do, the view is the one made from scratch."""
    messages = conversation(40, output="y" * 3_000)
    sizes = context.Sizes()
    compaction: dict = {}

    def same() -> None:
        kept = context.model_view(messages, compaction, [], sizes)
        assert kept == context.model_view(messages, compaction, [])

    same()
    messages += conversation(3, output="z")[2:]  # steps added
    same()
    compaction = {"summary": "s", "upto": 20, "trim_before": 30}  # bounds moved
    same()
    compaction = {**compaction, "trim_before": 36}  # older outputs stubbed
    same()
    last = messages[-1]
    del messages[-4:]  # the same list, shorter
    same()
    messages += [{"role": "user", "content": f"instead {i}"} for i in range(5)]  # and regrown
    same()
    messages[-1] = last  # its last message put back where another was
    same()
    messages = [dict(m) for m in messages[:-1]]  # another list of the same messages
    same()
    assert len(sizes.body(messages, 20, 36)) == len(messages) - 20
