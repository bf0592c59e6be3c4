"""Rich results and code as cells in JupyterLab.

An agent shows a DataFrame and a plot. After Restart Kernel and Run All the
finished cell is restored without the model and shows the table and the
figure again; ``%agent cells`` then inserts the agent's python calls below
its cell, with the outputs they had, through the lab extension; so does
the panel's "Insert as cells", from the store.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Page, expect

from jupyter_agent.testing import ScriptedServer

from ..kernels import Kernel
from .lab import open_notebook, run_all_cells, wait_for_kernel_idle, write_notebook

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")
pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

TABLE = "import pandas as pd\ndf = pd.DataFrame({'x': [1, 2, 3], 'y': [4, 5, 6]})\ndf"
PLOT = "import matplotlib.pyplot as plt\nplt.figure()\nplt.plot([1, 3, 2])\nprint('plotted')"
SCRIPT = [
    {"tool_calls": [{"name": "python", "arguments": {"code": TABLE}}]},
    {"tool_calls": [{"name": "python", "arguments": {"code": PLOT}}]},
    {"content": "A table and a plot."},
]
AGENT_CELL = "%%agent --model scripted -n charts\nShow a table and a plot."
NOTEBOOK = "rich.ipynb"
VISIBLE = ".jp-NotebookPanel:not(.lm-mod-hidden)"


def endpoint_env(scripted: ScriptedServer, tmp_path: Path) -> dict[str, str]:
    """The environment of the server and its kernels: a store of the test's own, the script."""
    return {
        "JUPYTER_AGENT_STORE": str(tmp_path / "store" / "agents.duckdb"),
        "OPENAI_BASE_URL": scripted.url,
        "OPENAI_API_KEY": "sk-test",
    }


def test_restored_rich_output_and_cells_in_lab(lab_server_factory, page: Page, tmp_path: Path):
    with ScriptedServer(SCRIPT) as scripted:
        env = endpoint_env(scripted, tmp_path)
        server = lab_server_factory(env=env)
        write_notebook(
            server.root_dir / NOTEBOOK,
            [
                nbformat.v4.new_code_cell("%load_ext jupyter_agent", id="load"),
                nbformat.v4.new_code_cell(AGENT_CELL, id="charts-cell"),
            ],
        )
        open_notebook(page, server, NOTEBOOK)
        run_all_cells(page, timeout=120_000)
        cell = page.locator(f"{VISIBLE} .jp-Cell").nth(1)
        expect(cell.locator(".jp-OutputArea-output table").first).to_be_visible()
        expect(cell.locator(".jp-OutputArea-output img").first).to_be_visible()
        requests = len(scripted.requests)

        # Restart Kernel and Run All: restored at zero tokens, the same outputs shown.
        page.evaluate(  # not awaited: it resolves after the dialog
            "() => { void window.jupyterapp.commands.execute('notebook:restart-run-all'); }"
        )
        page.locator(".jp-Dialog .jp-mod-accept").first.click(timeout=30_000)
        cell.get_by_text("restored from the store").first.wait_for(timeout=120_000)
        wait_for_kernel_idle(page, 60_000)
        expect(cell.locator(".jp-OutputArea-output table").first).to_be_visible()
        expect(cell.locator(".jp-OutputArea-output img").first).to_be_visible()
        assert len(scripted.requests) == requests

        # %agent cells: the two calls inserted below the agent's cell, with their outputs.
        run_new_cell(page, "%agent cells charts")
        cells = page.locator(f"{VISIBLE} .jp-Cell")
        expect(cells).to_have_count(5, timeout=30_000)
        expect(cells.nth(2).locator(".jp-InputArea")).to_contain_text("pd.DataFrame")
        expect(cells.nth(2).locator(".jp-OutputArea-output table").first).to_be_visible()
        expect(cells.nth(3).locator(".jp-InputArea")).to_contain_text("plt.plot")
        expect(cells.nth(3).locator(".jp-OutputArea-output img").first).to_be_visible()
        expect(cells.nth(4).locator(".jp-InputArea")).to_contain_text("%agent cells charts")

        # The panel's "Insert as cells" does the same from the store.
        page.evaluate("() => window.jupyterapp.commands.execute('jupyter-agent:show-panel')")
        button = page.locator(
            '.jp-AgentsPanel-item[data-agent-name="charts"] .jp-AgentsPanel-cells'
        )
        button.click()
        expect(cells).to_have_count(7, timeout=30_000)
        expect(cells.nth(2).locator(".jp-InputArea")).to_contain_text("pd.DataFrame")
        expect(cells.nth(2).locator(".jp-OutputArea-output table").first).to_be_visible()

        # --replace: the calls become the agent cell's output instead.
        run_new_cell(page, "%agent cells charts --replace")
        agent = cells.nth(1)
        agent.scroll_into_view_if_needed()  # cells out of view are not drawn
        shown = agent.locator(".jp-OutputArea-output")
        expect(shown.filter(has_text="pd.DataFrame").first).to_be_visible(timeout=30_000)
        expect(shown.filter(has_text="plt.plot").first).to_be_visible()
        expect(agent.locator(".jp-OutputArea-output table").first).to_be_visible()
        expect(agent.get_by_text("restored from the store")).to_have_count(0)


