"""JupyterLab's notification area tells of an agent that waits, and of one that is done.

A notebook is open in the lab; its agent is run, pauses before a tool call and
is approved from its timeline. The lab shows one toast when it starts waiting
(not another when the waiting cell is run again: the same pause) and one when
it is done, each with the status sentence every view uses.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Page, expect

from jupyter_agent.testing import ScriptedServer

from .conftest import LabServerFactory
from .lab import open_notebook, run_all_cells, write_notebook

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

NOTEBOOK = "gated.ipynb"
LOAD_CELL = "%load_ext jupyter_agent"
AGENT_CELL = "%%agent --model scripted --approve --name gated\nSet x."
SCRIPT = [{"tool_calls": [{"name": "python", "arguments": {"code": "x = 1"}}]}, {"content": "Set."}]
WAITING = "Agent gated in gated.ipynb: waiting for approval"
DONE = "Agent gated in gated.ipynb: done after 2 steps"


def test_the_lab_tells_once_when_an_agent_waits_and_when_it_is_done(
    lab_server_factory: LabServerFactory, page: Page, artifacts_dir: Path, tmp_path: Path
) -> None:
    with ScriptedServer(SCRIPT) as scripted:
        lab = lab_server_factory(
            env={
                "JUPYTER_AGENT_STORE": str(tmp_path / "store" / "agents.duckdb"),
                "OPENAI_BASE_URL": scripted.url,
                "OPENAI_API_KEY": "sk-test-0123456789abcdef",
            }
        )
        write_notebook(
            lab.root_dir / NOTEBOOK,
            [
                nbformat.v4.new_code_cell(LOAD_CELL, id="load"),
                nbformat.v4.new_code_cell(AGENT_CELL, id="gated"),
            ],
        )
        open_notebook(page, lab, NOTEBOOK)
        toasts = page.locator(".Toastify__toast")
        run_all_cells(page)  # the agent ends waiting for approval
        waiting = toasts.filter(has_text=WAITING)
        expect(waiting).to_have_count(1, timeout=15_000)
        expect(waiting.get_by_role("button", name="Show agents")).to_be_visible()
        page.screenshot(path=artifacts_dir / "waiting.png")

        # The same pause, asked again by re-running the cell: no second toast.
        run_all_cells(page)
        timeline = page.locator(".ja-timeline")
        expect(timeline.locator(".ja-header .ja-badge")).to_have_text("waiting for approval")
        page.wait_for_timeout(4_000)  # more than one poll while the lab looks again
        expect(waiting).to_have_count(1)

        timeline.locator(".ja-approval").get_by_role("button", name="Approve").click()
        expect(timeline.locator(".ja-header .ja-badge")).to_have_text("done after 2 steps")
        done = toasts.filter(has_text=DONE)
        expect(done).to_have_count(1, timeout=30_000)
        page.screenshot(path=artifacts_dir / "done.png")
        assert toasts.filter(has_text="Agent gated").count() <= 2
