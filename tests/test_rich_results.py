"""Rich results: a python call's last value and its figures are shown as a cell shows them.

Real kernels (the inline matplotlib backend, pandas): the live cell gets the
MIME bundles, the checkpoint keeps them (size-capped), a restored cell shows
them again after a kernel restart, and the model is only ever sent text.
"""

from __future__ import annotations

import pytest

from jupyter_agent.core import history
from jupyter_agent.core.state import decode_delta
from jupyter_agent.store.open import open_store

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

CELL = "%%agent --model scripted\nShow a table and a plot."
TABLE = "import pandas as pd\ndf = pd.DataFrame({'x': [1, 2, 3], 'y': [4, 5, 6]})\ndf"
PLOT = (
    "import matplotlib.pyplot as plt\nfrom IPython.display import HTML, display\n"
    "display(HTML('<b>shown by display()</b>'))\n"
    "fig = plt.figure()\nplt.plot([1, 3, 2])\nprint('plotted')"
)


def tool(code: str) -> dict:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}]}


SCRIPT = [tool(TABLE), tool(PLOT), {"content": "Done: a table and a plot."}]


def calls_outputs(outputs: list[dict]) -> list[dict]:
    """The outputs the python calls displayed: not the agent's own (timeline, progress)."""
    return [
        out
        for out in outputs
        if not str(out.get("data", {}).get("text/html", "")).startswith("<div class='jp-agent-")
    ]


def mime_types(outputs: list[dict]) -> set[str]:
    return {m for out in calls_outputs(outputs) for m in out.get("data", {})}


def sent_tool_messages(scripted) -> list:
    return [
        m
        for r in scripted.requests
        for m in (r["body"] or {}).get("messages", [])
        if m.get("role") == "tool"
    ]


def saved_outputs(store_path) -> list[dict]:
    """The outputs the latest run's checkpoints hold."""
    store = open_store(str(store_path))
    run = store.runs()[-1]
    pairs = store.payloads(history.segments(run, store.run, whole=True))
    return [o for cp, p in pairs if cp.kind == "tool_result" for o in decode_delta(p).outputs or []]


def test_rich_results_live_saved_and_restored_text_to_the_model(
    kernel_factory, scripted, store_path
):
    scripted.set_script(SCRIPT)
    k1 = kernel_factory()
    live = k1.run(CELL, cell_id="cell-rich")
    assert live.status == "ok", live.text
    assert "Done: a table and a plot." in live.text
    assert {"text/html", "image/png"} <= mime_types(live.outputs), live.outputs
    html = next(
        o["data"]["text/html"] for o in calls_outputs(live.outputs) if "text/html" in o["data"]
    )
    assert "<table" in html
    # The model saw the text form only: the DataFrame's text, no HTML, no image.
    sent = sent_tool_messages(scripted)
    assert sent and all(isinstance(m["content"], str) for m in sent)
    assert any("x  y" in m["content"] for m in sent), sent
    assert not any("<table" in m["content"] or "iVBOR" in m["content"] for m in sent)
    k1.kill()

    assert {"text/html", "image/png"} <= mime_types(saved_outputs(store_path))

    requests = len(scripted.requests)
    k2 = kernel_factory()
    again = k2.run(CELL, cell_id="cell-rich")
    assert again.status == "ok", again.text
    assert "restored from the store without calling the model" in again.text
    assert len(scripted.requests) == requests
    assert {"text/html", "image/png"} <= mime_types(again.outputs), again.outputs
    assert any("shown by display()" in str(o["data"]) for o in again.outputs), again.outputs


def test_outputs_over_the_cap_are_dropped_and_said(kernel_factory, scripted, store_path):
    scripted.set_script(SCRIPT)
    k = kernel_factory()
    k.run("%config AgentMagics.rich_output_bytes = 4000")
    live = k.run(CELL, cell_id="cell-cap")
    assert live.status == "ok", live.text
    assert "image/png" in mime_types(live.outputs)  # shown live whole
    assert "not saved: image/png" in live.text, live.text
    k.kill()
    requests = len(scripted.requests)
    k2 = kernel_factory()
    k2.run("%config AgentMagics.rich_output_bytes = 4000")
    again = k2.run(CELL, cell_id="cell-cap")
    assert len(scripted.requests) == requests
    restored = mime_types(again.outputs)
    assert "text/html" in restored and "image/png" not in restored, again.outputs
    assert "image/png was not saved" in again.text, again.text


def test_what_a_call_displays_is_shown_and_saved_with_secrets_redacted(
    kernel_factory, scripted, store_path
):
    from .conftest import API_KEY

    leaky = (
        "import os\nfrom IPython.display import HTML, display\n"
        "display(HTML('<i>' + os.environ['OPENAI_API_KEY'] + '</i>'))\n"
        "os.environ['OPENAI_API_KEY']"
    )
    scripted.set_script([tool(leaky), {"content": "Shown."}])
    k = kernel_factory()
    live = k.run(CELL, cell_id="cell-leak")
    assert live.status == "ok", live.text
    shown = str([o["data"] for o in live.outputs])
    assert API_KEY not in shown and "<i>[REDACTED]</i>" in shown, shown
    assert API_KEY not in str(sent_tool_messages(scripted))
    saved = str(saved_outputs(store_path))  # what a restore shows
    assert "<i>[REDACTED]</i>" in saved and API_KEY not in saved, saved
