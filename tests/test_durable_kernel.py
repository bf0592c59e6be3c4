"""End-to-end durability in real kernels: kill, restart, re-run the cell.

Each test drives ipykernel through jupyter_client with the cell id in the
execute request's metadata, as JupyterLab does, and counts model requests in
the scripted server's log and tool side effects in a file.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.store.open import open_store
from jupyter_agent.testing import ScriptedServer

from .conftest import BOTH_BACKENDS

CELL = "%%agent --model scripted\nBuild a, b and c step by step."


def tool(code: str) -> dict:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}]}


def counting_script(log: Path, slow_step: int | None = None) -> list[dict]:
    """Three tool steps that each append a line to ``log`` (to count executions)."""
    codes = [
        "a = 1",
        "b = a + 1",
        "c = a + b",
    ]
    script = []
    for i, code in enumerate(codes):
        pause = "import time; time.sleep(5)\n" if i == slow_step else ""
        script.append(
            tool(
                f"with open({str(log)!r}, 'a') as f: f.write('step{i}\\n')\n{pause}{code}\nprint('ran step{i}')"
            )
        )
    script.append({"content": "Finished: c == 3."})
    return script


@BOTH_BACKENDS
def test_kill_during_tool_resumes_where_it_stopped(
    kernel_factory, scripted: ScriptedServer, tmp_path, store_spec
):
    log = tmp_path / "effects.log"
    scripted.set_script(counting_script(log, slow_step=1))
    k1 = kernel_factory()
    run = k1.start(CELL, cell_id="cell-a")
    k1.wait_for(run, "time.sleep(5)")
    deadline = time.monotonic() + 20
    while log.read_text().count("step1") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    store = open_store(store_spec)
    (row,) = store.runs()
    assert store.live_runs() == {row.run_id}  # its kernel holds the run's lock
    k1.kill()
    assert scripted.turns_requested() == [0, 1]
    deadline = time.monotonic() + 10
    while store.live_runs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.live_runs() == set()  # the dead kernel released it

    k2 = kernel_factory()
    scripted.set_script(counting_script(log))  # the server heals: no more sleeping
    result = k2.run(CELL, cell_id="cell-a")
    assert result.status == "ok", result.text
    assert "↻ resuming after step" in result.text
    assert "Variables restored from the store: a" in result.text
    assert "was running when the agent stopped; running it again" in result.text
    assert "Finished: c == 3." in result.text
    # No completed model call was sent twice: turns 0 and 1 were answered before the kill.
    assert scripted.turns_requested() == [0, 1, 2, 3]
    # step0 ran once; step1 was in flight and ran again (at-least-once); step2 once.
    assert log.read_text().splitlines() == ["step0", "step1", "step1", "step2"]
    assert k2.run("print(a, b, c)").stdout.strip() == "1 2 3"
    assert [r.run_id for r in store.runs()] == [row.run_id]  # resumed, not restarted
    listing = k2.run("%agent list").stdout
    assert "cell-cell-a" in listing and "done" in listing


@contextlib.contextmanager
def killed_while_asking(
    kernel_factory, script: list[dict], cell_id: str
) -> Iterator[tuple[ScriptedServer, Any, Any]]:
    """Run CELL until the model is asked for turn 2 (``script``'s, held back 30 s), kill the
    kernel, and run the cell again in a new one: the server, that kernel and its result."""
    with ScriptedServer([*script[:2], {**script[2], "delay": 30}, *script[3:]]) as slow:
        k1 = kernel_factory(OPENAI_BASE_URL=slow.url)
        run = k1.start(CELL, cell_id=cell_id)
        k1.wait_for(run, "ran step1")
        deadline = time.monotonic() + 20
        while 2 not in slow.turns_requested() and time.monotonic() < deadline:
            time.sleep(0.05)
        k1.kill()
        slow.set_script(script)
        k2 = kernel_factory(OPENAI_BASE_URL=slow.url)
        yield slow, k2, k2.run(CELL, cell_id=cell_id)


@BOTH_BACKENDS
def test_kill_while_model_streams_reissues_only_that_call(kernel_factory, tmp_path, backend):
    log = tmp_path / "effects.log"
    with killed_while_asking(kernel_factory, counting_script(log), "cell-b") as (slow, _, result):
        assert result.status == "ok", result.text
        assert "Finished: c == 3." in result.text
        # Only the call in flight (turn 2) was issued again.
        assert slow.turns_requested() == [0, 1, 2, 2, 3]
        assert log.read_text().splitlines() == ["step0", "step1", "step2"]


@BOTH_BACKENDS
def test_finished_cell_restores_without_calling_the_model(
    kernel_factory, scripted, tmp_path, backend
):
    scripted.set_script(counting_script(tmp_path / "effects.log"))
    k1 = kernel_factory()
    first = k1.run(CELL, cell_id="cell-c")
    assert "Finished: c == 3." in first.text
    k1.kill()
    requests_before = len(scripted.requests)

    k2 = kernel_factory()
    again = k2.run(CELL, cell_id="cell-c")
    assert again.status == "ok", again.text
    assert "restored from the store without calling the model" in again.text
    assert "Finished: c == 3." in again.text
    assert len(scripted.requests) == requests_before
    assert k2.run("print(a + b + c)").stdout.strip() == "6"


def test_changed_prompt_or_restart_starts_a_new_run(kernel_factory, scripted, tmp_path, store_path):
    scripted.set_script(counting_script(tmp_path / "effects.log"))
    k = kernel_factory()
    k.run(CELL, cell_id="cell-d")
    k.run(CELL + " Again.", cell_id="cell-d")
    restarted = k.run(CELL.replace("scripted", "scripted --restart"), cell_id="cell-d")
    assert "Finished" in restarted.text
    k.run("%agent list")
    listing = k.run("%agent list").stdout
    assert "cell-cell-d" in listing and "done" in listing
    k.shutdown()
    runs = len(Store(store_path).runs(agent="cell-cell-d"))
    assert runs == 3  # earlier runs stay in the store


def in_slow_call(kernel_factory, scripted, log, cell_id: str):
    """A kernel whose agent is inside its second python call (which sleeps 5 s)."""
    scripted.set_script(counting_script(log, slow_step=1))
    k = kernel_factory()
    run = k.start(CELL, cell_id=cell_id)
    k.wait_for(run, "time.sleep(5)")
    time.sleep(0.5)
    return k, run


@BOTH_BACKENDS
def test_interrupt_stops_cleanly_and_resumes(kernel_factory, scripted, tmp_path, backend):
    """An interrupted call is not a result: it is in flight, and runs again on resume."""
    log = tmp_path / "effects.log"
    k, run = in_slow_call(kernel_factory, scripted, log, "cell-e")
    k.interrupt()
    k.wait(run, timeout=30)
    assert "interrupted" in run.text and "runs again" in run.text, run.text
    assert run.error is None  # stopped at a checkpoint, not a crash
    listing = k.run("%agent list").stdout
    assert "interrupted at step" in listing
    assert k.run("print('b' in dir())").stdout.strip() == "False"

    scripted.set_script(counting_script(log))
    resumed = k.run(CELL, cell_id="cell-e")
    assert "Finished: c == 3." in resumed.text, resumed.text
    assert "running it again" in resumed.text
    assert k.run("print(a, b, c)").stdout.strip() == "1 2 3"
    # The model never saw an interruption as a result, and no step was asked twice.
    assert scripted.turns_requested() == [0, 1, 2, 3]
    tool_results = [
        m["content"]
        for r in scripted.requests
        for m in r["body"]["messages"]
        if m["role"] == "tool"
    ]
    assert not any("KeyboardInterrupt" in t for t in tool_results)
    assert log.read_text().count("step1") == 2  # started, interrupted, run again


@BOTH_BACKENDS
def test_restart_kernel_during_a_tool_call_runs_it_again(
    kernel_factory, scripted, tmp_path, backend
):
    """JupyterLab's Restart Kernel interrupts first; the call must still count as in flight."""
    log = tmp_path / "effects.log"
    k, _ = in_slow_call(kernel_factory, scripted, log, "cell-r")
    k.restart()
    k.run("%load_ext jupyter_agent\n%config AgentMagics.retry_backoff = 0.05")
    scripted.set_script(counting_script(log))
    resumed = k.run(CELL, cell_id="cell-r")
    assert resumed.status == "ok", resumed.text
    assert "Finished: c == 3." in resumed.text
    assert k.run("print(a, b, c)").stdout.strip() == "1 2 3"
    assert log.read_text().count("step1") == 2


def test_two_kernels_run_agents_on_one_store_at_once(kernel_factory, store_path, tmp_path):
    def script(tag: str) -> list[dict]:
        steps = [tool(f"{tag}_{i} = {i}\nimport time; time.sleep(0.2)") for i in range(6)]
        return [*steps, {"content": f"{tag} finished"}]

    with (
        ScriptedServer(script("x"), chunk_delay=0.01) as sx,
        ScriptedServer(script("y"), chunk_delay=0.01) as sy,
    ):
        kx = kernel_factory(OPENAI_BASE_URL=sx.url)
        ky = kernel_factory(OPENAI_BASE_URL=sy.url)
        rx = kx.start("%%agent --model scripted --name ax\nx task", cell_id="cx")
        ry = ky.start("%%agent --model scripted --name ay\ny task", cell_id="cy")
        kx.wait(rx, 120)
        ky.wait(ry, 120)
    for r, tag in ((rx, "x"), (ry, "y")):
        assert r.status == "ok", r.text
        assert f"{tag} finished" in r.text
        assert "lock" not in r.text.lower()
    kx.shutdown()
    ky.shutdown()
    store = Store(store_path)
    runs = store.runs()
    stats = store.run_stats([r.run_id for r in runs])
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.agent] = counts.get(r.agent, 0) + stats[r.run_id].checkpoints
    # start + 6 x (model, tool_call, tool_result) + final model reply
    assert counts == {"ax": 20, "ay": 20}


