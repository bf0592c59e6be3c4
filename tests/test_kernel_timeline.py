"""The timeline widget in real kernels, driven the way a browser drives it.

Clicks are sent as ipywidgets custom comm messages to the widget's model id
(taken from the cell's display output), exactly what the frontend sends; what
a click started runs on a background thread, so each test then waits for the
kernel's background executions before looking at the store, the kernel's
namespace, and the scripted model's request log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.store.open import open_store
from jupyter_agent.testing import ScriptedServer

from .conftest import BOTH_BACKENDS
from .kernels import Execution, Kernel

pytestmark = pytest.mark.timeout(180)

CELL_ID = "cell-timeline-1"
AGENT = f"cell-{CELL_ID}"
CELL = "%%agent -m scripted --approve\nSet a, then b."
VIEW = "application/vnd.jupyter.widget-view+json"


def call(code: str) -> dict[str, Any]:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}]}


SCRIPT = [
    {"content": "Setting a.", **call("a = 1\nprint('a =', a)")},
    {"content": "Setting b.", **call("b = a + 1")},
    {"content": "Done: b = 2."},
]


def widget_id(run: Execution) -> str:
    ids = [out["data"][VIEW]["model_id"] for out in run.outputs if VIEW in out.get("data", {})]
    assert ids, f"no widget in the cell's output:\n{run.text}"
    return ids[-1]


def click(kernel: Kernel, model_id: str, **content: Any) -> None:
    """What the widget's frontend sends when a button is clicked."""
    data = {"method": "custom", "content": content}
    msg = kernel.kc.session.msg("comm_msg", {"comm_id": model_id, "data": data})
    kernel.kc.shell_channel.send(msg)


def settle(kernel: Kernel) -> Execution:
    """Wait until what the clicks started has finished."""
    result = kernel.run(
        "from jupyter_agent.kernel.runtime import current\nassert current().wait_all(90)",
        timeout=120,
    )
    assert result.status == "ok", result.text
    return result


def state(kernel: Kernel, model_id: str) -> dict:
    """The widget's synced state, as the frontend has it."""
    code = (
        "import json, ipywidgets.widgets.widget as _ww\n"
        f"_t = _ww._instances[{model_id!r}]\n"
        "print(json.dumps({k: getattr(_t, k) for k in "
        "('summary', 'pending', 'runs', 'run_id', 'entries', 'notice', 'detail', 'log')}))"
    )
    result = kernel.run(code)
    assert result.status == "ok", result.text
    return json.loads(result.stdout)


def value(kernel: Kernel, expr: str) -> Any:
    result = kernel.run(f"import json; print(json.dumps({expr}))")
    assert result.status == "ok", result.text
    return json.loads(result.stdout)


def start_waiting(kernel: Kernel, scripted: ScriptedServer) -> tuple[Execution, str]:
    scripted.set_script(list(SCRIPT))
    run = kernel.run(CELL, cell_id=CELL_ID)
    assert run.status == "ok", run.text
    assert "waiting for your approval" in run.text
    model_id = widget_id(run)
    return run, model_id


def test_cell_shows_timeline_and_approve_finishes(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, store_path: Path
) -> None:
    kernel = kernel_factory()
    run, model_id = start_waiting(kernel, scripted)
    view = next(o for o in run.outputs if VIEW in o.get("data", {}))
    assert view["data"]["text/plain"].startswith("Agent timeline")
    s = state(kernel, model_id)
    assert s["summary"]["status"] == "awaiting_approval"
    assert s["pending"]["code"].startswith("a = 1")
    assert [e["kind"] for e in s["entries"]["items"]] == ["start", "model", "approval"]

    click(kernel, model_id, type="approve", call_id=s["pending"]["call_id"])
    meanwhile = settle(kernel)
    assert "a =" not in meanwhile.text and not meanwhile.outputs  # no stray output in a cell
    s = state(kernel, model_id)
    assert s["pending"]["code"] == "b = a + 1"
    assert "a = 1" in s["log"]  # background output went to the widget, not to a cell
    click(kernel, model_id, type="approve", call_id=s["pending"]["call_id"])
    settle(kernel)
    s = state(kernel, model_id)
    assert s["summary"]["status"] == "done" and s["pending"] == {}
    assert value(kernel, "[a, b]") == [1, 2]
    (stored,) = Store(store_path).runs()
    assert Store(store_path).checkpoints(stored.run_id)[-1].status == "done"


