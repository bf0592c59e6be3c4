"""The lab panel lists the notebook's queued jobs of the worker pool.

A notebook is submitted (``jupyter agent submit``) with no worker running, so its
job stays queued; opened in JupyterLab, the panel's Jobs section shows it.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Page, expect

from jupyter_agent.cli import main

from .lab import open_notebook, write_notebook

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

NOTEBOOK = "nightly.ipynb"


def test_the_panel_shows_a_queued_job(
    lab_server_factory, tmp_path: Path, page: Page, artifacts_dir: Path
) -> None:
    pytest.importorskip("dbos", reason="pip install 'jupyter-agent-cells[workers]'")
    store = tmp_path / "store" / "agents.duckdb"
    server = lab_server_factory(env={"JUPYTER_AGENT_STORE": str(store)})
    nb_path = server.root_dir / NOTEBOOK
    cells = [
        nbformat.v4.new_code_cell("%load_ext jupyter_agent", id="load"),
        nbformat.v4.new_code_cell("%%agent --model scripted --name nightly\nGo.", id="nightly"),
    ]
    write_notebook(nb_path, cells)
    assert main(["--store", str(store), "submit", str(nb_path), "--agent", "nightly"]) == 0
    open_notebook(page, server, NOTEBOOK)
    page.evaluate("() => window.jupyterapp.commands.execute('jupyter-agent:show-panel')")
    job = page.locator('.jp-AgentsPanel-job[data-job-status="queued"]')
    expect(job).to_have_count(1, timeout=15_000)
    expect(job).to_contain_text("nightly")
    expect(job).to_contain_text("queued")
    page.screenshot(path=artifacts_dir / "queued-job.png")
