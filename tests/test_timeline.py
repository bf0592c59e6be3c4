"""The timeline widget's model and actions, without a frontend.

Agents run for real — in an IPython shell of this process, against a DuckDB
store in tmp_path and a scripted model endpoint — and the widget is driven
through its Python API and its frontend message handler; what it would send to
a browser is recorded instead.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.testing.globalipapp import start_ipython

from jupyter_agent import vocab
from jupyter_agent.config import ClientSettings, Settings
from jupyter_agent.core import history
from jupyter_agent.errors import StoreError
from jupyter_agent.kernel import runner, widget
from jupyter_agent.kernel.identity import AgentIdentity
from jupyter_agent.kernel.runtime import current
from jupyter_agent.store.api import CheckpointRow, RunRow
from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer
from jupyter_agent.views import listing
from jupyter_agent.views.timeline import WINDOW, Timeline

AGENT = "demo"


def call(code: str) -> dict[str, Any]:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}]}


SCRIPT = [
    {"content": "First a.", **call("a = 1\nprint('a is', a)")},
    {"content": "Then b.", **call("b = a + 1\ngen = (i for i in range(3))")},
    {"content": "b is 2."},
]


def ipython() -> InteractiveShell:
    """The test session's shell, whichever test module made it first."""
    if InteractiveShell.initialized():
        return InteractiveShell.instance()
    return start_ipython() or InteractiveShell.instance()


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    with ScriptedServer(list(SCRIPT)) as server:
        yield server


