"""An agent cell's saved output stays small however long the run and whatever its tools print.

A run executed through nbclient (as nbval and papermill do) leaves in the
``.ipynb`` one header line, a tail of recent activity updated in place, the
answer and a pointer to the full transcript, not a line per step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat

from jupyter_agent.testing import ScriptedServer

from .test_cli import SETUP, notebook
from .test_identity import run_nbclient

#: Steps of the long run: 300 in the suite (about 20 s); JUPYTER_AGENT_BOUNDED_STEPS=1000
#: runs the full trial (about a minute), with the same bound.
STEPS = int(os.environ.get("JUPYTER_AGENT_BOUNDED_STEPS", "300"))
LIMIT = 50_000  # bytes of output an agent cell may leave in the notebook
BIG = 5_000_000  # characters one tool call prints


def tool(code: str) -> dict:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}]}


def long_script(steps: int) -> list[dict]:
    script = [tool(f"v = {i}\nprint('line of step', {i}, '.' * 60)") for i in range(steps)]
    script[steps // 2] = tool(f"print('x' * {BIG})")
    return [*script, {"content": f"All {steps} steps done."}]


def outputs_of(path: Path, index: int) -> list[dict]:
    return nbformat.read(path, as_version=4).cells[index].get("outputs", [])


def plain(outputs: list[dict]) -> str:
    """What a terminal, nbval or a notebook without widgets shows of the outputs."""
    parts = []
    for out in outputs:
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)


def test_a_long_run_leaves_a_small_cell_output(agent_env, tmp_path):
    cell = f"%%agent --model scripted --name long --max-steps {STEPS + 5}\nWork long."
    path = notebook(tmp_path / "long.ipynb", [SETUP, cell])
    with ScriptedServer(long_script(STEPS)) as server:
        server.context_window = 1_000_000
        run_nbclient(path, {**agent_env, "OPENAI_BASE_URL": server.url})
    outputs = outputs_of(path, 1)
    size = len(json.dumps(outputs))
    print(f"\n{STEPS} steps: {size:,} bytes of cell output in the notebook")
    assert size <= LIMIT, f"{size:,} bytes"
    text = plain(outputs)
    assert "Agent long · done after" in text, text  # the header
    assert f"All {STEPS} steps done." in text  # the answer
    assert f"line of step {STEPS - 1}" in text  # the tail of recent activity
    assert "%agent show long" in text  # the pointer to the full transcript
    assert "line of step 0 " not in text  # not every step's line
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert f"All {STEPS} steps done." in html  # reads well without a kernel or widgets


def test_the_cell_output_is_the_same_on_every_execution(agent_env, tmp_path):
    """nbval compares saved outputs: the text form has no times, ids or sizes."""
    script = [tool("print('hello')"), tool("x = 2"), {"content": "Done: x is 2."}]
    texts = []
    for n in range(2):
        cell = "%%agent --model scripted --name same\nSet x."
        path = notebook(tmp_path / f"same{n}.ipynb", [SETUP, cell])
        with ScriptedServer(script) as server:
            env = {**agent_env, "OPENAI_BASE_URL": server.url}
            env["JUPYTER_AGENT_STORE"] = str(tmp_path / f"store{n}" / "agents.duckdb")
            env["JUPYTER_AGENT_NOTEBOOK"] = str(tmp_path / "same.ipynb")
            run_nbclient(path, env)
        texts.append(plain(outputs_of(path, 1)))
    assert texts[0] == texts[1], texts
    assert "Done: x is 2." in texts[0] and "hello" in texts[0]


def test_the_cell_output_keeps_a_clipped_tail() -> None:
    from jupyter_agent.views.cell import TAIL, WIDTH, CellOutput

    out = CellOutput("demo")
    for i in range(100):
        out.write(f"line {i}\n")
    out.write("y" * 1_000_000)  # one huge line, no newline yet
    out.write("\nThe answer\n")
    out.write("■ done after 3 steps\n")
    out.finish("done", 3, "The answer")
    text = out.text()
    assert text.splitlines()[0] == "Agent demo · done after 3 steps"
    assert "line 99" in text and "line 0\n" not in text
    assert max(len(line) for line in text.splitlines()) <= WIDTH + 2
    assert text.count("The answer") == 1 and "■ done" not in text  # said once, not echoed
    # 100 lines and the huge one: the tail's last TAIL, less the answer and the
    # status taken out of it (said below and above instead), are shown.
    assert f"  … {101 - (TAIL - 2)} earlier lines" in text.splitlines()
    assert len(text) < 4_000 and len(out.html()) < 6_000


def cell_displays(outputs: list[dict]) -> list[str]:
    """The texts the agent cell's display showed, first display and updates, in order."""
    return [
        o["data"]["text/plain"]
        for o in outputs
        if (o.get("transient") or {}).get("display_id")
        and str(o.get("data", {}).get("text/plain", "")).startswith("Agent ")
    ]


def test_checkpoints_update_the_cell_at_most_every_quarter_second(kernel_factory, scripted):
    """A step's checkpoints do not each update the cell's display (a millisecond of the
    step's thread apiece); what the last one left unshown shows within EVERY seconds."""
    from jupyter_agent.kernel.cell_output import EVERY

    steps = 60
    script = [tool(f"print('step', {i})") for i in range(steps)]
    script += [tool("import time; time.sleep(3)"), {"content": "All done."}]
    scripted.set_script(script)
    k = kernel_factory()
    run = k.start("%%agent --model scripted --name quick --max-steps 100\nWork.", cell_id="quick")
    k.wait_for(run, "time.sleep(3)", timeout=60)
    # The sleeping call's start is shown while it runs, without a write after it.
    during = cell_displays(run.outputs)[-1]
    assert "time.sleep(3)" in during.split("Full transcript")[0], during
    k.wait(run, timeout=60)
    assert run.status == "ok", run.text
    shown = cell_displays(run.outputs)
    assert "All done." in shown[-1] and "done after" in shown[-1].splitlines()[0]
    # Three checkpoints a step; each shown at once would be 3 × steps updates.
    assert len(shown) < steps, f"{len(shown)} updates for {3 * steps} checkpoints"
    assert EVERY <= 0.25


def test_one_thread_shows_what_throttled_updates_left_unshown(ip) -> None:
    """A cell's output starts one timer thread for its life, not one per throttled
    update; it shows the last write within EVERY seconds, and ends with the run."""
    import threading
    import time

    from jupyter_agent.kernel.cell_output import EVERY, LiveCell

    def timers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "jupyter-agent-cell"]

    cell = LiveCell("quick")
    cell.write("first\n")  # displayed at once
    for burst in range(3):
        for i in range(50):
            cell.write(f"line {burst}.{i}\n")
        assert len(timers()) == 1
        deadline = time.monotonic() + EVERY + 2.0
        while cell._dirty and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not cell._dirty, "the last write was not shown"
        assert f"line {burst}.49" in cell.text()
    cell.finish("done", 3, "All done.")
    deadline = time.monotonic() + 2.0
    while timers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert timers() == []