def test_reject_note_reaches_the_model(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer
) -> None:
    kernel = kernel_factory()
    _, model_id = start_waiting(kernel, scripted)
    pending = state(kernel, model_id)["pending"]
    click(kernel, model_id, type="reject", call_id=pending["call_id"], note="use a = 5 instead")
    settle(kernel)
    tool = [m for m in scripted.requests[-1]["body"]["messages"] if m["role"] == "tool"]
    assert "rejected" in tool[0]["content"] and "use a = 5 instead" in tool[0]["content"]
    assert value(kernel, "'a' in globals()") is False


def test_edit_runs_the_edited_code(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer
) -> None:
    kernel = kernel_factory()
    _, model_id = start_waiting(kernel, scripted)
    pending = state(kernel, model_id)["pending"]
    click(kernel, model_id, type="approve", call_id=pending["call_id"], code="a = 100")
    settle(kernel)
    assert value(kernel, "a") == 100
    tool = [m for m in scripted.requests[-1]["body"]["messages"] if m["role"] == "tool"]
    assert tool[0]["content"] == "(no output)"


@BOTH_BACKENDS
def test_restart_while_waiting_comes_back_waiting(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, backend: str
) -> None:
    kernel = kernel_factory()
    start_waiting(kernel, scripted)
    kernel.kill()

    kernel = kernel_factory()
    again = kernel.run(CELL, cell_id=CELL_ID)
    assert again.status == "ok", again.text
    assert "waiting for your approval" in again.text
    model_id = widget_id(again)
    s = state(kernel, model_id)
    assert s["summary"]["status"] == "awaiting_approval"
    for _ in range(2):  # a, then b
        click(kernel, model_id, type="approve", call_id=s["pending"]["call_id"])
        settle(kernel)
        s = state(kernel, model_id)
    assert s["summary"]["status"] == "done"
    assert value(kernel, "[a, b]") == [1, 2]
    # The timeline command shows the same history straight from the store.
    shown = kernel.run(f"%agent timeline {AGENT}")
    other = state(kernel, widget_id(shown))
    assert other["entries"]["items"] == s["entries"]["items"]


@BOTH_BACKENDS
def test_fork_from_an_earlier_checkpoint(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, store_spec: str
) -> None:
    kernel = kernel_factory()
    scripted.set_script(list(SCRIPT))
    run = kernel.run(CELL.replace(" --approve", ""), cell_id=CELL_ID)
    assert "Done: b = 2." in run.text
    model_id = widget_id(run)
    s = state(kernel, model_id)
    original = s["run_id"]
    a_result = next(e for e in s["entries"]["items"] if e["kind"] == "tool_result")
    click(kernel, model_id, type="open", run=original, step=a_result["step"])
    s = state(kernel, model_id)
    assert s["detail"]["vars"][0]["name"] == "a" and s["detail"]["result"] == "a = 1\n"

    scripted.set_script([SCRIPT[0], {"content": "Now c.", **call("c = a * 3")}, SCRIPT[2]])
    click(kernel, model_id, type="fork", run=original, step=a_result["step"], instruction="Set c.")
    settle(kernel)
    s = state(kernel, model_id)
    assert s["run_id"] != original and s["summary"]["status"] == "done"
    assert [(r["label"], r["parent"]) for r in s["runs"]] == [("#1", None), ("#2", "#1")]
    assert value(kernel, "[a, c, 'b' in globals()]") == [1, 3, False]
    store = open_store(store_spec)
    fork = store.run(s["run_id"])
    assert fork is not None and (fork.parent_run, fork.parent_step) == (original, 3)
    assert [c.kind for c in store.checkpoints(original)][-1] == "model"  # left intact
    # The fork is now what the cell continues: re-running it restores the fork's answer.
    again = kernel.run(CELL.replace(" --approve", ""), cell_id=CELL_ID)
    assert "Done: b = 2." in again.text and "restored from the store" in again.text
    assert value(kernel, "c") == 3


