"""A saved notebook with a finished agent cell, reopened after its kernel is gone.

The cell's saved output holds the timeline widget's view, whose model lived in
the kernel that ran it; JupyterLab saves no widget state by default. Reopened,
the cell shows the timeline's fallback line and the bounded output (status,
answer), never "Error displaying widget: model not found".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from playwright.sync_api import Page, expect

from .lab import LabServer, open_notebook, write_notebook

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

NOTEBOOK = "finished.ipynb"
AGENT_CELL = "%%agent --model offline --name report\nSet total = 6 * 7 and report it."


def run_and_save(path: Path, env: dict[str, str]) -> None:
    """Run the notebook in a kernel, then save it as JupyterLab does: no widget state."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=120,
        store_widget_state=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env={**os.environ, **env, "JUPYTER_AGENT_NOTEBOOK": str(path)})
    nbformat.write(nb, path)


def test_a_reopened_agent_cell_shows_its_fallback_not_an_error(
    lab_server_factory, page: Page, tmp_path: Path, artifacts_dir: Path
) -> None:
    env = {"JUPYTER_AGENT_STORE": str(tmp_path / "store" / "agents.duckdb")}
    server: LabServer = lab_server_factory(env=env)
    path = server.root_dir / NOTEBOOK
    write_notebook(
        path,
        [
            nbformat.v4.new_code_cell("%load_ext jupyter_agent", id="load"),
            nbformat.v4.new_code_cell(AGENT_CELL, id="agent"),
        ],
    )
    run_and_save(path, env)
    # Saved by its user in JupyterLab, a notebook is trusted: its widget view is
    # what JupyterLab renders (an untrusted one shows the HTML fallback instead).
    jupyter = Path(sys.executable).with_name("jupyter")
    subprocess.run([str(jupyter), "trust", str(path)], env=server.env, check=True, timeout=60)
    saved = nbformat.read(path, as_version=4).cells[1].outputs
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in saved)
    assert "widgets" not in nbformat.read(path, as_version=4).metadata  # no state saved

    open_notebook(page, server, NOTEBOOK)  # a new kernel, which never held the widget
    outputs = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output")
    expect(outputs.get_by_text("Agent report · done after").first).to_be_visible()
    expect(outputs.get_by_text("Agent timeline of report").first).to_be_visible()
    page.wait_for_timeout(3_000)  # the widget manager has given up on the model by now
    page.screenshot(path=artifacts_dir / "reopened.png")
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    assert "model not found" not in panel.inner_text()
    assert "Error displaying widget" not in panel.inner_text()

    # Notebook 7 renders outputs with the same extensions.
    page.goto(f"{server.url}/notebooks/{NOTEBOOK}?token={server.token}")
    outputs = page.locator(".jp-OutputArea-output")
    expect(outputs.get_by_text("Agent report · done after").first).to_be_visible(timeout=45_000)
    expect(outputs.get_by_text("Agent timeline of report").first).to_be_visible()
    page.wait_for_timeout(3_000)
    page.screenshot(path=artifacts_dir / "reopened-notebook7.png")
    assert "model not found" not in page.locator(".jp-Notebook").inner_text()
