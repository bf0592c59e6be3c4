"""End-to-end check that the browser harness, kernels and widget comms all work.

If this fails, every other browser test is meaningless, so it runs first and
keeps its assertions basic.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Page, expect

from .lab import LabServer, open_notebook, run_all_cells, wait_for_text, write_notebook

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

WIDGET_CELL = """\
import ipywidgets as widgets

button = widgets.Button(description="Smoke button")


def on_click(b):
    b.description = "clicked"


button.on_click(on_click)
button"""

PRINT_CELL = 'print("hello from kernel")'


def write_smoke_notebook(path: Path) -> None:
    """A notebook with a kernelspec, so Lab starts the kernel without asking."""
    write_notebook(
        path, [nbformat.v4.new_code_cell(WIDGET_CELL), nbformat.v4.new_code_cell(PRINT_CELL)]
    )


def test_notebook_runs_and_widget_round_trips(
    lab_server: LabServer, page: Page, artifacts_dir: Path
) -> None:
    write_smoke_notebook(lab_server.root_dir / "smoke.ipynb")
    open_notebook(page, lab_server, "smoke.ipynb")
    run_all_cells(page)

    outputs = page.locator(".jp-OutputArea-output")
    wait_for_text(page, "hello from kernel", within=".jp-OutputArea-output")
    button = outputs.get_by_role("button", name="Smoke button")
    expect(button).to_be_visible()

    button.click()  # handler runs in the kernel; the new description syncs back over the comm
    expect(outputs.get_by_role("button", name="clicked")).to_be_visible()
    expect(outputs.get_by_text("Error displaying widget")).to_have_count(0)
    page.screenshot(path=artifacts_dir / "smoke.png")
