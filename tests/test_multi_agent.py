"""Agents that wait for each other (``--after``) and delegate to each other, in real kernels.

The scripted model answers by the agent's task, so several agents share one
endpoint; its request log tells which step of which agent was asked for, and
how often. Tool side effects are counted in a file.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer
from jupyter_agent.views.checkpoint import detail
from jupyter_agent.views.listing import Reader
from jupyter_agent.views.timeline import Timeline

from .kernels import Kernel
from .test_kernel_timeline import click, settle, state, value, widget_id
from .test_magics import ip  # noqa: F401  (the in-process shell fixture)

pytestmark = pytest.mark.timeout(240)

LOADER = "%%agent -m scripted --name loader\nLoad the data."
CLEANER = "%%agent -m scripted --name cleaner --after loader\nClean the data."


def tool(code: str) -> dict:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}]}


def task_of(body: dict) -> str:
    return next(m["content"] for m in body["messages"] if m.get("role") == "user")


def steps_of(body: dict) -> int:
    return sum(1 for m in body["messages"] if m.get("role") == "assistant")


def by_task(log: Path, slow: dict[str, int] | None = None) -> Callable[[dict], dict]:
    """Each agent's steps write ``<agent><step>`` to ``log``; ``slow``: agent → step that sleeps."""
    plans = {"Load": ("load", 2, "Loaded."), "Clean": ("clean", 1, "Cleaned.")}

    def reply(body: dict) -> dict:
        task = task_of(body)
        name, steps, answer = next(v for k, v in plans.items() if task.startswith(k))
        step = steps_of(body)
        if step >= steps:
            return {"content": answer}
        nap = "import time; time.sleep(30)\n" if (slow or {}).get(name) == step else ""
        code = f"with open({str(log)!r}, 'a') as f: f.write('{name}{step}\\n')\n{nap}{name}{step} = {step}"
        return tool(code)

    return reply


def requested(server: ScriptedServer) -> list[tuple[str, int]]:
    """(task, step) of each model request, in order."""
    return [asked_for(r["body"]) for r in server.requests if r["scripted"]]


def asked_for(body: dict) -> tuple[str, int]:
    """(task's first word, step) a model request asks for."""
    return (task_of(body).split()[0], steps_of(body))


def tool_results(server: ScriptedServer, task: str, step: int) -> list[str]:
    """The tool results in the one request for that step of that task."""
    (body,) = [
        r["body"] for r in server.requests if r["scripted"] and asked_for(r["body"]) == (task, step)
    ]
    return [m["content"] for m in body["messages"] if m.get("role") == "tool"]


