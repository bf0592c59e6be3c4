"""The JupyterLab extension end to end: the morning after a kernel died mid-agent.

A notebook has two agents. In a real kernel, the one named ``summary``
finishes and the other is killed with its kernel while waiting for the model.
The notebook is then opened fresh: before anything runs, the cells show "done"
and "interrupted at step 2", and "Resume interrupted agents" loads the
extension in the new kernel, resumes the interrupted agent only and turns its
badge to "done".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Locator, Page, expect

from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer
from jupyter_agent.vocab import cell_agent_name

from ..kernels import Kernel
from .lab import LabServer, open_notebook, write_notebook

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

LOAD_CELL = "%load_ext jupyter_agent"
AGENT_CELL = "%%agent --model scripted\nSet a, then b = a + 1, and report both."
#: nbformat allows 64 characters: too long for ``cell-<id>``, so the kernel names the agent
#: by the id's digest, and only the server, not the lab, may say which agent the cell is.
AGENT_CELL_ID = "morning-agent-" + "a" * 50
AGENT = cell_agent_name(AGENT_CELL_ID)
SUMMARY_CELL = "%%agent -n summary --model scripted\nSummarize yesterday in one line."
NOTEBOOK = "morning.ipynb"


def tool(code: str) -> dict:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}]}


def script(answer_delay: float) -> Callable[[dict], dict]:
    """Replies by turn; the summary agent answers at once."""
    turns = [tool("a = 1"), tool("b = a + 1"), {"content": "a = 1, b = 2.", "delay": answer_delay}]

    def reply(body: dict) -> dict:
        messages = body["messages"]
        if "Summarize" in str(messages[1]["content"]):
            return {"content": "Yesterday went fine."}
        return turns[sum(1 for m in messages if m.get("role") == "assistant")]

    return reply


def write_report_notebook(path: Path) -> None:
    write_notebook(
        path,
        [
            nbformat.v4.new_markdown_cell("# Morning report", id="title"),
            nbformat.v4.new_code_cell(LOAD_CELL, id="load"),
            nbformat.v4.new_code_cell(AGENT_CELL, id=AGENT_CELL_ID),
            nbformat.v4.new_code_cell(SUMMARY_CELL, id="summary-agent"),
            nbformat.v4.new_code_cell("print(a, b)", id="after"),
        ],
    )


def kill_mid_run(env: dict[str, str], nb_path: Path, scripted: ScriptedServer) -> None:
    """Run the agent outside JupyterLab and kill its kernel while it waits for turn 2."""
    kernel = Kernel({**env, "JUPYTER_AGENT_NOTEBOOK": str(nb_path)}, cwd=nb_path.parent)
    try:
        assert kernel.run(LOAD_CELL).status == "ok"
        done = kernel.run(SUMMARY_CELL, cell_id="summary-agent")
        assert done.status == "ok" and "Yesterday went fine." in done.text, done.text
        kernel.start(AGENT_CELL, cell_id=AGENT_CELL_ID)
        deadline = time.monotonic() + 60
        while 2 not in scripted.turns_requested():
            assert time.monotonic() < deadline, "the agent never reached its third model call"
            kernel.pump(0.1)
    finally:
        kernel.kill()


def badge(page: Page, agent: str = AGENT) -> Locator:
    return page.locator(
        f'.jp-NotebookPanel:not(.lm-mod-hidden) .jp-AgentBadge[data-agent-name="{agent}"]'
    )


@pytest.fixture
def morning(lab_server_factory, tmp_path: Path) -> Iterator[tuple[LabServer, ScriptedServer]]:
    """A Lab server whose root holds a notebook whose agent's kernel died after step 2."""
    with ScriptedServer(script(answer_delay=300)) as scripted:
        env = {
            "JUPYTER_AGENT_STORE": str(tmp_path / "store" / "agents.duckdb"),
            "OPENAI_BASE_URL": scripted.url,
            "OPENAI_API_KEY": "sk-test",
        }
        server: LabServer = lab_server_factory(env=env)
        nb_path = server.root_dir / NOTEBOOK
        write_report_notebook(nb_path)
        kill_mid_run(env, nb_path, scripted)
        scripted.set_script(script(answer_delay=0))  # the model answers promptly today
        yield server, scripted
    # The resumed run continued where the killed one stopped: turns 0 and 1 were not redone.
    assert scripted.turns_requested()[-1] == 2
    assert scripted.turns_requested().count(0) == 2  # the morning agent's and the summary's


def test_interrupted_agent_is_visible_and_resumes(
    morning: tuple[LabServer, ScriptedServer], page: Page, artifacts_dir: Path
) -> None:
    server, _ = morning
    open_notebook(page, server, NOTEBOOK)
    # Two steps done (each a model reply and its tool call) when the kernel died.
    expect(badge(page)).to_have_text("interrupted at step 2")
    expect(badge(page, "summary")).to_have_text("done after 1 step")
    expect(page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-AgentBadge")).to_have_count(2)

    page.evaluate("() => window.jupyterapp.commands.execute('jupyter-agent:show-panel')")
    item = page.locator(f'.jp-AgentsPanel-item[data-agent-name="{AGENT}"]')
    expect(item).to_contain_text("interrupted at step 2")
    expect(page.locator('.jp-AgentsPanel-item[data-agent-name="summary"]')).to_contain_text("done")
    item.click()
    expect(page.locator(".jp-Cell.jp-mod-active")).to_contain_text("%%agent")
    page.screenshot(path=artifacts_dir / "lab-extension.png")

    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-AgentResumeButton").click()
    expect(badge(page)).to_have_text("done after 3 steps", timeout=60_000)
    expect(item).to_contain_text("done")
    outputs = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output")
    expect(outputs.get_by_text("a = 1, b = 2.").first).to_be_visible()
    page.screenshot(path=artifacts_dir / "resumed.png")

    # Moving the notebook keeps its agents: the server records the move in the store.
    (server.root_dir / "archive").mkdir()
    page.evaluate(
        "() => window.jupyterapp.serviceManager.contents"
        f".rename('{NOTEBOOK}', 'archive/{NOTEBOOK}')"
    )
    expect(page.locator(".jp-AgentsPanel-notebook")).to_have_text(f"archive/{NOTEBOOK}")
    expect(item).to_contain_text("done")
    expect(badge(page)).to_have_text("done after 3 steps")
    expect(badge(page, "summary")).to_have_text("done after 1 step")
    moved = str(server.root_dir / "archive" / NOTEBOOK)
    store = Store(server.env["JUPYTER_AGENT_STORE"])
    assert {r.agent for r in store.runs(notebook=moved)} == {AGENT, "summary"}
    assert store.runs(notebook=str(server.root_dir / NOTEBOOK)) == []


def test_notebook7_shows_badges_and_resumes(
    morning: tuple[LabServer, ScriptedServer], page: Page, artifacts_dir: Path
) -> None:
    pytest.importorskip("notebook", minversion="7")
    server, _ = morning
    page.goto(f"{server.url}/notebooks/{NOTEBOOK}?token={server.token}")
    expect(badge(page)).to_have_text("interrupted at step 2", timeout=45_000)
    page.locator(".jp-AgentResumeButton").click()
    expect(badge(page)).to_have_text("done after 3 steps", timeout=60_000)
    page.screenshot(path=artifacts_dir / "notebook7.png")
