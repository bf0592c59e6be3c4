"""An agent's latest run and state, kept beside the store and read without DuckDB.

The file is a cache: whole and current, it gives what folding the store would;
torn, damaged or contradicted by anything written since, it is ignored.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from jupyter_agent.core.state import fold
from jupyter_agent.loop.runs import load_state, saved_latest
from jupyter_agent.store.api import CheckpointRow
from jupyter_agent.store.duckdb.store import DuckDBStore
from jupyter_agent.testing import ScriptedServer

from .conftest import API_KEY
from .test_durable_kernel import CELL, counting_script


def run_agent(ip, scripted: ScriptedServer, store_path: Path) -> tuple[DuckDBStore, Path]:
    scripted.set_script(
        [
            {"tool_calls": [{"name": "python", "arguments": {"code": "x = 41"}}]},
            {"tool_calls": [{"name": "python", "arguments": {"code": _PRINT_KEY}}]},
            {"content": "Done."},
        ]
    )
    ip.run_cell_magic("agent", "--model scripted --name kept", "Set x, then show the key.")
    store = DuckDBStore(store_path)
    (path,) = store.journal_dir.glob("*.state")
    return store, path


_PRINT_KEY = "import os; print(os.environ['OPENAI_API_KEY'])"


def current(store: DuckDBStore):
    (run,) = store.runs()
    return run, saved_latest(store, run.notebook, run.agent)


def test_a_finished_execution_leaves_the_state_a_fold_gives(ip, scripted, store_path):
    store, path = run_agent(ip, scripted, store_path)
    run, saved = current(store)
    assert saved is not None
    assert saved[0] == run
    assert saved[1] == load_state(store, run)
    assert saved[1].status == "done" and saved[1].messages[-1]["content"] == "Done."
    assert API_KEY.encode() not in path.read_bytes()  # redacted, as the checkpoints are
    assert "[REDACTED" in saved[1].messages[-2]["content"]  # the output that printed it


def test_a_torn_or_damaged_file_is_ignored(ip, scripted, store_path):
    store, path = run_agent(ip, scripted, store_path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # a write cut short
    assert current(store)[1] is None
    damaged = bytearray(whole)
    damaged[len(whole) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    assert current(store)[1] is None
    path.write_bytes(whole)
    assert current(store)[1] is not None


def test_a_later_write_makes_it_stale_and_the_store_answers(ip, scripted, store_path):
    store, _ = run_agent(ip, scripted, store_path)
    run, saved = current(store)
    assert saved is not None
    step = saved[1].step + 1
    writer = store.writer(run.run_id)  # a later execution, killed before it ended
    writer.put_checkpoint(
        CheckpointRow(run.run_id, step, "resume", "running", "again", 9.0, 0, 0, 1, {}), b"{}"
    )
    assert current(store)[1] is None  # its journal has what the file has not seen
    writer.close()  # folded in: DuckDB changed since the file was written
    assert current(store)[1] is None
    assert load_state(store, run).step == step


def test_deleting_the_agent_deletes_its_state_file(ip, scripted, store_path):
    store, path = run_agent(ip, scripted, store_path)
    (run,) = store.runs()
    store.delete_agent(run.notebook, run.agent)
    assert not path.exists()  # its messages are gone from the disk too


def _long(steps: int) -> list[dict]:
    script = [
        {"tool_calls": [{"name": "python", "arguments": {"code": f"v{i} = {i}\nprint('x' * 880)"}}]}
        for i in range(steps)
    ]
    return [*script, {"content": f"All {steps} steps done."}]


def test_a_compacted_run_keeps_only_what_a_resume_reads(ip, scripted, store_path):
    scripted.context_window = 8_000
    scripted.set_script(_long(70))
    line = "--model scripted --name compacted --context-window 8000 --max-steps"
    ip.run_cell_magic("agent", f"{line} 60", "Work.")  # summarizes, then stops at the limit
    store = DuckDBStore(store_path)
    run, saved = current(store)
    assert saved is not None and saved[1].compaction.get("upto")  # a summary: a snapshot
    assert saved[1] == load_state(store, run)  # the snapshot's messages, not the whole history
    (path,) = store.journal_dir.glob("*.state")
    full = load_state(store, run, full=True)
    assert path.stat().st_size < len(json.dumps(full.messages)) / 2
    ip.run_cell_magic("agent", f"{line} 90", "Work.")  # resumed from it: a state with placeholders
    store = DuckDBStore(store_path)
    run, saved = current(store)
    assert saved is not None and saved[1].status == "done"
    assert saved[1] == load_state(store, run)
    for name in [n for n in ip.user_ns if n.startswith("v") and n[1:].isdigit()]:
        del ip.user_ns[name]


# -- on the resume path ------------------------------------------------------------------


def test_a_resume_with_a_current_file_reads_no_checkpoint(ip, scripted, store_path, monkeypatch):
    scripted.set_script(
        [
            {"tool_calls": [{"name": "python", "arguments": {"code": "y = 1"}}]},
            {"tool_calls": [{"name": "python", "arguments": {"code": "y += 1"}}]},
            {"content": "Done."},
        ]
    )
    line = "--model scripted --name quick --max-steps"
    ip.run_cell_magic("agent", f"{line} 1", "Count up.")
    store = DuckDBStore(store_path)
    (run,) = store.runs()
    folded = fold(store.payloads([(run.run_id, None)]))

    def no_reads(*args, **kwargs):
        raise AssertionError("the checkpoints were read: the state file was not used")

    monkeypatch.setattr(DuckDBStore, "payloads", no_reads)
    assert load_state(store, run) == folded  # the whole RunState, as the fold gives it
    ip.run_cell_magic("agent", f"{line} 5", "Count up.")  # the resume, from the file alone
    monkeypatch.undo()
    store = DuckDBStore(store_path)
    state = load_state(store, run, full=True)
    assert state.status == "done" and ip.user_ns["y"] == 2
    assert scripted.turns_requested() == [0, 1, 2]  # nothing asked twice
    del ip.user_ns["y"]


@pytest.mark.parametrize("damage", ["stale", "torn"])
def test_a_resume_after_a_kill_goes_to_the_journal_whatever_the_file_says(
    kernel_factory, scripted: ScriptedServer, tmp_path, store_path, damage
):
    log = tmp_path / "effects.log"
    script = counting_script(log, slow_step=1)
    scripted.set_script(script)
    k1 = kernel_factory()
    done = k1.run(CELL.replace("scripted", "scripted --max-steps 1"), cell_id="c")
    assert "step limit" in done.text, done.text
    (path,) = DuckDBStore(store_path).journal_dir.glob("*.state")
    written = path.read_bytes()  # the state after step 0
    run = k1.start(CELL, cell_id="c")  # a later execution, killed in its tool call
    k1.wait_for(run, "time.sleep(5)")
    deadline = time.monotonic() + 20
    while log.read_text().count("step1") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    k1.kill()
    assert path.read_bytes() == written  # never rewritten: the execution did not end
    if damage == "torn":
        path.write_bytes(written[: len(written) // 2])
    k2 = kernel_factory()
    scripted.set_script(counting_script(log))
    result = k2.run(CELL, cell_id="c")
    assert "was running when the agent stopped; running it again" in result.text, result.text
    assert "Finished: c == 3." in result.text
    assert scripted.turns_requested() == [0, 1, 2, 3]  # nothing the journal held was lost
    assert log.read_text().splitlines() == ["step0", "step1", "step1", "step2"]
    store = DuckDBStore(store_path)
    (row,) = store.runs()
    saved = saved_latest(store, row.notebook, row.agent)
    assert saved is not None and saved[1] == fold(store.payloads([(row.run_id, None)]))