def run_new_cell(page: Page, source: str) -> None:
    """Add a cell at the end of the notebook and run it."""
    page.evaluate(
        """async (source) => {
            const nb = window.jupyterapp.shell.currentWidget.content;
            nb.activeCellIndex = nb.widgets.length - 1;
            await window.jupyterapp.commands.execute('notebook:insert-cell-below');
            nb.activeCell.model.sharedModel.setSource(source);
            await window.jupyterapp.commands.execute('notebook:run-cell');
        }""",
        source,
    )


def test_notebook7_shows_restored_rich_output_and_inserts_cells(
    lab_server_factory, page: Page, tmp_path: Path
):
    pytest.importorskip("notebook", minversion="7")
    with ScriptedServer(SCRIPT) as scripted:
        env = endpoint_env(scripted, tmp_path)
        server = lab_server_factory(env=env)
        nb_path = server.root_dir / NOTEBOOK
        write_notebook(
            nb_path,
            [
                nbformat.v4.new_code_cell("%load_ext jupyter_agent", id="load"),
                nbformat.v4.new_code_cell(AGENT_CELL, id="charts-cell"),
                nbformat.v4.new_code_cell("%agent cells charts", id="cells"),
            ],
        )
        # The agent ran yesterday, in a kernel long gone.
        kernel = Kernel({**env, "JUPYTER_AGENT_NOTEBOOK": str(nb_path)}, cwd=nb_path.parent)
        try:
            assert kernel.run("%load_ext jupyter_agent").status == "ok"
            assert kernel.run(AGENT_CELL, cell_id="charts-cell").status == "ok"
        finally:
            kernel.kill()
        requests = len(scripted.requests)

        page.goto(f"{server.url}/notebooks/{NOTEBOOK}?token={server.token}")
        cells = page.locator(".jp-Notebook .jp-Cell")
        expect(cells).to_have_count(3, timeout=45_000)
        wait_for_kernel_idle(page, 60_000)
        run_all_cells(page, timeout=120_000)
        agent = cells.nth(1)
        agent.scroll_into_view_if_needed()  # cells out of view are not drawn
        # The restore's output replaces the cell's first display once the kernel sends it.
        expect(agent.get_by_text("restored from the store").first).to_be_visible(timeout=30_000)
        expect(agent.locator(".jp-OutputArea-output table").first).to_be_visible()
        expect(agent.locator(".jp-OutputArea-output img").first).to_be_visible()
        assert len(scripted.requests) == requests
        expect(cells).to_have_count(5, timeout=30_000)
        expect(cells.nth(2).locator(".jp-InputArea")).to_contain_text("pd.DataFrame")
        expect(cells.nth(3).locator(".jp-OutputArea-output img").first).to_be_visible()
