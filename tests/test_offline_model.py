"""The offline model's directives, in real kernels: plans, tools, MCP tools, delegation.

The offline model needs no endpoint: each test runs ``--model offline`` cells
and reads what happened from the store and from files the task's code writes
(so a block that ran twice is seen).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jupyter_agent.loop.runs import load_state
from jupyter_agent.model.offline import offline_reply
from jupyter_agent.model.offline_task import parse_task
from jupyter_agent.store.duckdb.store import DuckDBStore as Store

from .test_mcp import configure, reports
from .test_user_tools import define, lines


def block(code: str, lang: str = "python") -> str:
    return f"```{lang}\n{code}\n```\n"


def logged(log: Path, word: str) -> str:
    """A python block that appends ``word`` to ``log``: how often it ran is counted."""
    return block(f"with open({str(log)!r}, 'a') as f:\n    f.write({word!r} + '\\n')\n{word} = 1")


def only_run(store_path: Path, agent: str | None = None) -> tuple[Store, object]:
    store = Store(store_path)
    runs = [r for r in store.runs() if agent is None or r.agent == agent]
    assert len(runs) == 1, runs
    return store, runs[0]


def test_plan_option_plans_first_then_works_an_item_at_a_time_across_a_kill(
    kernel_factory, tmp_path: Path, store_path: Path
) -> None:
    log = tmp_path / "ran.log"
    slow = "import os, time\nif not os.environ.get('FAST'):\n    print('cleaning…'); time.sleep(30)"
    task = (
        "Prepare the report.\n\n## Load the data\n"
        + logged(log, "loaded")
        + "\n## Clean it\n"
        + block(slow)
        + logged(log, "cleaned")
        + "\n## Report\n"
        + logged(log, "reported")
    )
    source = "%%agent --model offline --name planner --plan\n" + task
    k1 = kernel_factory()
    run = k1.start(source, cell_id="p")
    k1.wait_for(run, "cleaning…")
    k1.kill()  # in the middle of item 2

    k2 = kernel_factory(FAST="1")
    result = k2.run(source, cell_id="p")
    assert result.status == "ok", result.text
    assert "Done: ran 4 code block(s), worked through a plan of 3 item(s)." in result.text
    assert lines(log) == ["loaded", "cleaned", "reported"]  # each once, in order
    store, row = only_run(store_path)
    state = load_state(store, row)  # type: ignore[arg-type]
    assert [(i["title"], i["status"]) for i in state.plan] == [
        ("Load the data", "done"),
        ("Clean it", "done"),
        ("Report", "done"),
    ]
    checkpoints = store.checkpoints(row.run_id)  # type: ignore[attr-defined]
    items = [c.info["item"] for c in checkpoints if c.info.get("strategy") == "item"]
    assert items == [0, 1, 2]  # each item started with a fresh context
    first = [c for c in checkpoints if c.kind == "model"][0]
    assert first.summary.startswith("Planning: 3 item(s)")
    assert "3/3" in k2.run("%agent list").stdout


def answer(store_path: Path, agent: str) -> str:
    """The final answer of ``agent``'s only run."""
    store, row = only_run(store_path, agent)
    return load_state(store, row).messages[-1]["content"]  # type: ignore[arg-type]


def test_plan_option_without_headings_plans_a_step_per_block(ip: Any, store_path: Path) -> None:
    task = block("# Count to three\nn = 3") + block("total = n * 2") + block("total")
    ip.run_cell_magic("agent", "--model offline --name steps --plan", task)
    assert ip.user_ns["total"] == 6
    assert answer(store_path, "steps").endswith("Last result:\n6")
    store, row = only_run(store_path, "steps")
    plan = load_state(store, row).plan  # type: ignore[arg-type]
    titles = [i["title"] for i in plan]
    assert titles == ["Count to three", "Run code block 2", "Run code block 3"]
    assert {i["status"] for i in plan} == {"done"}


def test_headings_alone_write_a_plan_and_mark_each_item_done(ip: Any, store_path: Path) -> None:
    task = "## First\n" + block("a = 1") + "## Second\n" + block("b = a + 1") + block("b")
    ip.run_cell_magic("agent", "--model offline --name headed", task)
    assert answer(store_path, "headed").endswith("Last result:\n2")
    store, row = only_run(store_path, "headed")
    checkpoints = store.checkpoints(row.run_id)  # type: ignore[attr-defined]
    plans = [c.info["progress"] for c in checkpoints if "progress" in c.info]
    assert plans == ["0/2", "1/2", "2/2"]
    assert not [c for c in checkpoints if c.info.get("strategy") == "item"]  # no --plan