def test_a_fork_runs_with_the_settings_in_effect_at_its_checkpoint(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, store_path: Path
) -> None:
    """Model and approvals changed by a re-run apply to forks from after the change only."""
    kernel = kernel_factory()
    scripted.set_script(list(SCRIPT))
    cell = "%%agent -m model-a {}\nSet a, then b."
    paused = kernel.run(cell.format("--max-steps 1"), cell_id=CELL_ID)
    assert "step limit" in paused.text, paused.text
    waiting = kernel.run(cell.replace("model-a", "model-b").format("--approve"), cell_id=CELL_ID)
    assert "waiting for your approval" in waiting.text, waiting.text
    model_id = widget_id(waiting)
    click(kernel, model_id, type="approve", call_id=state(kernel, model_id)["pending"]["call_id"])
    settle(kernel)
    assert [r["body"]["model"] for r in scripted.requests] == ["model-a", "model-b", "model-b"]
    store = Store(store_path)
    (original,) = store.runs()
    history = store.checkpoints(original.run_id)
    changed = next(c.step for c in history if c.kind == "resume")
    before, after = (c.step for c in history if c.kind == "tool_result")
    assert before < changed < after

    forked: dict[int, dict] = {}
    for step in (after, before):
        scripted.reset_log()
        # Whatever turn the fork starts at, it asks to set c, then ends.
        scripted.set_script([{"content": "Now c.", **call("c = 3")}] * 3 + [SCRIPT[2]] * 2)
        click(kernel, model_id, type="fork", run=original.run_id, step=step, instruction="Set c.")
        settle(kernel)
        forked[step] = {
            "models": {r["body"]["model"] for r in scripted.requests},
            "status": state(kernel, model_id)["summary"]["status"],
            "c": value(kernel, "globals().get('c')"),
        }
    assert forked[after] == {"models": {"model-b"}, "status": "awaiting_approval", "c": None}
    assert forked[before] == {"models": {"model-a"}, "status": "done", "c": 3}


@BOTH_BACKENDS
def test_rewind_namespace(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, backend: str
) -> None:
    kernel = kernel_factory()
    scripted.set_script(list(SCRIPT))
    run = kernel.run(CELL.replace(" --approve", ""), cell_id=CELL_ID)
    model_id = widget_id(run)
    kernel.run("a = 'edited by hand'")
    s = state(kernel, model_id)
    first_result = next(e for e in s["entries"]["items"] if e["kind"] == "tool_result")
    click(kernel, model_id, type="rewind", run=s["run_id"], step=first_result["step"])
    assert value(kernel, "[a, 'b' in globals()]") == [1, False]
    notice = state(kernel, model_id)["notice"]
    assert (
        notice["text"]
        == f"Namespace rewound to checkpoint {first_result['step']}; restored a; removed b."
    )


def test_background_cell_returns_at_once_and_pauses(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer
) -> None:
    kernel = kernel_factory()
    scripted.set_script([{**entry, "delay": 0.5} for entry in SCRIPT])
    run = kernel.run("%%agent -m scripted --background\nSet a, then b.", cell_id=CELL_ID)
    assert run.status == "ok" and "running in the background" in run.text
    model_id = widget_id(run)
    assert state(kernel, model_id)["summary"]["busy"]  # the kernel is free meanwhile
    click(kernel, model_id, type="pause")
    settle(kernel)
    s = state(kernel, model_id)
    assert s["summary"]["status"] == "interrupted" and not s["summary"]["busy"]
    assert s["entries"]["items"][-1]["kind"] == "interrupted"