@pytest.fixture
def shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scripted: ScriptedServer
) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("JUPYTER_AGENT_STORE", str(tmp_path / "store" / "agents.duckdb"))
    monkeypatch.setenv("JUPYTER_AGENT_NOTEBOOK", str(tmp_path / "nb.ipynb"))
    monkeypatch.setenv("OPENAI_BASE_URL", scripted.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    sh = ipython()
    sh.run_line_magic("load_ext", "jupyter_agent")
    sh.run_line_magic("config", "AgentMagics.retry_backoff = 0.01")
    for name in ("a", "b", "gen", "c"):
        sh.user_ns.pop(name, None)
    yield sh
    assert current().wait_all(30)
    for name in ("a", "b", "gen", "c"):
        sh.user_ns.pop(name, None)


@pytest.fixture
def store(tmp_path: Path, shell: InteractiveShell) -> Store:
    return Store(tmp_path / "store" / "agents.duckdb")


def notebook(tmp_path: Path) -> str:
    return str(tmp_path / "nb.ipynb")


def run_agent(shell: InteractiveShell, flags: str = "", prompt: str = "Compute b.") -> None:
    shell.run_cell_magic("agent", f"-m scripted --name {AGENT} {flags}", prompt)


class Recorder:
    """Stands in for the frontend: keeps what the widget sends and which traits change."""

    def __init__(self, w: widget.TimelineWidget) -> None:
        self.messages: list[dict] = []
        self.traits: list[str] = []
        w.send = lambda content, buffers=None: self.messages.append(content)  # type: ignore[method-assign]
        w.observe(lambda change: self.traits.append(change["name"]))

    def appends(self) -> list[dict]:
        return [m for m in self.messages if m["type"] == "append"]


def make_widget(store: Store, tmp_path: Path, shell: InteractiveShell) -> widget.TimelineWidget:
    return widget.TimelineWidget(
        store,
        notebook(tmp_path),
        AGENT,
        shell=shell,
        options=lambda: Settings(client=ClientSettings(retries=0)),
    )


@pytest.fixture
def timeline_widget(
    store: Store, tmp_path: Path, shell: InteractiveShell
) -> Iterator[widget.TimelineWidget]:
    w = make_widget(store, tmp_path, shell)
    yield w
    w.close()


# -- entries and status --------------------------------------------------------------------


def test_entries_come_from_store_rows(
    shell: InteractiveShell, store: Store, tmp_path: Path, timeline_widget: widget.TimelineWidget
) -> None:
    run_agent(shell)
    w = timeline_widget
    w.refresh()
    (run,) = store.runs()
    rows = store.checkpoints(run.run_id)
    items = w.entries["items"]
    assert [(e["step"], e["kind"], e["status"], e["summary"]) for e in items] == [
        (r.step, r.kind, r.status, r.summary) for r in rows
    ]
    assert [e["kind"] for e in items] == [
        "start", "model", "tool_call", "tool_result", "model", "tool_call", "tool_result", "model",
    ]  # fmt: skip
    assert w.entries["first"] == 0 and w.entries["run"] == run.run_id == w.run_id
    assert all(e["size"] > 0 and e["time"] > 0 for e in items)
    assert items[1]["tokens"] > 0
    result = items[6]["info"]
    assert result["vars"]["b"] == {"type": "int", "repr": "2", "size": result["vars"]["b"]["size"]}
    assert "gen" in result["unsaved"]
    assert w.summary["status"] == "done" and w.summary["text"] == "done after 3 steps"
    assert w.summary["step"] == 7 and w.summary["total"] == 8 and w.summary["steps"] == 3
    assert w.summary["tokens"] == sum(r.tokens for r in rows)
    assert w.summary["model"] == "scripted"
    assert {k: w.header[k] for k in ("agent", "notebook")} == {
        "agent": AGENT,
        "notebook": "nb.ipynb",
    }
    assert w.header["kinds"]["compaction"][1] == "context compacted"
    assert [r["label"] for r in w.runs] == ["#1"] and w.runs[0]["latest"]
    assert w.pending == {}


def test_text_repr_is_deterministic(
    shell: InteractiveShell, timeline_widget: widget.TimelineWidget
) -> None:
    data, _ = shell.display_formatter.format(timeline_widget)
    # Shown only where the widget is not (a terminal, nbconvert, nbval): the line
    # docs/timeline.md gives, and never the command that was just run to show it.
    text = (
        f"Agent timeline of {AGENT} (a widget: shown in JupyterLab and Notebook 7 with its kernel)"
    )
    assert data["text/plain"] == text
    assert "%agent timeline" not in text
    docs = (Path(__file__).parents[1] / "docs" / "timeline.md").read_text()
    assert text.replace(AGENT, "NAME") in " ".join(docs.split())
    assert "application/vnd.jupyter.widget-view+json" in data
    # A notebook viewer without widgets (nbconvert, GitHub) shows this instead.
    assert f"Agent timeline of <b>{AGENT}</b>" in data["text/html"]
    assert repr(timeline_widget) == text


def test_live_run_is_sent_one_entry_at_a_time(
    shell: InteractiveShell, timeline_widget: widget.TimelineWidget, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the flusher (its coalescing: tests/test_timeline_flush.py), one message each.
    monkeypatch.setattr(widget, "FLUSH_EVERY", 0)
    rec = Recorder(timeline_widget)
    run_agent(shell)
    appends = rec.appends()
    # The first checkpoint of a new run reloads (the run is new); every later one is one message.
    assert len(appends) == 7
    assert all(len(m["entries"]) == 1 for m in appends)
    assert [m["start"] for m in appends] == list(range(1, 8))
    assert rec.traits.count("entries") <= 2  # the new run, then the final refresh
    assert timeline_widget.summary["status"] == "done"


def test_a_long_run_stays_cheap(store: Store, tmp_path: Path, shell: InteractiveShell) -> None:
    w = make_widget(store, tmp_path, shell)
    rec = Recorder(w)
    run = RunRow("r1", notebook(tmp_path), AGENT, None, "p", "h", "m", None, None, time.time())
    n = 500
    started = time.perf_counter()
    for step in range(n):
        row = CheckpointRow(
            "r1", step, "model", "running", f"step {step}", time.time(), 1.0, 10, 100
        )
        w.add(run, row)
        w.flush()
    elapsed = time.perf_counter() - started
    appends = rec.appends()
    assert len(appends) == n - 1 and all(len(m["entries"]) == 1 for m in appends)
    # The list trait is resent only now and then, and only as a bounded window.
    assert rec.traits.count("entries") <= n // widget.SNAPSHOT_EVERY + 2
    assert len(w.entries["items"]) == WINDOW
    assert w.entries["first"] >= n - WINDOW - widget.SNAPSHOT_EVERY
    w.show_more(300)
    assert len(w.entries["items"]) == 300 and w.entries["items"][-1]["step"] == n - 1
    assert w.summary["tokens"] == 10 * n and w.summary["total"] == n
    assert elapsed < 5, f"{n} checkpoints took {elapsed:.1f} s"
    w.close()


def test_a_followed_history_keeps_only_its_tail_in_memory(
    shell: InteractiveShell,
    timeline_widget: widget.TimelineWidget,
    scripted: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each checkpoint taken in as written: a flusher's first batch would select the new
    # run once a window of it (more than this test's tiny ``keep``) was in the store.
    monkeypatch.setattr(widget, "FLUSH_EVERY", 0)
    steps = 12
    scripted.set_script([call(f"print({i})") for i in range(steps)] + [{"content": "Done."}])
    t = timeline_widget.timeline
    timeline_widget.window, t.keep = 3, 5  # a view showing 3 entries
    longest: list[int] = []
    dropped: list[int] = []
    add = t.add

    def measured_add(run, row):  # type: ignore[no-untyped-def]
        longest.append(len(t.history))
        dropped.append(t.dropped)
        return add(run, row)

    t.add = measured_add  # type: ignore[method-assign]
    rec = Recorder(timeline_widget)
    run_agent(shell)
    total = 1 + 3 * steps + 1  # start, three checkpoints a step, the answer
    assert max(longest) <= 2 * t.keep and max(dropped) > 0  # let go of while followed
    assert timeline_widget.summary["total"] == total
    starts = [m["start"] for m in rec.appends()]
    assert starts == list(range(starts[0], starts[0] + len(starts)))  # absolute positions
    timeline_widget.show_more(200)  # older entries come back from the store
    items = timeline_widget.entries["items"]
    assert timeline_widget.entries["first"] == 0 and len(items) == timeline_widget.summary["total"]
    assert [e["step"] for e in items] == list(range(len(items)))


class Frontend:
    """Applies every comm message a widget sends as a browser would: traits and custom ones."""

    def __init__(self, w: widget.TimelineWidget) -> None:
        self.messages: list[dict] = []
        self.state = {"summary": dict(w.summary), "runs": list(w.runs), "pending": dict(w.pending)}
        w.comm.send = self.receive  # type: ignore[method-assign]

    def receive(self, data: dict, metadata: Any = None, buffers: Any = None) -> None:
        self.messages.append(data)
        if data["method"] == "update":
            self.state.update(data["state"])
        elif data["method"] == "custom":
            msg = data["content"]
            self.state.update(msg.get("state") or {})
            self.state["summary"] = {**self.state["summary"], **msg.get("summary", {})}


def test_each_checkpoint_is_one_message_carrying_its_summary_change(
    store: Store, tmp_path: Path, shell: InteractiveShell
) -> None:
    w = make_widget(store, tmp_path, shell)
    run = RunRow("r1", notebook(tmp_path), AGENT, None, "p", "h", "m", None, None, time.time())
    w.add(run, CheckpointRow("r1", 0, "start", "running", "p", time.time(), 1.0, 0, 10))
    w.flush()
    front = Frontend(w)
    n = 300
    for step in range(1, n):
        kind = ("model", "tool_call", "tool_result")[step % 3]
        status = "done" if step == n - 1 else "running"
        usage = {"usage": {"prompt_tokens": 7, "completion_tokens": 3}} if kind == "model" else {}
        row = CheckpointRow("r1", step, kind, status, "s", time.time(), 1.0, 10, 100, usage)
        before = len(front.messages)
        w.add(run, row)
        w.flush()
        assert len(front.messages) == before + 1, front.messages[before:]
        assert front.messages[-1]["content"]["type"] == "append"
    # What the frontend pieced together from the deltas is what the kernel holds.
    assert front.state["summary"] == w.summary
    assert front.state["runs"] == w.runs and front.state["runs"][0]["status"] == "done"
    assert w.summary["status"] == "done" and w.summary["total"] == n
    models = len(range(3, n, 3))
    assert w.summary["prompt_tokens"] == 7 * models and w.summary["steps"] == models
    # A checkpoint sends only what it changed: never the whole summary again.
    deltas = [m["content"].get("summary", {}) for m in front.messages]
    assert all("model" not in d and "busy" not in d for d in deltas)
    w.close()


def test_restart_makes_a_second_run(
    shell: InteractiveShell, scripted: ScriptedServer, timeline_widget: widget.TimelineWidget
) -> None:
    run_agent(shell)
    scripted.reset_log()
    run_agent(shell, "--restart")
    w = timeline_widget
    assert [(r["label"], r["depth"], r["latest"]) for r in w.runs] == [
        ("#1", 0, False),
        ("#2", 0, True),
    ]
    assert w.run_id == w.runs[1]["id"]
    w.show_run(w.runs[0]["id"])
    assert w.run_id == w.runs[0]["id"] and w.entries["run"] == w.runs[0]["id"]


# -- opening a checkpoint --------------------------------------------------------------


def test_open_checkpoint_decodes_messages_call_result_and_vars(
    shell: InteractiveShell, timeline_widget: widget.TimelineWidget
) -> None:
    run_agent(shell)
    w = timeline_widget
    w.refresh()
    run = w.run_id
    model = w.open_checkpoint(run, 1)
    assert model["messages"][0]["role"] == "assistant"
    assert model["messages"][0]["content"] == "First a."
    assert model["messages"][0]["tool_calls"][0]["code"].startswith("a = 1")
    result = w.open_checkpoint(run, 6)
    assert result["call"]["name"] == "python" and result["call"]["code"].startswith("b = a + 1")
    assert result["messages"][0]["role"] == "tool"
    assert [v["name"] for v in result["vars"]] == ["b"]
    assert result["vars"][0]["repr"] == "2"
    assert "generator" in result["unsaved"]["gen"]
    assert result["namespace"] == ["a", "b"]
    assert w.detail == result  # what the frontend shows
    start = w.open_checkpoint(run, 0)
    assert [m["role"] for m in start["messages"]] == ["system", "user"]


# -- approvals -------------------------------------------------------------------------------


def test_approve_continues_in_the_background(
    shell: InteractiveShell, timeline_widget: widget.TimelineWidget
) -> None:
    w = timeline_widget
    run_agent(shell, "--approve")
    assert w.summary["status"] == "awaiting_approval"
    assert w.pending["code"].startswith("a = 1") and w.pending["call_id"]
    rec = Recorder(w)
    job = w.approve()
    assert job.join(30) and job.error is None
    assert w.pending["code"].startswith("b = a + 1")  # the next call waits in turn
    assert shell.user_ns["a"] == 1
    assert any(m["type"] == "log" and "a is 1" in m["text"] for m in rec.messages)
    w._on_message(w, {"type": "approve", "call_id": w.pending["call_id"]}, [])
    assert current().wait_all(30)
    assert w.summary["status"] == "done" and shell.user_ns["b"] == 2
    assert w.pending == {} and not w.summary["busy"]
    kinds = [e["kind"] for e in w.entries["items"]]
    assert kinds.count("approval") == 4 and kinds.count("resume") == 2


def test_reject_sends_the_note_to_the_model(
    shell: InteractiveShell, scripted: ScriptedServer, timeline_widget: widget.TimelineWidget
) -> None:
    w = timeline_widget
    run_agent(shell, "--approve")
    w._on_message(w, {"type": "reject", "call_id": w.pending["call_id"], "note": "no prints"}, [])
    assert current().wait_all(30)
    assert "a" not in shell.user_ns
    tool_msgs = [
        m
        for m in scripted.requests[-1]["body"]["messages"]
        if m["role"] == "tool"  # the request after the rejection
    ]
    assert "rejected" in tool_msgs[0]["content"] and "no prints" in tool_msgs[0]["content"]
    assert any(e["summary"] == "rejected: no prints" for e in w.entries["items"])


def test_edit_runs_the_changed_code(
    shell: InteractiveShell, timeline_widget: widget.TimelineWidget
) -> None:
    w = timeline_widget
    run_agent(shell, "--approve")
    job = w.approve(code="a = 40")
    assert job.join(30)
    assert shell.user_ns["a"] == 40
    edited = [e for e in w.entries["items"] if e["summary"] == "edited"]
    assert edited and edited[0]["info"]["decision"]["code"] == "a = 40"


def test_a_stale_click_is_refused(
    shell: InteractiveShell, timeline_widget: widget.TimelineWidget
) -> None:
    w = timeline_widget
    run_agent(shell, "--approve")
    w._on_message(w, {"type": "approve", "call_id": "call_not_pending"}, [])
    assert w.notice["level"] == "error" and "no longer waiting" in w.notice["text"]
    assert w.summary["status"] == "awaiting_approval"


def test_per_tool_policy(shell: InteractiveShell, store: Store) -> None:
    with pytest.raises(UsageError, match="unknown tool 'sql'"):
        run_agent(shell, "--approve sql")
    run_agent(shell, "--approve python")
    (run,) = store.runs()
    assert run.info["approve"] == ["python"]
    assert store.checkpoints(run.run_id)[-1].status == "awaiting_approval"


# -- fork and rewind -----------------------------------------------------------------------


def test_fork_from_an_earlier_checkpoint(
    shell: InteractiveShell,
    scripted: ScriptedServer,
    store: Store,
    timeline_widget: widget.TimelineWidget,
) -> None:
    run_agent(shell)
    w = timeline_widget
    w.refresh()
    original = w.run_id
    before = [(r.step, r.kind, r.summary) for r in store.checkpoints(original)]
    # Step 3 is a's result; the fork gets a new instruction there.
    scripted.set_script([*SCRIPT[:1], {"content": "OK.", **call("c = a * 10")}, SCRIPT[2]])
    w._on_message(w, {"type": "fork", "run": original, "step": 3, "instruction": "Set c."}, [])
    assert current().wait_all(30)
    assert w.notice["text"] == ""  # "Forking from checkpoint 3…" while it ran
    runs = store.runs()
    assert len(runs) == 2
    fork = runs[1]
    assert (fork.parent_run, fork.parent_step) == (original, 3)
    assert fork.prompt == runs[0].prompt and fork.info["instruction"] == "Set c."
    assert [(r.step, r.kind, r.summary) for r in store.checkpoints(original)] == before
    assert shell.user_ns["c"] == 10 and "b" not in shell.user_ns  # rewound to step 3 first
    first = store.checkpoints(fork.run_id)[0]
    assert (first.step, first.kind) == (4, "fork")
    sent = scripted.requests[-2]["body"]["messages"]  # the fork's first model call
    assert sent[-1] == {"role": "user", "content": "Set c."}
    # The widget follows the fork: its history is the parent's up to step 3, then its own.
    assert w.run_id == fork.run_id
    assert [(e["run"] == original, e["step"]) for e in w.entries["items"][:5]] == [
        (True, 0), (True, 1), (True, 2), (True, 3), (False, 4),
    ]  # fmt: skip
    assert [(r["label"], r["parent"], r["depth"]) for r in w.runs] == [
        ("#1", None, 0),
        ("#2", "#1", 1),
    ]
    # The fork is now the agent's latest run: re-running the cell restores it.
    shell.user_ns.pop("c")
    run_agent(shell)
    assert shell.user_ns["c"] == 10 and len(store.runs()) == 2


def test_fork_answers_a_pending_call_before_a_new_instruction(
    shell: InteractiveShell,
    scripted: ScriptedServer,
    store: Store,
    timeline_widget: widget.TimelineWidget,
) -> None:
    run_agent(shell, "--approve")
    w = timeline_widget
    scripted.set_script([SCRIPT[0], {"content": "Fine, no code."}])
    job = w.fork(w.run_id, 1, "Do not run code.")
    assert job.join(30) and job.error is None
    messages = scripted.requests[-1]["body"]["messages"]
    assert [m["role"] for m in messages[-3:]] == ["assistant", "tool", "user"]
    assert "Not run" in messages[-2]["content"]
    assert w.summary["status"] == "done"


def test_rewind_namespace(shell: InteractiveShell, timeline_widget: widget.TimelineWidget) -> None:
    run_agent(shell)
    w = timeline_widget
    w.refresh()
    shell.user_ns["a"] = "changed by hand"
    result = w.rewind(w.run_id, 3)
    assert result.restored == ["a"] and result.removed == ["b"]
    assert shell.user_ns["a"] == 1 and "b" not in shell.user_ns
    assert w.notice["text"].startswith("Namespace rewound to checkpoint 3; restored a; removed b.")
    w._on_message(w, {"type": "rewind", "run": w.run_id, "step": 7}, [])
    assert shell.user_ns["b"] == 2
    assert "gen:" in w.notice["text"] and "left as it is" in w.notice["text"]


# -- background execution, pause, and the one-execution guard -------------------------------


def test_background_run_pauses_and_resumes(
    shell: InteractiveShell,
    scripted: ScriptedServer,
    store: Store,
    timeline_widget: widget.TimelineWidget,
    capsys: pytest.CaptureFixture[str],
) -> None:
    w = timeline_widget
    slow = [{**entry, "delay": 0.3} for entry in SCRIPT]
    scripted.set_script(slow)
    run_agent(shell, "--background")
    assert "running in the background" in capsys.readouterr().out
    deadline = time.monotonic() + 10
    while not w.entries["items"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert w.summary["busy"] and w.summary["can_pause"]
    with pytest.raises(UsageError, match="already running"):
        run_agent(shell)
    with pytest.raises(runner.AgentBusy):
        w.fork(w.run_id, 0)
    w._on_message(w, {"type": "pause"}, [])
    assert current().wait_all(30)
    assert w.summary["status"] == "interrupted" and not w.summary["busy"]
    (run,) = store.runs()
    last = store.checkpoints(run.run_id)[-1]
    assert last.kind == "interrupted"
    # Re-running the cell continues the paused run.
    scripted.set_script(list(SCRIPT))
    run_agent(shell)
    assert store.checkpoints(run.run_id)[-1].status == "done" and shell.user_ns["b"] == 2


def test_background_executions_are_one_per_agent(tmp_path: Path) -> None:
    release = threading.Event()
    key = (str(tmp_path), "x")

    def work(events: Any, cancel: threading.Event) -> Any:
        release.wait(10)

    job = current().start_job(key, work)
    with pytest.raises(runner.AgentBusy):
        current().start_job(key, work)
    with pytest.raises(runner.AgentBusy), current().claimed(key):
        pass
    release.set()
    assert job.join(10)
    with current().claimed(key):  # free again
        pass


def test_timeline_command_reads_the_store(
    shell: InteractiveShell, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_agent(shell)
    shell.run_line_magic("agent", f"timeline {AGENT}")
    assert widget.TEXT_REPR.format(agent=AGENT) in capsys.readouterr().out
    (w,) = [v for v in widget.widgets_of((notebook(tmp_path), AGENT))]
    assert w.summary["status"] == "done" and len(w.entries["items"]) == 8
    w.close()
    shell.run_line_magic("agent", f"pause {AGENT}")
    assert "not running in the background" in capsys.readouterr().out


def test_timeline_model_follows_forks(store: Store, tmp_path: Path) -> None:
    """Entries of a fork: the parent's checkpoints up to the fork point, then its own."""
    identity = AgentIdentity(notebook(tmp_path), AGENT, None, "test")
    t = Timeline(store, identity.notebook, AGENT)
    t.load()
    assert t.summary()["text"] == "not run yet" and t.tree() == [] and t.pending() == {}
    parent = RunRow("p", identity.notebook, AGENT, None, "x", "h", "m", None, None, 1.0)
    child = RunRow("c", identity.notebook, AGENT, None, "x", "h", "m", "p", 1, 2.0)
    rows = [CheckpointRow("p", s, "model", "running", f"p{s}", 1.0 + s, 1, 1, 1) for s in range(3)]
    for row in rows:
        t.add(parent, row)
    change = t.add(child, CheckpointRow("c", 2, "fork", "running", "f", 9.0, 1, 0, 1))
    assert change.reloaded and t.selected == "c"
    assert t.segments(child) == [("p", 1), ("c", None)]
    assert [r["label"] for r in t.tree()] == ["#1", "#2"]
    assert json.dumps(t.tree())  # plain JSON for the frontend
    # Steps are model calls of the history: the fork inherits the two before its fork point.
    assert [r["steps"] for r in t.tree()] == [3, 2]


def test_a_missing_ancestor_ends_a_history_and_no_state_is_folded_from_it() -> None:
    """One rule wherever a fork's history is walked: a deleted ancestor's segment stays
    (nothing comes of it) and the walk ends there; folding a state from it is refused."""
    rows = {
        "b": RunRow("b", "nb", AGENT, None, "x", "h", "m", "a", 2, 2.0),  # "a" was deleted
        "c": RunRow("c", "nb", AGENT, None, "x", "h", "m", "b", 5, 3.0),
    }
    assert history.segments(rows["c"], rows.get) == [("a", 2), ("b", 5), ("c", None)]
    assert history.segments(rows["c"], rows.get, upto=7) == [("a", 2), ("b", 5), ("c", 7)]
    with pytest.raises(StoreError, match="Run c was forked from run a, which was deleted."):
        history.segments(rows["c"], rows.get, whole=True)
    looped = {"d": RunRow("d", "nb", AGENT, None, "x", "h", "m", "e", 1, 1.0),
              "e": RunRow("e", "nb", AGENT, None, "x", "h", "m", "d", 1, 1.0)}  # fmt: skip
    assert history.segments(looped["d"], looped.get) == [("e", 1), ("d", None)]


# -- what long runs add, and honest numbers ------------------------------------------------


def write_run(
    store: Store,
    nb: str,
    rows: list[tuple[str, str, dict]],
    *,
    model: str = "scripted",
    run_id: str = "r1",
    created: float | None = None,
    keep_open: bool = False,
) -> Any:
    """A run with one checkpoint per (kind, status, info), written through the store."""
    created = time.time() if created is None else created
    writer = store.writer(run_id)
    writer.put_run(RunRow(run_id, nb, AGENT, None, "task", "h", model, None, None, created))
    for i, (kind, status, info) in enumerate(rows):
        tokens = (info.get("usage") or {}).get("total_tokens", 0)
        cp = CheckpointRow(
            run_id, i, kind, status, f"{kind} {i}", created + i, 5.0, tokens, 10, info
        )
        writer.put_checkpoint(cp, b"")
    if keep_open:
        return writer
    writer.close()
    return None


def usage(prompt: int, completion: int) -> dict:
    return {"usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}  # fmt: skip


PLAN = [
    {"title": "Load the data", "status": "done"},
    {"title": "Clean it", "status": "in_progress"},
    {"title": "Plot it", "status": "pending"},
]


def test_compaction_budget_plan_and_ledger(store: Store, tmp_path: Path) -> None:
    write_run(
        store,
        notebook(tmp_path),
        [
            ("start", "running", {}),
            ("model", "running", usage(1000, 200)),
            ("tool_result", "running", {"plan": PLAN[:1]}),
            ("model", "running", usage(3000, 100)),
            ("tool_result", "running", {"plan": PLAN}),
            ("compaction", "running", {"strategy": "summary", "before_tokens": 41200,
                                       "after_tokens": 9800, "messages_dropped": 30}),
            ("model", "running", usage(500, 50)),
            ("budget", "budget", {"spent": 48210, "budget": 50000, "cost": None,
                                  "budget_cost": None}),
        ],
    )  # fmt: skip
    t = Timeline(store, notebook(tmp_path), AGENT)
    t.load()
    texts = {e["kind"]: e.get("text") for e in t.history}
    assert texts["compaction"] == "context compacted: 41,200 → 9,800 tokens (summary)"
    assert texts["budget"] == "paused at the budget: 48,210 of 50,000 tokens"
    assert texts["model"] is None  # other rows keep their summary
    s = t.summary()
    assert s["status"] == "budget"
    assert s["text"] == "paused at the budget: 48,210 of 50,000 tokens"
    assert (s["total"], s["steps"]) == (8, 3)
    assert (s["tokens"], s["prompt_tokens"], s["completion_tokens"]) == (4850, 4500, 350)
    assert s["plan"] == {"items": PLAN, "done": 1, "total": 3, "text": "1/3"}
    assert s["estimated"] is False

    # Live: a stuck checkpoint and a newer plan arrive one at a time.
    run = t.run("r1")
    t.add(run, CheckpointRow("r1", 8, "resume", "running", "", time.time(), 1, 0, 1, {}))
    newer = [{**i, "status": "done"} for i in PLAN]
    t.add(
        run,
        CheckpointRow("r1", 9, "tool_result", "running", "", time.time(), 1, 0, 1, {"plan": newer}),
    )
    stuck = {"reason": "the same python call failed 3 times"}
    change = t.add(run, CheckpointRow("r1", 10, "stuck", "stuck", "", time.time(), 1, 0, 1, stuck))
    assert change.entry is not None and change.entry["text"] == f"stuck: {stuck['reason']}"
    s = t.summary()
    assert s["text"] == "stuck: the same python call failed 3 times"
    assert s["plan"]["text"] == "3/3" and s["total"] == 11


def test_offline_tokens_are_marked_estimated(store: Store, tmp_path: Path) -> None:
    write_run(store, notebook(tmp_path), [("start", "running", {}),
              ("model", "done", usage(120, 30))], model="offline")  # fmt: skip
    t = Timeline(store, notebook(tmp_path), AGENT)
    t.load()
    assert t.summary()["estimated"] is True and t.summary()["text"] == "done after 1 step"
    # What %agent list shows, from the same metadata.
    assert listing.run_status(store, t.run("r1"), set()) == ("done", "done after 1 step", 1)


def test_a_quiet_live_run_is_stalled_in_the_widget(
    store: Store, tmp_path: Path, shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_AGENT_STALL_AFTER", "60")
    rows = [("start", "running", {}), ("model", "running", usage(1, 1))]
    writer = write_run(store, notebook(tmp_path), rows, created=time.time() - 1021, keep_open=True)
    try:
        w = make_widget(store, tmp_path, shell)
        assert w.summary["status"] == "stalled"
        assert w.summary["text"] == "stalled: no checkpoint for 17 min"
        assert w.runs[0]["status"] == "stalled"
        status, text, steps = listing.run_status(store, w.timeline.run("r1"), store.live_runs())
        assert (status, text, steps) == ("stalled", "stalled: no checkpoint for 17 min", 1)
        w.close()
    finally:
        writer.close(merge=False)


def test_output_counts_steps_across_a_resume(shell: InteractiveShell, capsys: Any) -> None:
    """The cell output says steps for model calls, and checkpoint for a record's number."""
    run_agent(shell, "--max-steps 1")
    out = capsys.readouterr().out
    assert "■ stopped at the step limit after 1 step\n" in out
    assert "  · checkpoint 3: saved a" in out
    run_agent(shell)
    out = capsys.readouterr().out
    assert "↻ resuming after step 1 (checkpoint 4)" in out
    assert "■ done after 3 steps" in out


def test_a_long_history_is_read_as_its_latest_window_with_totals_of_all_of_it(
    store: Store, tmp_path: Path
) -> None:
    """A fork of a long run: only the window's rows are read; the totals count every row."""
    nb = notebook(tmp_path)
    written: list[CheckpointRow] = []
    for run_id, parent, count in (("p", None, 250), ("c", ("p", 199), 60)):
        writer = store.writer(run_id)
        fork = parent or (None, None)
        writer.put_run(RunRow(run_id, nb, AGENT, None, "task", "h", "m", *fork, 1.0))
        first = 0 if parent is None else parent[1] + 1
        for step in range(first, first + count):
            kind = ("model", "tool_call", "tool_result")[step % 3]
            info: dict = usage(10, step) if kind == "model" else {}
            if (run_id, step) == ("p", 4):
                info = {"plan": PLAN}
            if (run_id, step) == ("p", 7):
                kind, info = "resume", {"saved_tokens": 123}
            cp = CheckpointRow(run_id, step, kind, "running", "s", 1.0 + step, 1.0, step, 3, info)
            writer.put_checkpoint(cp, b"")
            if run_id == "c" or step <= 199:
                written.append(cp)
        writer.close()
    t = Timeline(store, nb, AGENT)
    t.load("c")
    assert len(t.history) == WINDOW  # not 260 rows read
    assert [e["step"] for e in t.history] == [r.step for r in written[-WINDOW:]]
    s = t.summary()
    expected = vocab.ledger([{"kind": r.kind, "tokens": r.tokens, "info": r.info} for r in written])
    assert expected["saved_tokens"] == 123 and expected["prompt_tokens"] > 0
    assert {k: s[k] for k in expected} == expected
    assert (s["total"], s["size"]) == (len(written), 3 * len(written))
    assert s["plan"] == {"items": PLAN, "done": 1, "total": 3, "text": "1/3"}
    assert t.snapshot()["first"] == len(written) - WINDOW
    # A view asking for more gets the earlier entries, read then.
    more = t.snapshot(1000)
    assert more["first"] == 0 and [(e["run"], e["step"]) for e in more["items"]] == [
        (r.run_id, r.step) for r in written
    ]
    assert t.summary() == s


# -- compare with… -------------------------------------------------------------------------


def test_compare_with_another_checkpoint_shows_what_differs(
    shell: InteractiveShell, timeline_widget: widget.TimelineWidget, capsys: Any
) -> None:
    run_agent(shell)
    w = timeline_widget
    w.refresh()
    run = w.run_id
    # Checkpoint 3 holds a = 1; 6 adds b and the generator that could not be saved.
    shown = w.compare(run, 3, "6")
    assert w.comparison == shown  # what the detail pane shows
    assert (shown["run"], shown["step"], shown["other"]) == (run, 3, "6")
    assert "  + b: int 2 (" in shown["text"]
    changes = {v["name"]: v["change"] for v in shown["variables"]}
    assert changes == {"b": "added", "gen": "added"}
    assert shown["b"]["checkpoint"] == 6 and shown["a"]["checkpoint"] == 3
    json.dumps(shown)  # a trait the frontend receives

    # As the frontend asks: by NAME@N, and a malformed point is a notice, not a change.
    w._on_message(w, {"type": "compare", "run": run, "step": 0, "other": f"{AGENT}@7"}, [])
    assert w.comparison["other"] == f"{AGENT}@7"
    assert any(m["side"] == "b" and "b is 2." in m["text"] for m in w.comparison["messages"])
    w._on_message(w, {"type": "compare", "run": run, "step": 0, "other": f"{AGENT}@x"}, [])
    assert w.notice["level"] == "error" and "is not a point" in w.notice["text"]
    assert w.comparison["other"] == f"{AGENT}@7"

    # %agent diff: the same comparison, printed.
    capsys.readouterr()
    shell.run_line_magic("agent", f"diff {AGENT}@3 {AGENT}@6")
    assert "  + b: int 2 (" in capsys.readouterr().out
    with pytest.raises(UsageError, match="has no checkpoint 99"):
        shell.run_line_magic("agent", f"diff {AGENT}@3 {AGENT}@99")
