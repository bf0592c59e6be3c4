"""``jupyter agent replay``: a run again from its stored replies, in a fresh headless kernel.

Real kernels, the CLI as a subprocess, the scripted server counting requests:
an unchanged notebook replays the same with no model request; after its tool
cell is edited the replay names the checkpoint that differs; a removed tool
is a divergence too; bad input is one line with exit code 2. The recorded
run is never written to.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from jupyter_agent.testing import ScriptedServer

from .test_cli import SETUP, cli, notebook
from .test_durable_kernel import tool

TOOL_CELL = (
    "from jupyter_agent import tool\n\n"
    "@tool\n"
    "def load_prices(n: int) -> str:\n"
    '    """The first n prices."""\n'
    "    return str([i * {step} for i in range(n)])"
)
AGENT = "%%agent --model scripted --name prices\nLoad three prices and square x."
SCRIPT = [
    tool("x = 7\nprint(x * x)"),
    {"tool_calls": [{"name": "load_prices", "arguments": {"n": 3}}]},
    {"content": "Prices loaded; x squared is 49."},
]


def recorded(env: dict[str, str], name: str = "prices") -> list[dict]:
    shown = cli("show", name, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)["checkpoints"]


def set_cell(path: Path, index: int, source: str) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.cells[index].source = source
    nbformat.write(nb, path)


def one_line_usage(result, *words: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_replay_is_the_same_until_a_tool_cell_changes(
    agent_env, scripted: ScriptedServer, tmp_path
):
    nb_path = notebook(
        tmp_path / "prices.ipynb", [SETUP, TOOL_CELL.format(step=10), AGENT, "print(x)"]
    )
    scripted.set_script(SCRIPT)
    ran = cli("resume", str(nb_path), env=agent_env)
    assert ran.returncode == 0, ran.stderr
    before = recorded(agent_env)
    assert [c["kind"] for c in before].count("tool_result") == 2
    asked = len(scripted.requests)
    assert asked == 3
    written = nb_path.read_bytes()

    same = cli("replay", str(nb_path), env=agent_env)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "prices" in same.stdout and "the same" in same.stdout, same.stdout
    assert "2 tool calls compared" in same.stdout, same.stdout
    assert len(scripted.requests) == asked  # not one model request
    assert recorded(agent_env) == before  # nothing written to the run it replays
    assert nb_path.read_bytes() == written  # nor to the notebook

    # The tool cell edited: its call's output differs, at the checkpoint of that call.
    call = [c for c in before if c["kind"] == "tool_call"][1]["checkpoint"]
    set_cell(nb_path, 1, TOOL_CELL.format(step=11))
    changed = cli("replay", str(nb_path), "--agent", "prices", env=agent_env)
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert f"diverged at checkpoint {call}: the output differs" in changed.stdout, changed.stdout
    assert "recorded: [0, 10, 20]" in changed.stdout and "[0, 11, 22]" in changed.stdout
    assert len(scripted.requests) == asked

    # The tool gone: the recorded reply calls a tool that no longer exists.
    set_cell(nb_path, 1, "pass")
    gone = cli("replay", str(nb_path), "--all", "--json", env=agent_env)
    assert gone.returncode == 1, gone.stdout + gone.stderr
    (result,) = json.loads(gone.stdout)
    divergence = result["divergence"]
    assert (divergence["step"], divergence["what"]) == (call, "tool call"), divergence
    assert divergence["recorded"].startswith("load_prices"), divergence
    assert divergence["replayed"].startswith("no call made"), divergence
    assert recorded(agent_env) == before and len(scripted.requests) == asked


def test_replay_usage_errors_are_one_line(agent_env, tmp_path):
    one_line_usage(cli("replay", str(tmp_path / "nope.ipynb"), env=agent_env), "nope.ipynb")
    nb_path = notebook(tmp_path / "plain.ipynb", ["print(1)"])
    one_line_usage(cli("replay", str(nb_path), env=agent_env), "no agent")
    one_line_usage(
        cli("replay", str(nb_path), "--agent", "x", "--all", env=agent_env), "--agent", "--all"
    )
    bad = cli("replay", str(nb_path), "--timeout", "0", env=agent_env)
    assert bad.returncode == 2 and "--timeout" in bad.stderr
