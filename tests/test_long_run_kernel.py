"""Long runs in real kernels: compaction, budgets and plans survive SIGKILL.

The scripted server refuses requests over its context window, so a run that
re-sent what was compacted away, or lost its compacted view in a crash, would
be refused here as a real API would refuse it.
"""

from __future__ import annotations

from jupyter_agent.testing import ScriptedServer

from .faults.harness import wait_done_or_dead

WINDOW = 6_000


def tool(code: str) -> dict:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}]}


def long_script(steps: int) -> list[dict]:
    script = [tool(f"v{i} = {i}\nprint('x' * 880, {i})") for i in range(steps)]
    return [*script, {"content": f"All {steps} steps done."}]


def cell(name: str, extra: str = "") -> str:
    return f"%%agent --model scripted --name {name} --context-window {WINDOW} {extra}\nWork long."


def summaries(scripted: ScriptedServer) -> int:
    return sum(1 for r in scripted.requests if r.get("summary"))


def test_a_run_longer_than_the_window_completes_in_a_kernel(kernel_factory, scripted):
    scripted.context_window = WINDOW
    scripted.set_script(long_script(40))
    k = kernel_factory()
    result = k.run(cell("long", "--max-steps 100"), cell_id="long")
    assert result.status == "ok", result.text
    assert "All 40 steps done." in result.text
    assert "context compacted" in result.text
    assert scripted.turns_requested() == list(range(41))
    assert k.run("print(v39)").stdout.strip() == "39"


def test_kill_during_a_compaction_loses_nothing(kernel_factory, scripted):
    scripted.context_window = WINDOW
    scripted.set_script(long_script(40))
    k1 = kernel_factory(JUPYTER_AGENT_CRASH="before:checkpoint.compaction:3")
    run = k1.start(cell("c1", "--max-steps 100"), cell_id="c1")
    assert not wait_done_or_dead(
        k1, run, 120
    )  # dies as the third compaction (a summary) is written
    assert summaries(scripted) >= 1
    before = scripted.turns_requested()

    k2 = kernel_factory()
    result = k2.run(cell("c1", "--max-steps 100"), cell_id="c1")
    assert result.status == "ok", result.text
    assert "All 40 steps done." in result.text
    turns = scripted.turns_requested()
    # Resumed where it died: no completed step asked twice, nothing refused.
    assert turns[len(before) :] == list(range(before[-1] + 1, 41))
    assert not [r for r in scripted.requests if r["outcome"] == "error:context_length_exceeded"]


def test_kill_right_after_a_compaction_never_summarizes_again(kernel_factory, scripted):
    scripted.context_window = WINDOW
    scripted.set_script(long_script(40))
    k1 = kernel_factory(JUPYTER_AGENT_CRASH="after:checkpoint.compaction:3")
    run = k1.start(cell("c2", "--max-steps 100"), cell_id="c2")
    assert not wait_done_or_dead(k1, run, 120)
    at_kill = len(scripted.requests)
    assert summaries(scripted) == 1

    k2 = kernel_factory()
    result = k2.run(cell("c2", "--max-steps 100"), cell_id="c2")
    assert "All 40 steps done." in result.text, result.text
    after = scripted.requests[at_kill:]
    first = next(i for i, r in enumerate(after) if r["turn"] >= 0)
    # The resumed run asked the model at once, with the summary in force at the kill.
    assert not [r for r in after[:first] if r.get("summary")]
    assert after[first]["body"]["messages"][2]["content"].startswith("Summary of the earlier work")
    assert not [r for r in scripted.requests if r["outcome"] == "error:context_length_exceeded"]


def test_budget_pauses_and_continues_in_a_kernel(kernel_factory, scripted):
    scripted.set_script(long_script(10))
    k = kernel_factory()
    paused = k.run("%%agent --model scripted --name b --budget 5k\nSpend.", cell_id="b")
    assert "paused at the budget" in paused.text, paused.text
    listing = k.run("%agent list").stdout
    assert "budget" in listing
    before = scripted.turns_requested()
    k2 = kernel_factory()  # after a restart, with a larger budget
    done = k2.run("%%agent --model scripted --name b --budget 100k\nSpend.", cell_id="b")
    assert "All 10 steps done." in done.text, done.text
    turns = scripted.turns_requested()
    assert turns == before + list(range(before[-1] + 1, 11))


def plan_script() -> list[dict]:
    items = [{"title": t, "status": "pending"} for t in ("load", "clean", "report")]
    return [
        {"tool_calls": [{"name": "update_plan", "arguments": {"items": items}}]},
        {"content": "Plan written."},
        tool("loaded = 1"),
        {"content": "Loaded."},
        tool("import os, time\nif not os.environ.get('FAST'): time.sleep(30)\ncleaned = 2"),
        {"content": "Cleaned."},
        tool("reported = 3"),
        {"content": "Report ready."},
    ]


def test_plan_resumes_at_the_item_in_progress_and_restores_at_zero_tokens(kernel_factory, scripted):
    scripted.set_script(plan_script())
    k1 = kernel_factory()
    source = "%%agent --model scripted --name p --plan\nDo three things."
    run = k1.start(source, cell_id="p")
    k1.wait_for(run, "time.sleep(30)")
    k1.kill()  # in the middle of item 2's python call

    k2 = kernel_factory(FAST="1")
    result = k2.run(source, cell_id="p")
    assert "Report ready." in result.text, result.text
    assert k2.run("print(loaded, cleaned, reported)").stdout.strip() == "1 2 3"
    assert scripted.turns_requested() == list(range(8))  # the call in flight ran again
    listing = k2.run("%agent list").stdout
    assert "done" in listing

    requests = len(scripted.requests)
    k3 = kernel_factory()  # the notebook reopened, Run All
    again = k3.run(source, cell_id="p")
    assert "restored from the store" in again.text
    assert len(scripted.requests) == requests  # 0 tokens
    assert k3.run("print(reported)").stdout.strip() == "3"