def test_timeline_appears_once_the_run_has_begun(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer
) -> None:
    kernel = kernel_factory()
    # No model configured: the cell fails before its run begins, and shows no empty timeline.
    failed = kernel.run("%%agent\nSet a, then b.", cell_id="no-model")
    assert "UsageError: No model chosen" in failed.text, failed.text
    assert not [o for o in failed.outputs if VIEW in o.get("data", {})], failed.outputs

    scripted.set_script(list(SCRIPT))
    cell = "%%agent -m scripted\nSet a, then b."
    run = kernel.run(cell, cell_id=CELL_ID)
    assert run.status == "ok", run.text
    # Above the run's output: the timeline's place, which its widget takes once built.
    first = run.outputs[0]
    assert "application/vnd.jupyter-agent.timeline+json" in first["data"], run.outputs
    views = [o for o in run.outputs if VIEW in o.get("data", {})]
    assert views and {o["transient"]["display_id"] for o in views} == {
        first["transient"]["display_id"]
    }, run.outputs
    assert "■ done after 3 steps" in run.text
    # Re-running restores the finished run without a checkpoint; its timeline still shows.
    again = kernel.run(cell, cell_id=CELL_ID)
    assert again.status == "ok" and "restored from the store" in again.text, again.text
    s = state(kernel, widget_id(again))
    assert (s["summary"]["text"], s["summary"]["steps"]) == ("done after 3 steps", 3)


COUNT_OPENS = """
import duckdb as _d, jupyter_agent.store.duckdb.files as _s, jupyter_agent.model.chat as _m
_opened, _at_first_request = [], []
_connect, _complete = _d.connect, _m.ChatCompletionsClient.complete
def _counting_connect(*a, **k):
    _opened.append(1)
    return _connect(*a, **k)
def _noting_complete(self, *a, **k):
    if not _at_first_request:
        _at_first_request.append(len(_opened))
    return _complete(self, *a, **k)
_s.duckdb.connect = _counting_connect
_m.ChatCompletionsClient.complete = _noting_complete
"""


@pytest.mark.parametrize("timeline", [True, False], ids=["timeline", "no-timeline"])
def test_a_resume_opens_the_store_once_before_the_model(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, timeline: bool
) -> None:
    """The timeline's first load (if shown) and the run's reads share one open of the store."""
    scripted.set_script([call("x = 1"), call("y = 2"), {"content": "Done."}])
    kernel = kernel_factory()
    if not timeline:
        assert kernel.run("%config AgentMagics.timeline = False").status == "ok"
    first = kernel.run("%%agent -m scripted --max-steps 1\nSet x, then y.", cell_id=CELL_ID)
    assert "step limit" in first.text, first.text
    assert kernel.run(COUNT_OPENS).status == "ok"
    again = kernel.run("%%agent -m scripted --max-steps 5\nSet x, then y.", cell_id=CELL_ID)
    assert again.status == "ok" and (VIEW in json.dumps(again.outputs)) == timeline, again.text
    assert "resuming after step 1" in again.text  # the step count came without a read
    opens = value(kernel, "_at_first_request")
    assert opens == [1], opens


COUNT_LOADS = """
from jupyter_agent.views.timeline import Timeline as _T
_loads, _load = [], _T.load
def _counting_load(self, *a, **k):
    _loads.append(1)
    return _load(self, *a, **k)
_T.load = _counting_load
"""


def test_a_cell_reads_its_agents_timeline_once_before_it_runs(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer
) -> None:
    """The steps so far and the widget built after the first request come from one read
    of the agent's timeline; it is read again only once the execution wrote something."""
    scripted.set_script([call("x = 1"), call("y = 2"), {"content": "Done."}])
    kernel = kernel_factory()
    cell = "%%agent -m scripted --max-steps {}\nSet x, then y."
    assert "step limit" in kernel.run(cell.format(1), cell_id=CELL_ID).text
    assert kernel.run(COUNT_LOADS).status == "ok"
    loads = "(len(_loads), _loads.clear())[0]"

    resumed = kernel.run(cell.format(5), cell_id=CELL_ID)
    assert "resuming after step 1" in resumed.text and "■ done after 3 steps" in resumed.text
    assert VIEW in json.dumps(resumed.outputs), resumed.outputs
    assert value(kernel, loads) == 2  # before the run, and once it ended

    restored = kernel.run(cell.format(5), cell_id=CELL_ID)
    assert "restored from the store" in restored.text, restored.text
    assert value(kernel, loads) == 1  # a restore writes nothing: its widget shows that read
    s = state(kernel, widget_id(restored))
    assert (s["summary"]["text"], s["summary"]["steps"]) == ("done after 3 steps", 3)
    assert s["entries"]["first"] + len(s["entries"]["items"]) == s["summary"]["total"] > 0