def test_tool_blocks_call_a_user_tool_and_an_mcp_tool(
    kernel_factory, tmp_path: Path, store_path: Path
) -> None:
    effects, mcp_log = tmp_path / "effects.log", tmp_path / "mcp.log"
    k = kernel_factory()
    define(k, effects)
    configure(k, reports(mcp_log))
    task = (
        "Look the quarter up and report it.\n"
        + block('{"key": "q3"}', "tool reports__lookup")
        + block('{"text": "q3 looks fine", "copies": 2}', "tool send_report")
    )
    result = k.run("%%agent --model offline --name caller --mcp reports\n" + task, cell_id="t")
    assert result.status == "ok", result.text
    assert "Done: made 2 tool call(s)." in result.text
    assert "Last result:\nsent 2 x q3 looks fine" in result.text
    assert lines(effects) == ["start", "done"]
    assert lines(mcp_log) == ["lookup start", "lookup done", "stopped"]
    store, row = only_run(store_path)
    results = [c for c in store.checkpoints(row.run_id) if c.kind == "tool_result"]  # type: ignore[attr-defined]
    assert [c.info["error"] for c in results] == [False, False]


def test_delegate_blocks_run_child_agents_and_each_call_has_its_own_id(
    kernel_factory, tmp_path: Path, store_path: Path
) -> None:
    log = tmp_path / "ran.log"
    task = (
        "Split the work.\n````delegate cleaner\nClean the numbers.\n"
        + logged(log, "cleaned")
        + block("values = [3, 1, 2]\nsorted(values)")
        + "````\n"
        + block("sum(values)")
    )
    k = kernel_factory()
    result = k.run("%%agent --model offline --name lead\n" + task, cell_id="d")
    assert result.status == "ok", result.text
    assert "Done: ran 1 code block(s), delegated 1 task(s)." in result.text
    assert "Last result:\n6" in result.text
    assert lines(log) == ["cleaned"]
    store = Store(store_path)
    child = [r for r in store.runs() if r.agent == "cleaner"]
    assert len(child) == 1 and child[0].info["parent_agent"] == "lead"
    child_state = load_state(store, child[0])
    assert "Last result:\n[1, 2, 3]" in child_state.messages[-1]["content"]
    again = k.run("%%agent --model offline --name lead\n" + task, cell_id="d")
    assert "restored from the store" in again.text
    assert lines(log) == ["cleaned"]  # the child is restored, never run again

    # With --plan each item starts with a fresh view; a call id reused there would
    # find the first item's child again and restore it instead of running the second.
    task = "".join(
        f"## Item {n}\n````delegate helper\n" + block(f"from_{n} = {n}") + "````\n" for n in (1, 2)
    )
    result = k.run("%%agent --model offline --name twice --plan\n" + task, cell_id="tw")
    assert result.status == "ok", result.text
    assert k.run("print(from_1, from_2)").stdout.strip() == "1 2"
    children = [r for r in store.runs() if r.info.get("parent_agent") == "twice"]
    assert [r.agent for r in children] == ["helper", "helper"]  # a child run per call
    (parent,) = [r for r in store.runs() if r.agent == "twice"]
    calls = [m for m in load_state(store, parent, full=True).messages if m.get("tool_calls")]
    ids = [c["id"] for m in calls for c in m["tool_calls"]]
    assert len(ids) == len(set(ids)) == 3  # the plan, two delegations


def test_a_bad_directive_is_the_answer_and_runs_nothing(
    ip: Any, tmp_path: Path, store_path: Path
) -> None:
    log = tmp_path / "ran.log"
    task = logged(log, "ran") + block("[1, 2]", "tool lookup")
    ip.run_cell_magic("agent", "--model offline --name bad", task)
    assert answer(store_path, "bad") == (
        "The task cannot be followed: the arguments of ```tool lookup must be a JSON object, "
        'e.g. {"key": "q3"}.'
    )
    assert lines(log) == []


def test_fences_nest_and_headings_inside_blocks_are_code() -> None:
    task = "````delegate kid\n## not an item\n```python\nx = 1\n```\n````\n## Item\n```py\ny\n```"
    script = parse_task(task)
    assert [s.title for s in script.sections] == ["Item"]
    (delegated, ran) = script.actions
    assert delegated.arguments == {"agent": "kid", "task": "## not an item\n```python\nx = 1\n```"}
    assert ran.arguments == {"code": "y"}
    # Without a plan in view and with no results yet, the plan is written first.
    reply = offline_reply({"messages": [{"role": "user", "content": task}]})
    assert reply["tool_calls"][0]["name"] == "update_plan"