def wait_for_line(log: Path, line: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and line in log.read_text().splitlines():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{line!r} never appeared in {log}")


def test_after_waits_for_an_interrupted_agent_and_runs_once_it_is_done(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, tmp_path: Path
) -> None:
    log = tmp_path / "effects.log"
    scripted.set_script(by_task(log, slow={"load": 1}))
    k1 = kernel_factory()
    k1.start(LOADER, cell_id="loader")
    wait_for_line(log, "load1")
    k1.kill()  # in loader's second step

    scripted.set_script(by_task(log))
    k2 = kernel_factory()
    waiting = k2.run(CLEANER, cell_id="cleaner")
    assert waiting.status == "ok", waiting.text
    assert "Agent cleaner is waiting for loader (interrupted at step 2)" in waiting.text
    assert "has not started" in waiting.text
    assert not [t for t, _ in requested(scripted) if t == "Clean"]  # no model call

    # Run All: loader resumes and finishes, then cleaner runs.
    assert k2.run(LOADER, cell_id="loader").status == "ok"
    cleaner = k2.run(CLEANER, cell_id="cleaner")
    assert cleaner.status == "ok" and "Cleaned." in cleaner.text, cleaner.text
    # No completed step was asked for twice: after the kill, loader's step 1 (its
    # python call in flight) ran again without a new model call.
    assert requested(scripted) == [
        ("Load", 0),
        ("Load", 1),
        ("Load", 2),
        ("Clean", 0),
        ("Clean", 1),
    ]
    assert log.read_text().splitlines() == ["load0", "load1", "load1", "clean0"]

    # A reopened notebook, Run All again: both restore, no model call.
    before = len(requested(scripted))
    k3 = kernel_factory()
    for cell, cid in ((LOADER, "loader"), (CLEANER, "cleaner")):
        again = k3.run(cell, cell_id=cid)
        assert again.status == "ok" and "restored from the store" in again.text, again.text
    assert len(requested(scripted)) == before


OFFLINE = "```python\nx = 1\n```"


@pytest.mark.parametrize(
    ("agent", "line", "message"),
    [
        ("cleaner", "--after", "expected one argument"),
        ("cleaner", "--after ,", "--after needs the names of agents"),
        ("cleaner", "--after cleaner", "an agent cannot wait for itself"),
        ("cleaner", "--after nobody", "no agent of that name in this notebook"),
        ("loader", "--after cleaner", "--after makes a cycle: loader → cleaner → loader"),
    ],
)
def test_bad_after_is_one_clear_error(ip: Any, agent: str, line: str, message: str) -> None:  # noqa: F811
    ip.run_cell_magic("agent", "-m offline --name loader", OFFLINE)
    ip.run_cell_magic("agent", "-m offline --name cleaner --after loader", OFFLINE)
    with pytest.raises(UsageError, match=message):
        ip.run_cell_magic("agent", f"-m offline --name {agent} {line}", "Another task.")


PARENT = "%%agent -m scripted --name lead\nSplit the work."


def delegate(agent: str, task: str) -> dict:
    return {"tool_calls": [{"name": "delegate", "arguments": {"agent": agent, "task": task}}]}


def family(log: Path, slow_beta: bool = False) -> Callable[[dict], dict]:
    """lead delegates to alpha, then to beta, then answers with what they said."""

    def reply(body: dict) -> dict:
        task, step = task_of(body), steps_of(body)
        if task.startswith("Split"):
            if step == 0:
                return delegate("alpha", "Alpha: count.")
            if step == 1:
                return delegate("beta", "Beta: sum.")
            results = [m["content"] for m in body["messages"] if m.get("role") == "tool"]
            return {"content": "Lead done: " + " | ".join(results)}
        name = task.split(":")[0].lower()
        if step == 0:
            nap = "import time; time.sleep(30)\n" if slow_beta and name == "beta" else ""
            code = f"with open({str(log)!r}, 'a') as f: f.write('{name}\\n')\n{nap}{name}_x = 1"
            return tool(code)
        return {"content": f"{name} says hi"}

    return reply


def test_a_parent_delegates_to_two_children_and_survives_a_kill_in_the_second(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, tmp_path: Path
) -> None:
    log = tmp_path / "effects.log"
    scripted.set_script(family(log, slow_beta=True))
    k1 = kernel_factory()
    k1.start(PARENT, cell_id="lead")
    wait_for_line(log, "beta")
    k1.kill()  # while beta runs its python call

    scripted.set_script(family(log))
    k2 = kernel_factory()
    result = k2.run(PARENT, cell_id="lead")
    assert result.status == "ok", result.text
    assert "resuming child agent beta" in result.text
    assert "Lead done: alpha says hi | beta says hi" in result.text
    # No completed step of the parent or a child was asked for twice; alpha never re-ran.
    assert requested(scripted) == [
        ("Split", 0),
        ("Alpha:", 0),
        ("Alpha:", 1),
        ("Split", 1),
        ("Beta:", 0),
        ("Beta:", 1),
        ("Split", 2),
    ]
    assert log.read_text().splitlines() == ["alpha", "beta", "beta"]  # beta's call was in flight
    assert k2.run("print(alpha_x, beta_x)").stdout.strip() == "1 1"
    listing = k2.run("%agent list").stdout
    lines = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert set(lines) == {"lead", "alpha", "beta"}, listing
    order = [line.strip().split()[0] for line in listing.splitlines()[1:]]
    assert order == ["lead", "alpha", "beta"], listing
    assert [line[:4] for line in listing.splitlines()[2:]] == ["  al", "  be"], listing
    # The parent's budget covers its children: its tokens include theirs.
    again = k2.run(PARENT, cell_id="lead")
    assert "restored from the store" in again.text and len(requested(scripted)) == 7


@pytest.fixture
def lead_ip(ip: Any, scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> Any:  # noqa: F811
    """The in-process shell, its model endpoint the scripted server."""
    monkeypatch.setenv("OPENAI_BASE_URL", scripted.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    return ip


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (delegate("../x", "t"), "Invalid agent name"),
        (delegate("lead", "t"), "is this agent or one of its parents"),
        ({"tool_calls": [{"name": "delegate", "arguments": {"agent": "a"}}]}, "'task'"),
    ],
)
def test_bad_delegation_is_told_to_the_model(
    lead_ip: Any, scripted: ScriptedServer, call: dict, error: str
) -> None:
    scripted.set_script([call, {"content": "Gave up."}])
    lead_ip.run_cell_magic("agent", "-m scripted --name lead", "Split the work.")
    told = [m["content"] for m in scripted.requests[-1]["body"]["messages"] if m["role"] == "tool"]
    assert len(told) == 1 and told[0].startswith("Error:") and error in told[0], told


def test_delegation_depth_is_limited(
    lead_ip: Any, store_path: Path, scripted: ScriptedServer
) -> None:

    def reply(body: dict) -> dict:
        level = int(task_of(body).split()[1])
        if steps_of(body) == 0:
            return delegate(f"level{level + 1}", f"Level {level + 1}")
        told = [m["content"] for m in body["messages"] if m.get("role") == "tool"]
        return {"content": f"level {level}: {told[-1]}"}

    scripted.set_script(reply)
    lead_ip.run_cell_magic("agent", "-m scripted --name level0", "Level 0")
    # level1..level3 are children; level3 may not delegate: the error reaches its model,
    # and each answer travels up once, as its parent's tool result.
    last = scripted.requests[-1]["body"]["messages"][-1]["content"]
    assert (
        last == "level 1: level 2: level 3: Error: delegation is limited to 3 levels of "
        "child agents and this agent is at the deepest; do the work yourself"
    ), last
    runs = {r.agent: r for r in Store(store_path).runs()}
    assert {a: r.info.get("depth", 0) for a, r in runs.items()} == {
        "level0": 0,
        "level1": 1,
        "level2": 2,
        "level3": 3,
    }
    assert runs["level2"].info["parent_agent"] == "level1"


def test_a_ninth_child_is_refused_and_the_run_goes_on(
    lead_ip: Any, store_path: Path, scripted: ScriptedServer
) -> None:
    asks = ["../bad", *(f"kid{n}" for n in range(1, 10))]  # a refused name starts no child

    def reply(body: dict) -> dict:
        task, step = task_of(body), steps_of(body)
        if not task.startswith("Split"):
            return {"content": f"{task.split(':')[0]} done"}
        if step < len(asks):
            return delegate(asks[step], f"{asks[step]}: answer.")
        told = [m["content"] for m in body["messages"] if m.get("role") == "tool"]
        return {"content": f"Lead done with {len(told)} results"}

    scripted.set_script(reply)
    lead_ip.run_cell_magic("agent", "-m scripted --name lead", "Split the work.")
    told = [m["content"] for m in scripted.requests[-1]["body"]["messages"] if m["role"] == "tool"]
    assert len(told) == 10 and told[0].startswith("Error: Invalid agent name"), told
    assert told[1:9] == [f"kid{n} done" for n in range(1, 9)], told
    assert told[9] == ("Error: an agent may delegate at most 8 subtasks; do the rest yourself"), (
        told[9]
    )
    store = Store(store_path)
    runs = {r.agent: r for r in store.runs()}
    assert set(runs) == {"lead", *(f"kid{n}" for n in range(1, 9))}  # no kid9
    for run in runs.values():
        assert store.checkpoints(run.run_id)[-1].status == "done", run.agent
    assert scripted.requests[-1]["body"]["messages"][-1]["content"] == told[9]
    assert store.checkpoints(runs["lead"].run_id)[-1].summary.startswith(
        "Lead done with 10 results"
    )


# -- an approval inside a child, answered from the parent ---------------------------------

CHAIN = [("lead", "Split the work."), ("counter", "Count: rows."), ("helper", "Help: sum.")]


def approval_chain(log: Path, depth: int) -> Callable[[dict], dict]:
    """lead delegates down to a child ``depth`` levels below it, whose python call needs approval."""
    levels = CHAIN[: depth + 1]

    def reply(body: dict) -> dict:
        task, step = task_of(body), steps_of(body)
        level = next(i for i, (_, t) in enumerate(levels) if t == task)
        name = levels[level][0]
        if step == 0 and level < depth:
            return delegate(*levels[level + 1])
        if step == 0:
            return tool(f"with open({str(log)!r}, 'a') as f: f.write('{name}\\n')\nrows = 42")
        if level == depth:
            return {"content": f"{name} counted 42 rows"}
        told = [m["content"] for m in body["messages"] if m.get("role") == "tool"]
        return {"content": f"{name} got: {told[-1]}"}

    return reply


@pytest.mark.parametrize(("via", "depth"), [("widget", 1), ("magic", 1), ("widget", 2)])
def test_an_approval_inside_a_child_is_answered_from_the_parent(
    kernel_factory: Callable[..., Kernel],
    scripted: ScriptedServer,
    tmp_path: Path,
    store_path: Path,
    via: str,
    depth: int,
) -> None:
    log = tmp_path / "effects.log"
    scripted.set_script(approval_chain(log, depth))
    kernel = kernel_factory()
    paused = kernel.run("%%agent -m scripted --name lead --approve python\nSplit the work.")
    assert paused.status == "ok", paused.text
    waiting = CHAIN[depth][0]
    why = ": ".join(f"waiting for child agent {name}" for name, _ in CHAIN[1 : depth + 1])
    assert f"{why}: waiting for approval" in paused.text, paused.text
    store = Store(store_path)
    lead = store.runs(agent="lead")[0]
    child = store.runs(agent=waiting)[0]
    assert store.checkpoints(child.run_id)[-1].status == "awaiting_approval"
    assert not log.exists()

    if via == "widget":
        # The parent's timeline offers the child's call, and its Approve answers it.
        model_id = widget_id(paused)
        pending = state(kernel, model_id)["pending"]
        assert pending["agent"] == waiting and pending["parent"] == lead.run_id, pending
        assert pending["run"] == child.run_id and "rows = 42" in pending["code"], pending
        click(kernel, model_id, type="approve", call_id=pending["call_id"])
        settle(kernel)
        s = state(kernel, model_id)
        assert s["summary"]["status"] == "done" and s["pending"] == {}, s["summary"]
        answer = s["entries"]["items"][-1]["summary"]
    else:
        approved = kernel.run("%agent approve lead")
        assert approved.status == "ok", approved.text
        assert (
            f"Approving the call child agent {waiting} waits on (agent lead waits for it)"
            in approved.text
        ), approved.text
        answer = approved.text
    expected = " got: ".join(name for name, _ in CHAIN[:depth]) + f" got: {waiting} counted 42 rows"
    assert expected in answer, answer

    # The child ran its call once, then each parent went on; no step was asked for twice.
    assert log.read_text().splitlines() == [waiting]
    asked = requested(scripted)
    assert len(asked) == len(set(asked)) == 2 * (depth + 1), asked
    for run in store.runs():
        history = store.checkpoints(run.run_id)
        assert history[-1].status == "done", (run.agent, history[-1])
        delegated = [c for c in history if c.kind == "tool_result" and "child_run" in c.info]
        assert len(delegated) == (run.agent != waiting), (run.agent, delegated)
    final = scripted.requests[-1]["body"]["messages"]
    results = [m["content"] for m in final if m.get("role") == "tool"]
    assert len(results) == 1 and results[0].endswith(f"{waiting} counted 42 rows"), results


def test_a_parent_whose_child_was_approved_directly_waits_for_no_approval(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, tmp_path: Path
) -> None:
    log = tmp_path / "effects.log"
    scripted.set_script(approval_chain(log, 1))
    kernel = kernel_factory()
    cell = "%%agent -m scripted --name lead --approve python\nSplit the work."
    assert "waiting for approval" in kernel.run(cell, cell_id="lead").text
    assert "counter counted 42 rows" in kernel.run("%agent approve counter").text
    # lead's pause still names its child, but the child waits no more: nothing to forward.
    again = kernel.run("%agent approve lead")
    assert "UsageError: Agent 'lead' is not waiting for an approval." in again.text, again.text
    resumed = kernel.run(cell, cell_id="lead")
    assert "lead got: counter counted 42 rows" in resumed.text, resumed.text
    asked = requested(scripted)
    assert len(asked) == len(set(asked)) == 4, asked
    assert log.read_text().splitlines() == ["counter"]


def answer_from_the_parent(
    kernel: Kernel, scripted: ScriptedServer, log: Path, **content: Any
) -> dict:
    """lead waits on counter's call; ``content`` is the click on lead's timeline that answers it.

    Returns the timeline's state once the child, then the parent, went on.
    """
    scripted.set_script(approval_chain(log, 1))
    paused = kernel.run("%%agent -m scripted --name lead --approve python\nSplit the work.")
    assert "waiting for child agent counter: waiting for approval" in paused.text, paused.text
    model_id = widget_id(paused)
    pending = state(kernel, model_id)["pending"]
    assert pending["agent"] == "counter" and "rows = 42" in pending["code"], pending
    click(kernel, model_id, call_id=pending["call_id"], **content)
    settle(kernel)
    return state(kernel, model_id)


def test_a_childs_call_rejected_from_the_parent_is_told_to_the_child(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, tmp_path: Path
) -> None:
    log = tmp_path / "effects.log"
    kernel = kernel_factory()
    s = answer_from_the_parent(kernel, scripted, log, type="reject", note="count nothing yet")
    assert s["summary"]["status"] == "done" and s["pending"] == {}, s["summary"]
    assert s["entries"]["items"][-1]["summary"] == "lead got: counter counted 42 rows"
    assert not log.exists() and value(kernel, "'rows' in globals()") is False  # never ran
    # The child's next request carries the rejection as its call's result.
    results = tool_results(scripted, "Count:", 1)
    assert len(results) == 1 and "rejected" in results[0], results
    assert "count nothing yet" in results[0], results
    asked = requested(scripted)
    assert len(asked) == len(set(asked)) == 4, asked


def test_a_childs_call_edited_from_the_parent_runs_as_edited(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, tmp_path: Path
) -> None:
    log = tmp_path / "effects.log"
    kernel = kernel_factory()
    edited = f"with open({str(log)!r}, 'a') as f: f.write('edited\\n')\nrows = 7"
    s = answer_from_the_parent(kernel, scripted, log, type="approve", code=edited)
    assert s["summary"]["status"] == "done" and s["pending"] == {}, s["summary"]
    assert log.read_text().splitlines() == ["edited"]  # the edited code, once; not the original
    assert value(kernel, "rows") == 7
    assert tool_results(scripted, "Count:", 1) == ["(no output)"]
    asked = requested(scripted)
    assert len(asked) == len(set(asked)) == 4, asked


# -- agents in parallel ---------------------------------------------------------------

PARALLEL = {
    name: f"%%agent -m scripted --name {name} --background\n{name.title()} works."
    for name in ("alpha", "beta")
}
PARALLEL_STEPS = 3


def parallel(log: Path) -> Callable[[dict], dict]:
    """alpha and beta each run three python calls that record when they start and end."""

    def reply(body: dict) -> dict:
        name, step = task_of(body).split()[0].lower(), steps_of(body)
        if step >= PARALLEL_STEPS:
            return {"content": f"{name} finished."}

        def stamp(edge: str) -> str:
            line = f"{name} {step} {edge} " + "{time.time()}"
            return f"with open({str(log)!r}, 'a') as f: f.write(f'{line}\\n')"

        code = (
            f"import time\n{stamp('start')}\ntime.sleep(0.6)\n{name}{step} = {step}\n{stamp('end')}"
        )
        return tool(code)

    return reply


def intervals(log: Path, killed_at: float) -> list[tuple[float, float, str]]:
    """(start, end, who) of each python call; one cut short by the kill ends at ``killed_at``."""
    starts: dict[str, float] = {}
    out = []
    for line in log.read_text().splitlines():
        name, step, edge, at = line.split()
        who = f"{name}{step}"
        if edge == "start":
            if who in starts:  # run again after the kill: the first run never ended
                out.append((starts[who], killed_at, f"{who} (killed)"))
            starts[who] = float(at)
        else:
            out.append((starts.pop(who), float(at), who))
    return sorted(out)


def model_steps_done(store_path: Path) -> dict[str, int]:
    store = Store(store_path)
    return {
        r.agent: sum(1 for c in store.checkpoints(r.run_id) if c.kind == "model")
        for r in store.runs()
    }


def test_two_background_agents_run_at_once_and_never_share_the_namespace(
    kernel_factory: Callable[..., Kernel],
    scripted: ScriptedServer,
    tmp_path: Path,
    store_path: Path,
) -> None:
    log = tmp_path / "calls.log"
    scripted.set_script(parallel(log))
    k1 = kernel_factory()
    for name, cell in PARALLEL.items():
        started = k1.run(cell, cell_id=name)
        assert started.status == "ok" and "running in the background" in started.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not log.exists() or log.read_text().count(" end ") < 1):
        time.sleep(0.05)
    k1.kill()
    killed_at = time.time()
    done_at_kill = model_steps_done(store_path)
    assert set(done_at_kill) == {"alpha", "beta"}
    before = len(requested(scripted))

    k2 = kernel_factory()
    for name, cell in PARALLEL.items():
        assert k2.run(cell, cell_id=name).status == "ok"
    assert (
        k2.run(
            "from jupyter_agent.kernel.runtime import current\nassert current().wait_all(90)"
        ).status
        == "ok"
    )
    assert k2.run("print(alpha2, beta2)").stdout.strip() == "2 2"
    for name in PARALLEL:
        runs = Store(store_path).runs(agent=name)
        last = Store(store_path).checkpoints(runs[-1].run_id)[-1]
        assert len(runs) == 1 and last.status == "done", (name, last)

    # Resuming asked for no step that had completed (had its model checkpoint) at the kill.
    after = requested(scripted)[before:]
    for name, done in done_at_kill.items():
        asked = sorted(step for task, step in after if task == name.title())
        assert asked and asked[0] >= done and asked == list(range(asked[0], PARALLEL_STEPS + 1))
    # Their python calls never overlapped, though both agents ran at once.
    calls = intervals(log, killed_at)
    assert {re.sub(r"\d.*", "", who) for _, _, who in calls} == {"alpha", "beta"}
    for (_, end, who), (start, _, other) in zip(calls, calls[1:], strict=False):
        assert end <= start, f"{who} and {other} ran at the same time"
    # The one that waited said so, in its own output.
    logs = k2.run(
        "import ipywidgets.widgets.widget as _ww\n"
        "print('\\n'.join(''.join(w._log) for w in list(_ww._instances.values()) "
        "if hasattr(w, 'timeline')))"
    ).stdout
    assert "waiting for the namespace (agent" in logs and "is running python)" in logs, logs


