"""A 1,000-checkpoint agent with many resumes, one of them after a SIGKILL.

Runs in an in-process IPython shell (fast) against a real store and the
scripted endpoint; ``--max-steps`` stops the agent every few dozen model calls
and re-running the cell resumes it. One segment runs in a child process that
is SIGKILLed halfway. Checked: the run ends with every step accounted for,
the store grows linearly with the number of steps, and resuming stays fast.
Figures go to the report; the time asserts are deliberately loose.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython

from jupyter_agent.loop.runs import load_state
from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer
from jupyter_agent.testing.wire import turn_of

from .harness import API_KEY, record, soak

CELL = "%%agent --model scripted --name longrun --max-steps {limit}\nCount for a long time."


def long_script(turns: int):  # type: ignore[no-untyped-def]
    def reply(body: dict) -> dict:
        turn = turn_of(body["messages"])  # counts the replies a compaction summarized
        if turn >= turns:
            return {"content": f"Counted to {turns}."}
        code = f"v{turn % 10} = {turn}\nprint('count', {turn})"
        return {
            "content": f"Step {turn}.",
            "tool_calls": [{"name": "python", "arguments": {"code": code}}],
        }

    return reply


CHILD = """
import os, sys
from IPython.testing.globalipapp import start_ipython
ip = start_ipython()
ip.run_line_magic("load_ext", "jupyter_agent")
ip.run_line_magic("config", "AgentMagics.store = {store!r}")
print("ready", flush=True)
ip.run_cell({cell!r})
"""


@pytest.mark.timeout(900)
def test_a_thousand_steps_with_resumes_stays_linear_and_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    turns = 1000 if soak() else 334  # 3 checkpoints per turn: >= 1,000 checkpoints
    limit = 40
    server = ScriptedServer(long_script(turns)).start()
    store_path = tmp_path / "long.duckdb"
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.chdir(tmp_path)
    shell = start_ipython() or get_ipython()
    shell.run_line_magic("load_ext", "jupyter_agent")
    shell.run_line_magic("config", f"AgentMagics.store = {str(store_path)!r}")
    store = Store(store_path)
    cell = CELL.format(limit=limit)
    samples: list[dict] = []
    killed_at = None
    started = time.monotonic()
    try:
        for segment in range(turns // limit + 3):
            if segment == 2:
                killed_at = kill_a_segment_midway(tmp_path, store_path, cell, server)
                continue
            t0 = time.perf_counter()
            result = shell.run_cell(cell)
            elapsed = time.perf_counter() - t0
            assert result.success, result.error_in_exec
            run = store.runs()[-1]
            t1 = time.perf_counter()
            state = load_state(store, run)
            fold_s = time.perf_counter() - t1
            sizes = store.sizes()
            samples.append(
                {
                    "checkpoints": state.step + 1,
                    "bytes": sizes["duckdb"] + sizes["journals"],
                    "data": stored_bytes(store),
                    "fold_s": fold_s,
                    "segment_s": elapsed,
                    "status": state.status,
                }
            )
            if state.status == "done":
                break
    finally:
        server.stop()
    total = time.monotonic() - started

    final = samples[-1]
    assert final["status"] == "done", samples[-1]
    state = load_state(store, store.runs()[-1], full=True)  # every message, not the view's
    assert len(store.runs()) == 1  # one run from the first step to the last
    tools = [m for m in state.messages if m.get("role") == "tool"]
    assert [int(t["content"].split()[1]) for t in tools] == list(range(turns))
    assert final["checkpoints"] >= 1000
    turn_requests = [r["turn"] for r in server.requests]
    repeated = len(turn_requests) - len(set(turn_requests))
    assert repeated <= 1  # only the turn in flight at the kill

    # Linear growth: what each checkpoint stores is a delta of constant size, so the
    # stored bytes per checkpoint do not grow with the run. The file itself grows in
    # DuckDB blocks and reuses freed ones; it only has to stay within a linear bound.
    per_step = [s["data"] / s["checkpoints"] for s in samples]
    assert max(per_step) < 1.5 * min(per_step), per_step
    assert all(s["bytes"] < 2 * 2**20 + 8192 * s["checkpoints"] for s in samples), samples
    # Resuming = folding from the latest compaction's snapshot; well under 2 s.
    assert max(s["fold_s"] for s in samples) < 2.0, samples
    record(
        "long",
        f"{final['checkpoints']}-checkpoint run",
        injection=f"{turns} model turns with a python call each; --max-steps {limit} "
        f"({len(samples) - 1} resumes at the limit) and one SIGKILL of a child process "
        f"mid-run (at checkpoint {killed_at})",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        checkpoints=final["checkpoints"],
        store_bytes=final["bytes"],
        stored_bytes_per_checkpoint=[
            (s["checkpoints"], round(s["data"] / s["checkpoints"])) for s in samples
        ],
        file_bytes=[(s["checkpoints"], s["bytes"]) for s in samples],
        fold_seconds=[(s["checkpoints"], round(s["fold_s"], 3)) for s in samples],
        segment_seconds=[round(s["segment_s"], 2) for s in samples],
        seconds=round(total, 1),
    )


def stored_bytes(store: Store) -> int:
    """Bytes of checkpoint data in the store: payloads, summaries, info, blobs."""
    total = 0
    for run in store.runs():
        for cp in store.checkpoints(run.run_id):
            # size: the payload and the blobs written with it.
            total += cp.size + len(cp.summary) + len(json.dumps(cp.info))
    return total


def kill_a_segment_midway(tmp: Path, store_path: Path, cell: str, server: ScriptedServer) -> int:
    """Run one segment in a child process and SIGKILL it after a few dozen checkpoints."""
    code = textwrap.dedent(CHILD).format(store=str(store_path), cell=cell.replace("40", "1000"))
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
    before = len(server.requests)
    deadline = time.monotonic() + 60
    while len(server.requests) < before + 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    store = Store(store_path)
    return load_state(store, store.runs()[-1]).step
