"""Edit and fork: a fork from a checkpoint with an edited reply, an edited tool output or
another model, in real kernels against the scripted endpoint; marked "what if" everywhere.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer

from .conftest import eventually
from .kernels import Kernel
from .test_cli import cli
from .test_kernel_timeline import SCRIPT, call, click, settle, state, widget_id

pytestmark = pytest.mark.timeout(180)

AGENT = "sums"
CELL = f"%%agent -m scripted --name {AGENT}\nSet a, then b."


def first_run(kernel_factory: Callable[..., Kernel], scripted: ScriptedServer) -> Kernel:
    kernel = kernel_factory()
    scripted.set_script(list(SCRIPT))
    done = kernel.run(CELL)
    assert "Done: b = 2." in done.text, done.text
    scripted.reset_log()
    return kernel


def steps_of(store_path: Path, kind: str) -> list[int]:
    store = Store(store_path)
    (run,) = store.runs()
    return [c.step for c in store.checkpoints(run.run_id) if c.kind == kind]


def fork_run(store_path: Path) -> Any:
    forks = [r for r in Store(store_path).runs() if r.parent_run]
    assert len(forks) == 1, forks
    return forks[0]


def codes(messages: list[dict]) -> list[str]:
    """The python code of every tool call the model was shown."""
    return [
        json.loads(c["function"]["arguments"])["code"]
        for m in messages
        for c in m.get("tool_calls") or []
    ]


def test_an_edited_reply_runs_the_edited_call(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, store_path: Path
) -> None:
    kernel = first_run(kernel_factory, scripted)
    second = steps_of(store_path, "model")[1]  # the reply that set b = a + 1
    reply = json.dumps(
        {"content": "Setting b my way.", "tool_calls": [call("b = a + 100")["tool_calls"][0]]}
    )
    scripted.set_script([{"content": "Done: b = 101."}] * 4)
    forked = kernel.run(f"%agent fork {AGENT}@{second} --reply '{reply}'")
    assert forked.status == "ok" and "Done: b = 101." in forked.text, forked.text
    assert kernel.run("print(a, b)").text.strip() == "1 101"
    # One model request (after the edited call ran): it saw the edited call, not the original.
    (request,) = scripted.requests
    sent = codes(request["body"]["messages"])
    assert sent == ["a = 1\nprint('a =', a)", "b = a + 100"]
    fork = fork_run(store_path)
    assert fork.parent_step == second - 1
    assert fork.info["what_if"] == {"edited": "reply", "from": [fork.parent_run, second]}
    store = Store(store_path)
    first = store.checkpoints(fork.run_id)[0]
    assert first.kind == "fork" and "edited reply" in first.summary
    # The branch replays the same: the edited reply stands in for the model's.
    replayed = kernel.run(f"%agent replay {AGENT}")
    assert "the same (2 tool calls compared" in replayed.text, replayed.text
    assert len(scripted.requests) == 1


def test_an_edited_tool_output_is_what_the_model_reads_next(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, store_path: Path
) -> None:
    kernel = first_run(kernel_factory, scripted)
    first_result = steps_of(store_path, "tool_result")[0]
    scripted.set_script([{"content": "a is 41, so I stop."}] * 4)
    forked = kernel.run(f"%agent fork {AGENT}@{first_result} --output 'a = 41'")
    assert forked.status == "ok" and "a is 41, so I stop." in forked.text, forked.text
    (request,) = scripted.requests
    messages = request["body"]["messages"]
    assert messages[-1]["role"] == "tool" and messages[-1]["content"] == "a = 41"
    assert codes(messages) == ["a = 1\nprint('a =', a)"]
    # The call did run: the namespace is as after it, and b was never set on this branch.
    assert kernel.run("print(a, 'b' in globals())").text.strip() == "1 False"
    fork = fork_run(store_path)
    assert fork.info["what_if"] == {"edited": "output", "from": [fork.parent_run, first_result]}
    # Marked "what if" wherever the agent is listed or shown.
    tag = f"what if: edited tool output at checkpoint {first_result}"
    assert f"{AGENT} ({tag})" in kernel.run("%agent list").text
    assert tag in kernel.run(f"%agent show {AGENT}").text.splitlines()[0]
    env = {"JUPYTER_AGENT_STORE": str(store_path)}
    assert f"{AGENT} ({tag})" in cli("list", env=env).stdout
    (listed,) = json.loads(cli("list", "--json", env=env).stdout)["agents"]
    assert listed["what_if"]["text"] == tag
    store = Store(store_path)
    assert [c.kind for c in store.checkpoints(fork.run_id)] == ["fork", "model"]


def test_another_model_shows_in_the_forks_requests(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, store_path: Path
) -> None:
    kernel = first_run(kernel_factory, scripted)
    first_result = steps_of(store_path, "tool_result")[0]
    scripted.set_script(list(SCRIPT))  # by turn: the fork asks for the second and third
    forked = kernel.run(f"%agent fork {AGENT}@{first_result} --model other-model")
    assert forked.status == "ok", forked.text
    assert [r["body"]["model"] for r in scripted.requests] == ["other-model"] * 2
    fork = fork_run(store_path)
    assert fork.model == "other-model" and fork.info["what_if"]["edited"] == "model"


def test_bad_edits_are_refused_in_one_line(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, store_path: Path
) -> None:
    kernel = first_run(kernel_factory, scripted)
    model, result = steps_of(store_path, "model")[0], steps_of(store_path, "tool_result")[0]
    cases = {
        f"{AGENT}@{result} --reply 'hello'": "an edited reply needs a model one",
        f"{AGENT}@{model} --output 'x'": "an edited tool output needs a tool_result one",
        f"{AGENT}@{model} --reply '{{\"content\": 1'": "not valid JSON",
        f"{AGENT}@999 --model m": "has no checkpoint 999",
        f"{AGENT} --model m": "NAME@CHECKPOINT",
    }
    for args, expected in cases.items():
        refused = kernel.run(f"%agent fork {args}")
        lines = refused.text.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("UsageError: "), (args, refused.text)
        assert expected in lines[0], (args, refused.text)
    assert scripted.requests == [] and len(Store(store_path).runs()) == 1  # nothing was made


def test_a_fork_killed_in_its_edited_call_resumes_as_the_fork(
    kernel_factory: Callable[..., Kernel],
    scripted: ScriptedServer,
    store_path: Path,
    tmp_path: Path,
) -> None:
    kernel = first_run(kernel_factory, scripted)
    second = steps_of(store_path, "model")[1]
    slow = (
        "import pathlib, time\nif not pathlib.Path('ran').exists():\n"
        "    pathlib.Path('ran').touch()\n    time.sleep(60)\nb = 100"
    )
    reply = json.dumps({"content": "", "tool_calls": call(slow)["tool_calls"]})
    scripted.set_script([{"content": "Done: b = 100."}] * 4)  # whatever the turn
    kernel.start(f"%agent fork {AGENT}@{second} --reply {shlex.quote(reply)}")
    assert eventually(lambda: (tmp_path / "ran").exists(), timeout=60)
    kernel.kill()

    kernel = kernel_factory()
    resumed = kernel.run(f"%agent resume {AGENT}")
    assert "Done: b = 100." in resumed.text, resumed.text
    assert kernel.run("print(b)").text.strip() == "100"
    fork = fork_run(store_path)
    kinds = [c.kind for c in Store(store_path).checkpoints(fork.run_id)]
    assert kinds[0] == "fork" and "resume" in kinds and kinds[-1] == "model"
    (request,) = scripted.requests
    assert codes(request["body"]["messages"])[-1] == slow


def test_the_timelines_fork_dialog_offers_the_edit(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, store_path: Path
) -> None:
    kernel = kernel_factory()
    scripted.set_script(list(SCRIPT))
    cell = kernel.run(CELL)
    model_id = widget_id(cell)
    s = state(kernel, model_id)
    original = s["run_id"]
    model, result = steps_of(store_path, "model")[1], steps_of(store_path, "tool_result")[0]
    # The reply, prefilled as JSON that --reply takes; the output as its text.
    click(kernel, model_id, type="open", run=original, step=model)
    reply = json.loads(state(kernel, model_id)["detail"]["editable"]["reply"])
    assert reply == {"content": "Setting b.", **call("b = a + 1")}
    click(kernel, model_id, type="open", run=original, step=result)
    assert state(kernel, model_id)["detail"]["editable"] == {"output": "a = 1\n"}
    # Bad input is said in the widget, nothing started.
    click(kernel, model_id, type="fork", run=original, step=result, reply="hi")
    notice = state(kernel, model_id)["notice"]
    assert notice["level"] == "error" and "needs a model one" in notice["text"]

    scripted.reset_log()
    scripted.set_script([{"content": "Fine."}] * 4)
    click(kernel, model_id, type="fork", run=original, step=result, output="a = 41", model=" ")
    settle(kernel)
    (request,) = scripted.requests
    assert request["body"]["messages"][-1]["content"] == "a = 41"
    s = state(kernel, model_id)
    fork = next(r for r in s["runs"] if r["id"] == s["run_id"])
    assert fork["what_if"] == f"what if: edited tool output at checkpoint {result}"