# -- a shared workspace: read_agent -----------------------------------------------------


def readers(log: Path) -> Callable[[dict], dict]:
    """lead delegates to alpha, then beta; beta reads alpha's answer and an unknown agent."""

    def reply(body: dict) -> dict:
        task, step = task_of(body), steps_of(body)
        told = [m["content"] for m in body["messages"] if m.get("role") == "tool"]
        if task.startswith("Split"):
            if step == 0:
                return delegate("alpha", "Alpha: count.")
            if step == 1:
                return delegate("beta", "Beta: read alpha.")
            return {"content": "Lead done: " + " | ".join(told)}
        if task.startswith("Alpha"):
            if step == 0:
                return tool(f"with open({str(log)!r}, 'a') as f: f.write('alpha\\n')\ncount = 42")
            return {"content": "alpha counted 42 rows"}
        if step == 0:
            read = [{"name": "read_agent", "arguments": {"agent": a}} for a in ("alpha", "nobody")]
            return {"tool_calls": read}
        return {"content": "beta read: " + told[0].replace("\n", " ")}

    return reply


def test_read_agent_passes_a_siblings_answer_and_the_timeline_nests_children(
    kernel_factory: Callable[..., Kernel],
    scripted: ScriptedServer,
    tmp_path: Path,
    store_path: Path,
) -> None:
    scripted.set_script(readers(tmp_path / "effects.log"))
    kernel = kernel_factory()
    result = kernel.run(PARENT, cell_id="lead")
    assert result.status == "ok" and "Lead done:" in result.text, result.text
    beta_last = next(
        r["body"]["messages"]
        for r in reversed(scripted.requests)
        if task_of(r["body"]).startswith("Beta")
    )
    read, unknown = [m["content"] for m in beta_last if m.get("role") == "tool"]
    assert json.loads(read) == {
        "agent": "alpha",
        "status": "done",
        "status_text": "done after 2 steps",
        "steps": 2,
        "parent_agent": "lead",
        "final_answer": "alpha counted 42 rows",
    }
    assert unknown.startswith("Error: no agent named 'nobody' in this notebook"), unknown
    assert "alpha" in unknown and "lead" in unknown  # the names it could have used

    store = Store(store_path)
    notebook = store.runs(agent="lead")[0].notebook
    # The REST API's agent summaries carry the parent, so a list can show the tree.
    agents = {a["name"]: a for a in Reader(store).agents(notebook)}
    assert {n: a["parent_agent"] for n, a in agents.items()} == {
        "lead": None,
        "alpha": "lead",
        "beta": "lead",
    }
    # The parent's timeline: each delegate call links to its child, whose checkpoints nest there.
    view = Timeline(store, notebook, "lead")
    view.load()
    linked = [e for e in view.history if "child" in e]
    assert [(e["kind"], e["child"]["agent"]) for e in linked] == [
        ("tool_call", "alpha"),
        ("tool_result", "alpha"),
        ("tool_call", "beta"),
        ("tool_result", "beta"),
    ]
    alpha = linked[0]["child"]
    assert alpha["text"] == "done after 2 steps" and "items" not in linked[1]["child"]
    assert [e["kind"] for e in alpha["items"]] == [
        "start",
        "model",
        "tool_call",
        "tool_result",
        "model",
    ]
    assert view.summary()["steps"] == 3  # the children's steps are theirs, not lead's
    opened = detail(view, alpha["run"], alpha["items"][-1]["step"])
    assert opened["messages"][0]["content"] == "alpha counted 42 rows"


