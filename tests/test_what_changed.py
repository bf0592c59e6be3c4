"""A run resumed or restored after what it depends on changed says so; ``--strict`` refuses.

Real kernel, scripted server: the agent stops at its step limit, its ``@tool``
cell is edited, and the continuation names the tool and the checkpoint of the
run's last execution, in the cell and in its ``resume`` checkpoint; with
``--strict`` nothing is written and the model is not asked.
"""

from __future__ import annotations

import json

import nbformat

from jupyter_agent.testing import ScriptedServer

from .test_cli import SETUP, cli, notebook
from .test_durable_kernel import tool
from .test_replay import TOOL_CELL

CELL = "%%agent --model scripted --name prices --max-steps 1{}\nLoad two prices."


def checkpoints(env: dict[str, str]) -> list[dict]:
    shown = cli("show", "prices", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)["checkpoints"]


def test_resume_after_a_tool_edit_says_what_changed_and_strict_refuses(
    kernel_factory, scripted: ScriptedServer, agent_env
):
    scripted.set_script(
        [
            tool("x = 1"),
            {"tool_calls": [{"name": "load_prices", "arguments": {"n": 2}}]},
            {"content": "Loaded."},
        ]
    )
    k = kernel_factory()
    assert k.run(TOOL_CELL.format(step=10)).status == "ok"
    first = k.run(CELL.format(""))
    assert first.status == "ok", first.text
    assert "changed since" not in first.text
    again = k.run(CELL.format(""))  # nothing changed: nothing said
    assert again.status == "ok" and "changed since" not in again.text, again.text
    before = checkpoints(agent_env)
    start = before[0]
    assert start["kind"] == "start" and "load_prices" in start["info"]["fingerprint"]["tools"]
    # An unfinished run replays up to its last checkpoint, writing nothing to it.
    asked = len(scripted.requests)
    replayed = k.run("%agent replay prices")
    assert "the same (2 tool calls compared" in replayed.text, replayed.text
    assert checkpoints(agent_env) == before and len(scripted.requests) == asked
    # The second execution's first checkpoint: what a change is counted from.
    last_execution = [c for c in before if c["kind"] == "resume"][-1]["checkpoint"]

    assert k.run(TOOL_CELL.format(step=11)).status == "ok"  # the tool cell edited
    asked = len(scripted.requests)
    refused = k.run(CELL.format(" --strict"))
    assert "UsageError" in refused.text, refused.text
    said = f"tool `load_prices` changed since checkpoint {last_execution}"
    assert said in refused.text and "strict" in refused.text, refused.text
    assert checkpoints(agent_env) == before and len(scripted.requests) == asked

    resumed = k.run(CELL.format(""))
    assert resumed.status == "ok", resumed.text
    assert said in resumed.text, resumed.text
    resume = [c for c in checkpoints(agent_env) if c["kind"] == "resume"][-1]
    assert resume["info"]["changed"] == ["tool `load_prices` changed"], resume["info"]
    assert said in resume["summary"], resume["summary"]

    # Finished now; the tool edited again: restoring the run says so too.
    assert k.run(TOOL_CELL.format(step=12)).status == "ok"
    since = resume["checkpoint"]
    restored = k.run(CELL.format(""))
    assert "restored" in restored.text, restored.text
    assert f"tool `load_prices` changed since checkpoint {since}" in restored.text, restored.text


def test_what_changed_reads_as_one_line():
    from jupyter_agent.loop.fingerprint import change_line, changes

    old = {
        "tools": {"load_prices": "a", "old": "b"},
        "mcp": {},
        "system": "s",
        "task": "t",
        "model": "gpt-4o",
        "api": "chat.completions",
        "endpoint": "api.openai.com",
        "jupyter_agent": "0.1.0",
        "python": "3.11.7",
        "packages": {"pandas": "2.1.0", "numpy": "2.0.0"},
    }
    new = {
        **old,
        "tools": {"load_prices": "c", "new": "d"},
        "model": "gpt-4.1",
        "packages": {"pandas": "2.2.0"},
    }
    assert changes(old, old) == [] and change_line([], 3) == ""
    assert change_line(changes(old, new), 7) == (
        "tool `load_prices` changed since checkpoint 7; tool `new` added; tool `old` removed; "
        "model gpt-4o → gpt-4.1; pandas 2.1.0 → 2.2.0"
    )


def test_cli_resume_strict_exits_1_saying_what_changed_and_runs_nothing(
    scripted: ScriptedServer, agent_env, tmp_path
):
    scripted.set_script([tool("x = 1"), {"content": "Loaded."}])
    cells = [SETUP, TOOL_CELL.format(step=10), CELL.format("")]
    nb_path = notebook(tmp_path / "prices.ipynb", cells)
    first = cli("resume", str(nb_path), env=agent_env)
    assert first.returncode == 0, first.stderr
    before, asked = checkpoints(agent_env), len(scripted.requests)
    assert before[-1]["kind"] == "limit", before

    nb = nbformat.read(nb_path, as_version=4)
    nb.cells[1].source = TOOL_CELL.format(step=11)  # the tool cell edited
    nbformat.write(nb, nb_path)
    refused = cli("resume", str(nb_path), "--strict", env=agent_env)
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "tool `load_prices` changed since checkpoint" in lines[0], lines
    assert "strict" in lines[0]
    assert checkpoints(agent_env) == before and len(scripted.requests) == asked


def test_a_fork_says_what_changed(kernel_factory, scripted: ScriptedServer, agent_env):
    scripted.set_script([tool("x = 1"), {"content": "Set."}, {"content": "Set."}])
    k = kernel_factory()
    assert k.run(TOOL_CELL.format(step=10)).status == "ok"
    assert k.run(CELL.format("")).status == "ok"
    result = [c for c in checkpoints(agent_env) if c["kind"] == "tool_result"][-1]["checkpoint"]

    assert k.run(TOOL_CELL.format(step=11)).status == "ok"  # the tool cell edited
    forked = k.run(f"%agent fork prices@{result}")
    said = "tool `load_prices` changed since checkpoint 0"
    assert forked.status == "ok" and said in forked.text, forked.text
    shown = cli("show", "prices", "--json", env=agent_env)
    fork = json.loads(shown.stdout)["checkpoints"][0]
    assert fork["kind"] == "fork" and said in fork["summary"], fork
    assert fork["info"]["changed"] == ["tool `load_prices` changed"], fork["info"]
