"""The store on real DuckDB files and journals."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import threading

import duckdb
import pytest

from jupyter_agent import journal
from jupyter_agent.store import AgentBusy, CheckpointRow, RunRow, Store, StoreError


def run_row(run_id: str = "r1", agent: str = "a") -> RunRow:
    return RunRow(run_id, "/nb.ipynb", agent, None, "task", "h", "m", None, None, 1.0, {})


def cp(run_id: str, step: int, status: str = "running") -> CheckpointRow:
    return CheckpointRow(run_id, step, "model", status, f"step {step}", 1.0 + step, 1.0, 3, 10, {})


def test_journal_framing_ignores_a_torn_tail():
    records = [journal.Record("runs", {"x": i}, b"p" * i) for i in range(3)]
    data = b"".join(journal.encode(r) for r in records)
    decoded, end = journal.decode_all(data + journal.encode(records[0])[:-3])
    assert [r.row for r in decoded] == [{"x": 0}, {"x": 1}, {"x": 2}]
    assert end == len(data)
    damaged = bytearray(data)
    damaged[-1] ^= 0xFF  # flip a bit in the last record
    assert len(journal.decode_all(bytes(damaged))[0]) == 2


def test_writes_are_readable_while_the_run_is_live_and_merged_after(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    writer = store.writer("r1")
    writer.put_run(run_row())
    writer.put_checkpoint(cp("r1", 0), b"payload0")
    assert store.live_runs() == {"r1"}
    assert [c.step for c in store.checkpoints("r1")] == [0]
    writer.put_checkpoint(cp("r1", 1), b"payload1")
    assert [c.step for c in store.checkpoints("r1")] == [0, 1]  # merged from the last offset
    writer.close()
    assert store.live_runs() == set()
    assert not list(store.journal_dir.glob("*.jnl"))
    assert [bytes(p) for _, p in store.payloads([("r1", None)])] == [b"payload0", b"payload1"]


def test_a_journal_left_by_a_killed_process_is_recovered(tmp_path):
    path = tmp_path / "s.duckdb"
    code = textwrap.dedent(
        f"""
        import os
        from jupyter_agent.store import Store, RunRow, CheckpointRow
        w = Store({str(path)!r}).writer("dead")
        w.put_run(RunRow("dead", "/nb", "a", None, "t", "h", "m", None, None, 1.0, {{}}))
        w.put_checkpoint(CheckpointRow("dead", 0, "start", "running", "s", 1.0, 0, 0, 1, {{}}), b"x")
        os._exit(0)  # no close, no merge: like a SIGKILL after the write
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    store = Store(path)
    assert store.live_runs() == set()
    assert [r.run_id for r in store.runs()] == ["dead"]
    assert not list(store.journal_dir.glob("*.jnl"))  # folded in and removed


def test_files_are_private(tmp_path):
    store = Store(tmp_path / "new" / "s.duckdb")
    w = store.writer("r1")
    w.put_run(run_row())
    journal_file = next(store.journal_dir.glob("*.jnl"))
    w.close()
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.journal_dir).st_mode) == 0o700
    assert not journal_file.exists()


def test_a_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "s.duckdb"
    Store(path).flush()
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer jupyter-agent"):
        Store(path).runs()
    assert path.read_bytes() == before


def test_a_corrupted_store_is_reported_and_left_alone(tmp_path):
    path = tmp_path / "s.duckdb"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="left untouched"):
        Store(path).runs()
    assert path.read_bytes() == b"this is not a database" * 100


def test_readers_wait_while_another_process_holds_the_file(tmp_path):
    path = tmp_path / "s.duckdb"
    Store(path).flush()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('held', flush=True); time.sleep(1.0)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    assert Store(path, busy_timeout=20).runs() == []  # waited for the holder, no lock error
    holder.wait()


def test_delete_removes_runs_and_unreferenced_blobs(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    w = store.writer("r1")
    w.put_run(run_row())
    w.put_blob("h1", b"value")
    row = cp("r1", 0)
    row.info = {"blobs": ["h1"]}
    w.put_checkpoint(row, b"")
    w.close()
    assert store.blobs(["h1"]) == {"h1": b"value"}
    store.delete_runs(["r1"])
    assert store.runs() == [] and store.blobs(["h1"]) == {}


def hold_agent_lock(path, agent: str, then: str = "") -> subprocess.Popen:
    """A process that takes the agent lock, says so, then runs ``then`` and sleeps."""
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from jupyter_agent.store import Store
        with Store({str(path)!r}).agent_lock("/nb.ipynb", {agent!r}):
            {then or "pass"}
            print("held", flush=True)
            time.sleep(30)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_one_writer_per_agent_across_processes(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    holder = hold_agent_lock(store.path, "a")
    try:
        busy = rf"running in another kernel \(pid {holder.pid}\)"
        with pytest.raises(AgentBusy, match=busy), store.agent_lock("/nb.ipynb", "a"):
            pytest.fail("two holders")
        with store.agent_lock("/nb.ipynb", "b"):  # another agent is not affected
            pass
    finally:
        holder.kill()
        holder.wait()
    with store.agent_lock("/nb.ipynb", "a"):  # released by the holder's death
        with store.agent_lock("/nb.ipynb", "a"):  # re-entrant in the holding thread
            pass
        errors = []

        def other_thread():
            try:
                with store.agent_lock("/nb.ipynb", "a"):
                    errors.append("two holders")
            except AgentBusy as exc:
                errors.append(str(exc))

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert errors and "already running in this kernel" in errors[0]
    with store.agent_lock("/nb.ipynb", "a"):  # released after the outer hold ended
        pass


def test_a_forked_child_does_not_keep_the_agent_lock(tmp_path):
    path = tmp_path / "s.duckdb"
    # The holder forks a worker that outlives it, as agent code may.
    then = "if os.fork() == 0:\n                time.sleep(5)\n                os._exit(0)"
    holder = hold_agent_lock(path, "a", then)
    holder.kill()
    holder.wait()
    with Store(path).agent_lock("/nb.ipynb", "a"):
        pass