BACKGROUND_LOADER = "%%agent -m scripted --name loader --background\nLoad the data."
ANALYST = "%%agent -m scripted --name analyst --after loader\nClean the data."


def run_all(kernel: Kernel) -> tuple[Any, Any]:
    """Run All: both execute requests are sent at once, as a frontend does."""
    return kernel.start(BACKGROUND_LOADER, "loader"), kernel.start(ANALYST, "analyst")


def test_run_all_waits_for_a_background_agent_this_kernel_started_or_resumed(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, tmp_path: Path
) -> None:
    log = tmp_path / "effects.log"
    scripted.set_script(by_task(log, slow={"load": 1}))
    k1 = kernel_factory()
    # A fresh kernel and store: loader's background job has started but written nothing yet.
    loader, analyst = run_all(k1)
    assert k1.wait(loader).status == "ok", loader.text
    k1.wait_for(analyst, "Agent analyst is waiting for loader")
    assert "no agent of that name" not in analyst.text
    wait_for_line(log, "load1")
    k1.kill()  # in loader's second step (it sleeps), with analyst waiting for it

    # After the kill, Run All again: loader's resume was just launched here.
    scripted.set_script(by_task(log))
    k2 = kernel_factory()
    loader, analyst = (k2.wait(cell) for cell in run_all(k2))
    assert loader.status == "ok", loader.text
    assert "has not started" not in analyst.text, analyst.text
    assert "Cleaned." in analyst.text, analyst.text
    assert [t for t, _ in requested(scripted)].count("Clean") == 2


