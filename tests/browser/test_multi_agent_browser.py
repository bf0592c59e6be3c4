"""A parent agent that delegates to a child, seen in a real JupyterLab.

The parent's timeline links its ``delegate`` call to the child, whose
checkpoints open nested under it at a click, and offers a call the child waits
to have approved; the agents side panel lists the child indented under its
parent, with its own status badge.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Page, expect

from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer

from .conftest import LabServerFactory
from .lab import open_notebook, run_all_cells, write_notebook

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

PARENT_TASK = "Split the work: count the rows."
CHILD_TASK = "Count the rows."


def tool(name: str, **arguments: str) -> dict:
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


def script(body: dict) -> dict:
    """The parent delegates, the child runs one python call; each answers by its task."""
    messages = body["messages"]
    task = next(m["content"] for m in messages if m.get("role") == "user")
    step = sum(1 for m in messages if m.get("role") == "assistant")
    if task == PARENT_TASK:
        if step == 0:
            return tool("delegate", agent="counter", task=CHILD_TASK)
        result = next(m["content"] for m in messages if m.get("role") == "tool")
        return {"content": f"Lead done: {result}"}
    if step == 0:
        return tool("python", code="rows = 42\nrows")
    return {"content": "counter counted 42 rows"}


@contextmanager
def team_in_lab(
    lab_server_factory: LabServerFactory, page: Page, store_path: Path, flags: str = ""
) -> Iterator[None]:
    """Run the lead agent's cell (with ``flags``) in JupyterLab; the model serves while inside."""
    with ScriptedServer(script) as scripted:
        lab = lab_server_factory(
            env={
                "JUPYTER_AGENT_STORE": str(store_path),
                "OPENAI_BASE_URL": scripted.url,
                "OPENAI_API_KEY": "sk-test-0123456789abcdef",
            }
        )
        write_notebook(
            lab.root_dir / "team.ipynb",
            [
                nbformat.v4.new_code_cell("%load_ext jupyter_agent"),
                nbformat.v4.new_code_cell(
                    f"%%agent -m scripted --name lead {flags}\n{PARENT_TASK}"
                ),
            ],
        )
        open_notebook(page, lab, "team.ipynb")
        run_all_cells(page)
        yield


def test_a_delegated_child_nests_in_the_timeline_and_the_panel(
    lab_server_factory: LabServerFactory, page: Page, artifacts_dir: Path, tmp_path: Path
) -> None:
    store_path = tmp_path / "store" / "agents.duckdb"
    with team_in_lab(lab_server_factory, page, store_path):
        # The parent's timeline: the delegate call links to the child, closed at first.
        timeline = page.locator(".ja-timeline")
        expect(timeline).to_have_count(1)
        expect(timeline.locator(".ja-header .ja-badge")).to_have_text("done after 2 steps")
        links = timeline.locator(".ja-child-link")
        expect(links.first).to_contain_text("child agent counter · done after 2 steps")
        child_rows = timeline.locator(".ja-row.ja-child-row")
        expect(child_rows).to_have_count(0)
        links.first.click()
        expect(child_rows).to_have_count(5)
        kinds = child_rows.evaluate_all("rows => rows.map(r => r.dataset.kind)")
        assert kinds == ["start", "model", "tool_call", "tool_result", "model"], kinds
        expect(child_rows.last).to_contain_text("counter counted 42 rows")
        expect(links.first).to_contain_text("▾")
        # A child's checkpoint opens like the parent's own.
        child_rows.nth(3).click()
        expect(timeline.locator(".ja-detail .ja-vars")).to_contain_text("rows")
        timeline.screenshot(path=artifacts_dir / "timeline.png")

        # The side panel: the child indented under its parent, each with its own badge.
        page.evaluate("() => window.jupyterapp.commands.execute('jupyter-agent:show-panel')")
        lead = page.locator('.jp-AgentsPanel-list > .jp-AgentsPanel-item[data-agent-name="lead"]')
        expect(lead.locator(":scope > .jp-AgentsPanel-itemBody .jp-AgentBadge")).to_have_text(
            "done after 2 steps"
        )
        child = lead.locator(
            ':scope > .jp-AgentsPanel-children > .jp-AgentsPanel-child[data-agent-name="counter"]'
        )
        expect(child).to_have_attribute("data-parent-agent", "lead")
        expect(child.locator(".jp-AgentBadge")).to_have_text("done after 2 steps")
        expect(child).to_contain_text("delegated by lead")
        expect(page.locator(".jp-AgentsPanel-list > .jp-AgentsPanel-item")).to_have_count(1)
        lead_box = lead.locator(":scope > .jp-AgentsPanel-itemBody").bounding_box()
        child_box = child.bounding_box()
        assert lead_box and child_box and child_box["x"] >= lead_box["x"] + 10, (
            lead_box,
            child_box,
        )
        # The child has no cell: clicking it leads to the cell that delegated to it.
        page.locator(".jp-Cell").first.click()
        child.click()
        expect(page.locator(".jp-Cell.jp-mod-active")).to_contain_text("--name lead")
        page.screenshot(path=artifacts_dir / "panel.png")

    runs = {r.agent: r for r in Store(store_path).runs()}
    assert runs["counter"].info["parent_agent"] == "lead"


def test_an_approval_asked_inside_a_child_is_answered_in_the_parents_timeline(
    lab_server_factory: LabServerFactory, page: Page, artifacts_dir: Path, tmp_path: Path
) -> None:
    store_path = tmp_path / "store" / "agents.duckdb"
    with team_in_lab(lab_server_factory, page, store_path, flags="--approve python"):
        # The child inherits the approval policy and waits; the parent stops, saying why.
        timeline = page.locator(".ja-timeline")
        last = timeline.locator(".ja-row").last
        expect(last).to_contain_text("waiting for child agent counter: waiting for approval")
        expect(timeline.locator(".ja-child-link").first).to_contain_text("waiting for approval")
        output = page.locator(".jp-OutputArea-output")
        expect(output.get_by_text("%agent approve counter")).to_be_visible()
        # The parent's timeline offers the child's call: Approve runs it, then the
        # child and the parent go on, the parent receiving the child's answer.
        approval = timeline.locator(".ja-approval")
        expect(approval).to_be_visible()
        expect(approval.locator(".ja-approval-head")).to_contain_text("child agent counter")
        expect(approval.locator("textarea.ja-code-edit")).to_have_value("rows = 42\nrows")
        page.screenshot(path=artifacts_dir / "child-approval.png")
        approval.get_by_role("button", name="Approve").click()
        expect(timeline.locator(".ja-header .ja-badge")).to_have_text("done after 2 steps")
        expect(approval).to_be_hidden()
        expect(timeline.locator(".ja-child-link").first).to_contain_text(
            "child agent counter · done after 2 steps"
        )
        expect(timeline.locator(".ja-row").last).to_contain_text(
            "Lead done: counter counted 42 rows"
        )
        timeline.screenshot(path=artifacts_dir / "child-approved.png")
    store = Store(store_path)
    statuses = {r.agent: store.checkpoints(r.run_id)[-1].status for r in store.runs()}
    assert statuses == {"lead": "done", "counter": "done"}, statuses
    lead = store.runs(agent="lead")[0]
    answers = [c for c in store.checkpoints(lead.run_id) if c.kind == "tool_result"]
    assert [c.summary for c in answers] == ["counter counted 42 rows"], answers
