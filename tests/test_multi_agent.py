"""Agents that wait for each other (``--after``) and delegate to each other, in real kernels.

The scripted model answers by the agent's task, so several agents share one
endpoint; its request log tells which step of which agent was asked for, and
how often. Tool side effects are counted in a file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

from jupyter_agent.testing import ScriptedServer

from .kernels import Kernel
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
    return [
        (task_of(r["body"]).split()[0], steps_of(r["body"]))
        for r in server.requests
        if r["scripted"]
    ]


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