def test_a_child_may_not_take_the_name_of_a_top_level_agent(
    lead_ip: Any, store_path: Path, scripted: ScriptedServer, tmp_path: Path
) -> None:
    log = tmp_path / "effects.log"

    def reply(body: dict) -> dict:
        task, step = task_of(body), steps_of(body)
        if task.startswith("Load"):
            if step == 0:
                return tool(f"with open({str(log)!r}, 'a') as f: f.write('load\\n')")
            return {"content": "Loaded."}
        if task.startswith("Split"):
            if step == 0:
                return delegate("loader", "Child: count.")
            told = [m["content"] for m in body["messages"] if m.get("role") == "tool"]
            return {"content": "Lead: " + told[-1]}
        return {"content": "child done"}

    scripted.set_script(reply)
    lead_ip.run_cell_magic("agent", "-m scripted --name loader", "Load the data.")
    lead_ip.run_cell_magic("agent", "-m scripted --name lead", "Split the work.")
    told = [m["content"] for m in scripted.requests[-1]["body"]["messages"] if m["role"] == "tool"]
    assert len(told) == 1 and told[0].startswith("Error:") and "loader" in told[0], told
    # Re-running loader's unchanged cell restores it: no model call, no side effect again.
    before = len(scripted.requests)
    lead_ip.run_cell_magic("agent", "-m scripted --name loader", "Load the data.")
    assert len(scripted.requests) == before
    assert log.read_text().splitlines() == ["load"]
    runs = Store(store_path).runs(agent="loader")
    assert [r.info.get("parent_agent") for r in runs] == [None]


