"""The lab panel answers an approval with no kernel running the agent.

An agent ran headless and paused before a tool call; its kernel is gone. The
notebook is opened fresh: the panel offers Approve and Reject for that agent,
and Approve stores the answer on the server, the badge then saying the call
was approved and runs when the agent next runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Page, expect

from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer

from ..kernels import Kernel
from .lab import LabServer, open_notebook, write_notebook

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

LOAD_CELL = "%load_ext jupyter_agent"
AGENT_CELL = "%%agent --model scripted --approve --name gated\nWrite the line."
NOTEBOOK = "gated.ipynb"


@pytest.fixture
def waiting(lab_server_factory, tmp_path: Path) -> Iterator[LabServer]:
    """A Lab server whose notebook's agent waits for approval, its kernel shut down."""
    code = "x = 1"
    script = [{"tool_calls": [{"name": "python", "arguments": {"code": code}}]}]
    with ScriptedServer(script) as scripted:
        env = {
            "JUPYTER_AGENT_STORE": str(tmp_path / "store" / "agents.duckdb"),
            "OPENAI_BASE_URL": scripted.url,
            "OPENAI_API_KEY": "sk-test",
        }
        server: LabServer = lab_server_factory(env=env)
        nb_path = server.root_dir / NOTEBOOK
        write_notebook(
            nb_path,
            [
                nbformat.v4.new_code_cell(LOAD_CELL, id="load"),
                nbformat.v4.new_code_cell(AGENT_CELL, id="gated"),
            ],
        )
        kernel = Kernel({**env, "JUPYTER_AGENT_NOTEBOOK": str(nb_path)}, cwd=nb_path.parent)
        try:
            assert kernel.run(LOAD_CELL).status == "ok"
            paused = kernel.run(AGENT_CELL, cell_id="gated")
            assert "waiting for your approval" in paused.text, paused.text
        finally:
            kernel.shutdown()
        yield server


def test_the_panel_approves_a_waiting_call_without_a_kernel(
    waiting: LabServer, page: Page, artifacts_dir: Path
) -> None:
    server = waiting
    open_notebook(page, server, NOTEBOOK)
    page.evaluate("() => window.jupyterapp.commands.execute('jupyter-agent:show-panel')")
    item = page.locator('.jp-AgentsPanel-item[data-agent-name="gated"]')
    expect(item).to_contain_text("waiting for approval")
    approve = item.locator(".jp-AgentsPanel-approve")
    expect(approve).to_be_visible()
    page.screenshot(path=artifacts_dir / "waiting.png")
    approve.click()
    expect(item).to_contain_text("call approved at step 1", timeout=15_000)
    expect(item.locator(".jp-AgentsPanel-approve")).to_have_count(0)
    page.screenshot(path=artifacts_dir / "approved.png")
    store = Store(server.env["JUPYTER_AGENT_STORE"])
    (run,) = store.runs(notebook=str(server.root_dir / NOTEBOOK))
    last = store.checkpoints(run.run_id)[-1]
    assert last.kind == "approval" and last.info["decision"]["action"] == "approve"
    assert last.info["source"] == "rest"
