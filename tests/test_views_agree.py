"""Every list says the same of an agent: ``%agent list``, ``jupyter agent list``, the REST API
and the JupyterLab badge give one status sentence and one token figure for each run.

The runs are made by the real agent loop in a real kernel against the scripted model
(finished, interrupted, paused at the budget, stuck, waiting for approval, a delegated
child and its parent), on each store backend; the REST API is a real Jupyter Server
with the extension on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403  (jp_fetch, jp_serverapp, ...)
from traitlets.config import Config

from jupyter_agent.testing import ScriptedServer

from .conftest import BOTH_BACKENDS
from .kernels import Kernel
from .test_cli import cli
from .test_server_api import Api

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def jp_server_config(store_spec: str) -> Config:
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"jupyter_agent": True}},
            "AgentServer": {"store_path": store_spec, "busy_timeout": 1.0},
        }
    )


@pytest.fixture
def api(jp_serverapp: Any, jp_fetch: Callable, jp_asyncio_loop: Any) -> Api:
    return Api(jp_fetch, jp_asyncio_loop)


def tool(code: str) -> dict:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}]}


def delegate(agent: str, task: str) -> dict:
    return {"tool_calls": [{"name": "delegate", "arguments": {"agent": agent, "task": task}}]}


def model(body: dict) -> dict:
    """Each agent's replies, by the first word of its task and the step it is at."""
    task = next(m["content"] for m in body["messages"] if m.get("role") == "user")
    step = sum(1 for m in body["messages"] if m.get("role") == "assistant")
    word = task.split()[0]
    if word == "Finish:":
        return tool("a = 1") if step == 0 else {"content": "Finished."}
    if word == "Sleep:":  # interrupted during this call
        return tool("import time\ntime.sleep(60)") if step == 0 else {"content": "Woke."}
    if word == "Spend:":  # large outputs: over the budget in a few steps
        return (
            tool(f"v{step} = {step}\nprint('x' * 880, {step})") if step < 10 else {"content": "."}
        )
    if word == "Loop:":  # the same failing call, until the run is stuck
        return tool("undefined_name + 1") if step < 6 else {"content": "Gave up."}
    if word == "Ask:":  # a call that waits for approval
        return tool("b = 2") if step == 0 else {"content": "Asked."}
    if word == "Lead:":
        return delegate("helper", "Help: set c.") if step == 0 else {"content": "Led."}
    if word == "Help:":
        return tool("c = 3") if step == 0 else {"content": "Helped."}
    raise AssertionError(f"no reply for {task!r}")


#: Each agent's stored status, and how its sentence reads.
EXPECTED = {
    "finished": ("done", r"done after 2 steps"),
    "sleeper": ("interrupted", r"interrupted at step 1"),
    "pricey": (
        "budget",
        r"paused at the budget: [\d,]+ of 5,000 tokens; the next step was estimated at [\d,]+ tokens",
    ),
    "looper": ("stuck", r"stuck: the same tool call failed 3 times .*"),
    "asker": ("awaiting_approval", r"waiting for approval"),
    "lead": ("done", r"done after 2 steps"),
    "helper": ("done", r"done after 2 steps"),
}


def make_runs(kernel: Kernel) -> None:
    """One agent of each kind, in one kernel."""
    for line, task in [
        ("--name finished", "Finish: set a."),
        ("--name asker --approve", "Ask: set b."),
        ("--name pricey --budget 5k", "Spend: tokens."),
        ("--name looper", "Loop: fail."),
        ("--name lead", "Lead: delegate."),
    ]:
        result = kernel.run(f"%%agent --model scripted {line}\n{task}")
        assert result.status == "ok", result.text
    sleeper = kernel.start("%%agent --model scripted --name sleeper\nSleep: a while.")
    kernel.wait_for(sleeper, "time.sleep")
    kernel.interrupt()
    kernel.wait(sleeper, timeout=60)
    assert "interrupted" in sleeper.text, sleeper.text


def table(text: str) -> dict[str, dict[str, str]]:
    """The rows of a printed list, by agent, each a dict by column header."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("(as of")]
    header, rows = lines[0], lines[1:]
    names = re.split(r"\s{2,}", header.strip())
    starts = [header.index(n) for n in names]
    out = {}
    for line in rows:
        ends = [*starts[1:], len(line)]
        cells = {n: line[a:b].strip() for n, a, b in zip(names, starts, ends, strict=True)}
        out[cells["agent"]] = cells
    return out


def badge(agent: dict) -> str:
    """The text the lab extension's badge shows for an agent of the REST API."""
    source = (ROOT / "labextension" / "src" / "agents.ts").read_text()
    shown = "agent.plan ? `${agent.label} · plan ${agent.plan.text}` : agent.label"
    assert f"this.node.textContent = {shown};" in source, "the badge no longer shows the label"
    return f"{agent['label']} · plan {agent['plan']['text']}" if agent["plan"] else agent["label"]


@BOTH_BACKENDS
def test_every_list_says_the_same_of_each_run(
    api: Api,
    jp_root_dir: Path,
    kernel_factory: Callable[..., Kernel],
    scripted: ScriptedServer,
    agent_env: dict[str, str],
) -> None:
    nb = jp_root_dir / "views.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), nb)
    scripted.set_script(model)
    kernel = kernel_factory(JUPYTER_AGENT_NOTEBOOK=str(nb))
    make_runs(kernel)

    code, body = api.get("agents", notebook="views.ipynb")
    assert code == 200, body
    rest = {a["name"]: a for a in body["agents"]}
    assert set(rest) == set(EXPECTED)
    for name, (status, sentence) in EXPECTED.items():
        assert rest[name]["status"] == status, rest[name]
        assert re.fullmatch(sentence, rest[name]["label"]), rest[name]["label"]
    assert rest["helper"]["parent_agent"] == "lead"

    magic = table(kernel.run("%agent list").stdout)
    listed = {
        a["agent"]: a for a in json.loads(cli("list", "--json", env=agent_env).stdout)["agents"]
    }
    printed = table(cli("list", str(nb), env=agent_env).stdout)
    for name, agent in rest.items():
        tokens = f"{agent['tokens']:,}"
        assert agent["tokens"] > 0
        said = {
            "REST API": (agent["label"], agent["steps"], tokens),
            "badge": (badge(agent), agent["steps"], tokens),
            "%agent list": (magic[name]["status"], int(magic[name]["steps"]), magic[name]["tokens"]),
            "list --json": (listed[name]["label"], listed[name]["steps"], f"{listed[name]['tokens']:,}"),
            "list": (printed[name]["status"], int(printed[name]["steps"]), printed[name]["tokens"]),
        }  # fmt: skip
        assert len(set(said.values())) == 1, (name, said)
        assert listed[name]["status"] == agent["status"]


def test_the_views_server_and_command_line_load_no_kernel() -> None:
    """What lists and timelines show is read without a kernel, a widget library or IPython."""
    code = (
        "import sys\n"
        "import jupyter_agent.cli, jupyter_agent.server\n"
        "import jupyter_agent.views.listing, jupyter_agent.views.render, jupyter_agent.views.timeline\n"
        "loaded = {m.split('.')[0] if not m.startswith('jupyter_agent') else m for m in sys.modules}\n"
        "kernel = {m for m in loaded if m.startswith('jupyter_agent.kernel')}\n"
        "assert not kernel | ({'IPython', 'ipywidgets', 'anywidget'} & loaded), loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