def test_a_top_level_agent_may_not_take_the_name_of_a_child(
    lead_ip: Any, store_path: Path, scripted: ScriptedServer
) -> None:
    def reply(body: dict) -> dict:
        if task_of(body).startswith("Split") and steps_of(body) == 0:
            return delegate("counter", "Child: count.")
        return {"content": "done"}

    scripted.set_script(reply)
    lead_ip.run_cell_magic("agent", "-m scripted --name lead", "Split the work.")
    asked = len(scripted.requests)
    for line in ("-m scripted --name counter", "-m scripted --name counter --restart"):
        with pytest.raises(UsageError, match="'counter' is a child agent of 'lead'"):
            lead_ip.run_cell_magic("agent", line, "Count something else.")
    assert len(scripted.requests) == asked  # refused before any model call
    runs = Store(store_path).runs(agent="counter")
    assert [r.info.get("parent_agent") for r in runs] == ["lead"]


def test_a_parents_ledger_adds_up_and_deleting_it_takes_its_children(
    lead_ip: Any, store_path: Path, scripted: ScriptedServer
) -> None:
    def reply(body: dict) -> dict:
        task, step = task_of(body), steps_of(body)
        if task.startswith("Split") and step == 0:
            return delegate("alpha", "Alpha: count.")
        return {"content": f"{task.split()[0]} done"}

    scripted.set_script(reply)
    lead_ip.run_cell_magic("agent", "-m scripted --name lead", "Split the work.")
    store = Store(store_path)
    notebook = store.runs(agent="lead")[0].notebook
    reader = Reader(store)
    agents = {a["name"]: a for a in reader.agents(notebook)}
    lead, alpha = agents["lead"], agents["alpha"]
    assert lead["tokens"] > alpha["tokens"] > 0  # the parent's ledger holds its child's
    for row in (lead, alpha):
        assert row["tokens"] == row["prompt_tokens"] + row["completion_tokens"], row

    reader.delete_agent(notebook, "lead")
    left = store.runs(notebook=notebook)
    assert not [r.agent for r in left if r.info.get("parent_agent") == "lead"], left
    assert {a["name"] for a in reader.agents(notebook)} == set()


def test_a_parents_cost_holds_its_childs_at_the_childs_price(
    lead_ip: Any, store_path: Path, scripted: ScriptedServer
) -> None:
    def reply(body: dict) -> dict:
        task, step = task_of(body), steps_of(body)
        if task.startswith("Split") and step == 0:
            return delegate("alpha", "Alpha: count.")
        return {"content": f"{task.split()[0]} done"}

    scripted.set_script(reply)
    lead_ip.run_line_magic("config", "AgentMagics.prices = {'scripted': [10.0, 30.0, 1.0]}")
    try:
        lead_ip.run_cell_magic("agent", "-m scripted --name lead", "Split the work.")
    finally:
        lead_ip.run_line_magic("config", "AgentMagics.prices = {}")
    store = Store(store_path)
    agents = {a["name"]: a for a in Reader(store).agents(store.runs(agent="lead")[0].notebook)}
    lead, alpha = agents["lead"], agents["alpha"]
    (run,) = store.runs(agent="lead")
    own = sum(c.info["cost_usd"] for c in store.checkpoints(run.run_id) if c.kind == "model")
    assert alpha["cost_usd"] > 0 and own > 0
    assert lead["cost_usd"] == pytest.approx(own + alpha["cost_usd"], rel=1e-5)
