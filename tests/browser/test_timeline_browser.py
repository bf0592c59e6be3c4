"""The checkpoint timeline in a real JupyterLab: live entries, approving and forking by clicking.

The kernel talks to a scripted model endpoint started here and keeps its
checkpoints in a store under tmp_path; the test only clicks and reads the page.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from playwright.sync_api import Page, expect

from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer

from .conftest import LabServerFactory
from .lab import open_notebook, run_all_cells, wait_for_kernel_idle, write_notebook

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

TASK = "Load the sample numbers and add them up."
FORK_INSTRUCTION = "Also compute their mean."


def _call(content: str, code: str) -> dict[str, Any]:
    return {"content": content, "tool_calls": [{"name": "python", "arguments": {"code": code}}]}


def model(body: dict[str, Any]) -> dict[str, Any]:
    """A deterministic stand-in model that follows the conversation, forks included."""
    messages = body["messages"]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    if messages[last_user]["content"] == FORK_INSTRUCTION:
        if last_user == len(messages) - 1:
            return _call("Computing the mean.", "mean = sum(numbers) / len(numbers)\nmean")
        return {"content": "The mean of the numbers is 2.8."}
    results = sum(1 for m in messages if m["role"] == "tool")
    if results == 0:
        return _call(
            "Loading the numbers.", "numbers = [3, 1, 4, 1, 5]\nprint(len(numbers), 'numbers')"
        )
    if results == 1:
        return _call("Adding them up.", "total = sum(numbers)\ntotal")
    return {"content": "The numbers add up to 14."}


def write_agent_notebook(path: Path) -> None:
    write_notebook(
        path,
        [
            nbformat.v4.new_code_cell("%load_ext jupyter_agent"),
            nbformat.v4.new_code_cell(f"%%agent -m scripted --approve\n{TASK}"),
        ],
    )


def test_timeline_approve_and_fork_by_clicking(
    lab_server_factory: LabServerFactory, page: Page, artifacts_dir: Path, tmp_path: Path
) -> None:
    store_path = tmp_path / "store" / "agents.duckdb"
    with ScriptedServer(model) as scripted:
        lab = lab_server_factory(
            env={
                "JUPYTER_AGENT_STORE": str(store_path),
                "OPENAI_BASE_URL": scripted.url,
                "OPENAI_API_KEY": "sk-test-0123456789abcdef",
            }
        )
        write_agent_notebook(lab.root_dir / "agent.ipynb")
        open_notebook(page, lab, "agent.ipynb")
        run_all_cells(page)  # the agent cell ends at its first approval

        timeline = page.locator(".ja-timeline")
        expect(timeline).to_have_count(1)
        badge = timeline.locator(".ja-header .ja-badge")
        expect(badge).to_have_text("waiting for approval")
        expect(timeline.locator(".ja-stats")).to_contain_text("3 checkpoints · 1 step")
        expect(timeline.locator(".ja-row")).to_have_count(3)
        approval = timeline.locator(".ja-approval")
        expect(approval.locator("textarea")).to_have_value(
            "numbers = [3, 1, 4, 1, 5]\nprint(len(numbers), 'numbers')"
        )

        # Approve the first call: the run continues in the background, the list fills in.
        approval.get_by_role("button", name="Approve").click()
        expect(approval.locator("textarea")).to_have_value("total = sum(numbers)\ntotal")
        expect(timeline.locator(".ja-stats")).to_contain_text("9 checkpoints · 2 steps")
        expect(timeline.locator(".ja-log")).to_contain_text("5 numbers")

        # Edit the second call before running it.
        approval.get_by_role("button", name="Edit").click()
        approval.locator("textarea").fill("total = sum(numbers) + 0\ntotal")
        approval.get_by_role("button", name="Run edited code").click()
        expect(badge).to_have_text("done after 3 steps")
        expect(timeline.locator(".ja-row").last).to_contain_text("The numbers add up to 14.")
        expect(approval).to_be_hidden()

        # Open the first tool result: its variables are listed.
        first_result = timeline.locator('.ja-row[data-kind="tool_result"]').first
        first_result.click()
        detail = timeline.locator(".ja-detail")
        expect(detail.locator(".ja-vars")).to_contain_text("numbers")
        expect(detail).to_contain_text("[3, 1, 4, 1, 5]")
        # A checkpoint with no text of its own shows none: no stray "null" under its head.
        expect(detail).not_to_contain_text("null")
        expect(detail).to_contain_text("5 numbers")  # the tool result, decoded in the kernel
        # The fork dialog offers the output, prefilled, to fork a "what if" from.
        expect(detail.locator(".ja-edit")).to_have_value(re.compile("5 numbers"))
        expect(detail.locator(".ja-fork-model")).to_have_value("")

        # Fork from there with a new instruction; the fork asks for approval too.
        step = first_result.get_attribute("data-step")
        detail.locator(".ja-instruction").fill(FORK_INSTRUCTION)
        detail.get_by_role("button", name="Fork from here").click()
        runs = timeline.locator(".ja-runs .ja-run")
        expect(runs).to_have_count(2)
        expect(runs.nth(1)).to_contain_text(f"#2 ⋔ #1@{step}")
        expect(approval.locator("textarea")).to_have_value(
            "mean = sum(numbers) / len(numbers)\nmean"
        )
        approval.get_by_role("button", name="Approve").click()
        expect(badge).to_have_text("done after 3 steps")  # one inherited from #1, two its own
        expect(timeline.locator(".ja-row").last).to_contain_text("The mean of the numbers is 2.8.")
        expect(timeline.locator(".ja-divider")).to_contain_text(
            f"⋔ #2 branches off after checkpoint {step}"
        )
        expect(timeline.locator(".ja-row.ja-inherited")).to_have_count(int(step) + 1)
        expect(runs.nth(0)).to_contain_text("done")
        expect(runs.nth(1)).to_contain_text("latest")

        # Open the fork's result for the picture.
        timeline.locator('.ja-row[data-kind="tool_result"]').last.click()
        expect(detail.locator(".ja-vars")).to_contain_text("mean")
        # Loaded from the kernel (not only drawn from its row), so no later redraw of the
        # detail clears what is typed next.
        expect(detail).to_contain_text("Agent variables at this point: mean")

        # Compare it with the fork's first checkpoint: the mean was added since.
        detail.locator(".ja-compare-with").fill(str(int(step) + 1))
        detail.get_by_role("button", name="Compare").click()
        expect(detail.locator(".ja-compare")).to_contain_text("- mean: float 2.8")
        wait_for_kernel_idle(page)
        expect(page.get_by_text("Error displaying widget")).to_have_count(0)
        timeline.screenshot(path=artifacts_dir / "timeline.png")
        page.screenshot(path=artifacts_dir / "notebook.png", full_page=True)

        # After a kernel restart the view says it is out of date, and offers no actions.
        page.evaluate(
            "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart()"
        )
        expect(timeline.locator(".ja-stale-note")).to_contain_text("Kernel restarted")
        expect(detail.get_by_role("button", name="Fork from here")).to_be_disabled()

    store = Store(store_path)
    original, fork = store.runs()
    assert (fork.parent_run, fork.parent_step) == (original.run_id, int(step))
    assert store.checkpoints(original.run_id)[-1].summary == "The numbers add up to 14."