def test_extension_autoloads_from_ipython_config(agent_env, tmp_path):
    from .kernels import Kernel

    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text(
        "c.InteractiveShellApp.extensions = ['jupyter_agent']\nc.AgentMagics.model = 'offline'\n"
    )
    kernel = Kernel({**agent_env, "IPYTHONDIR": str(tmp_path / "ipython")}, cwd=tmp_path)
    try:
        result = kernel.run("%%agent --name auto\n```python\nanswer = 6 * 7\n```", cell_id="auto")
        assert result.status == "ok", result.text
        assert "■ done" in result.text
        assert kernel.run("print(answer)").stdout.strip() == "42"
    finally:
        kernel.shutdown()


def test_kill_before_a_large_value_is_saved_runs_its_step_again(kernel_factory, tmp_path):
    """A step whose large value is saved while the model is asked is durable only once it is.

    Killed in that window, the step is in flight: the resume runs it again on the
    value as the step before left it, never restoring a stale one.
    """
    log = tmp_path / "effects.log"
    write = f"with open({str(log)!r}, 'a') as f: f.write('step{{}}\\n')\n"
    script = [
        tool(write.format(0) + "big = bytearray(9 * 2**20)"),
        tool(write.format(1) + "big[0] += 7\nprint('ran step1', big[0])"),
        {"content": "Finished: big is ready."},
    ]
    with killed_while_asking(kernel_factory, script, "cell-big") as (slow, k2, result):
        assert result.status == "ok", result.text
        assert "Variables restored from the store: big" in result.text
        assert "was running when the agent stopped; running it again" in result.text
        assert "Finished: big is ready." in result.text
        assert slow.turns_requested() == [0, 1, 2, 2]
        assert log.read_text().splitlines() == ["step0", "step1", "step1"]
        # Step 1 ran again on big as step 0 saved it: 7, not 14.
        assert k2.run("print(big[0], len(big))").stdout.strip() == f"7 {9 * 2**20}"
