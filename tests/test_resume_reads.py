"""What a cell reads before its first model request comes from small files, not DuckDB.

A resume reads its run, its last settings, its state and its timeline's tail from
files kept beside the store; a new agent learns it has no run yet from the store's
summary. Each file is trusted only while DuckDB and the journals are as they were
when it was written: these tests compare every answer with DuckDB's, count DuckDB
opens, and check that no run written since can be missed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jupyter_agent.kernel.runner import last_settings
from jupyter_agent.loop.runs import load_state, saved_settings
from jupyter_agent.store.api import CheckpointRow, RunRow
from jupyter_agent.store.duckdb.store import DuckDBStore
from jupyter_agent.store.sql import SQLStore
from jupyter_agent.testing import ScriptedServer
from jupyter_agent.views.timeline import Timeline

LINE = "--model scripted --name reads --max-steps"


def _script(steps: int) -> list[dict]:
    calls = [
        {"tool_calls": [{"name": "python", "arguments": {"code": f"print({i})"}}]}
        for i in range(steps)
    ]
    return [*calls, {"content": "Done."}]


def _after_cell(store_path: Path) -> RunRow:
    """What a cell's end does in a kernel: its timeline reads the store again."""
    store = DuckDBStore(store_path)
    (run,) = store.runs()
    Timeline(store, run.notebook, run.agent).load()
    return run


def _timeline_view(t: Timeline) -> tuple:
    return (t.runs, t._last, t.snapshot(), t.summary(), t.tree(), t.known_steps(), t.total)


def test_a_resume_reads_its_run_settings_state_and_timeline_without_duckdb(
    ip, scripted: ScriptedServer, store_path: Path
):
    scripted.set_script(_script(6))
    ip.run_cell_magic("agent", f"{LINE} 2", "Print numbers.")
    run = _after_cell(store_path)
    fresh = DuckDBStore(store_path)  # a new kernel's
    # A first execution: the run's own settings, as the store's checkpoints give them.
    assert (
        saved_settings(fresh, run)
        == last_settings(fresh, run, rows=[])
        == {
            "model": run.model,
            "approve": False,
        }
    )
    assert fresh.opens == 0
    DuckDBStore(store_path).remember_window("scripted", 31_000)
    ip.run_cell_magic("agent", f"{LINE} 4", "Print numbers.")  # a resume: it records settings
    run = _after_cell(store_path)
    DuckDBStore(store_path).flush()  # a connection that changes nothing: the summary is kept

    fresh = DuckDBStore(store_path)
    answers = {
        "runs": fresh.runs(run.notebook, run.agent),
        "settings": saved_settings(fresh, run),
        "store_id": fresh.store_id(),
        "notebook": fresh.resolve_notebook(run.notebook),
        "window": fresh.learnt_window("scripted"),
        "no window": fresh.learnt_window("other"),
        "state": load_state(fresh, run),
    }
    kept = Timeline(fresh, run.notebook, run.agent)
    kept.load()
    assert fresh.opens == 0  # every answer above came from the files
    resumes = fresh.checkpoints(run.run_id, kind="resume")
    assert fresh.opens == 1
    assert resumes and answers["settings"] == last_settings(fresh, run, rows=resumes)
    assert answers["settings"]["model"] == resumes[-1].info["model"]
    assert answers["runs"] == SQLStore.runs(fresh, run.notebook, run.agent) == [run]
    assert answers["store_id"] == SQLStore.store_id(fresh) is not None
    assert answers["notebook"] == SQLStore.resolve_notebook(fresh, run.notebook)
    assert answers["window"] == SQLStore.learnt_window(fresh, "scripted") == 31_000
    assert answers["no window"] is None
    assert answers["state"] == load_state(fresh, run, full=False)
    for path in fresh.journal_dir.glob("*.timeline"):
        path.unlink()
    read = Timeline(fresh, run.notebook, run.agent)
    read.load()  # from DuckDB
    assert _timeline_view(kept) == _timeline_view(read)
    assert kept.total == len(fresh.checkpoints(run.run_id)) and kept.history[-1]["kind"] == "limit"


def test_a_notebook_moved_since_a_summary_makes_it_stale(ip, scripted, store_path: Path):
    scripted.set_script(_script(1))
    ip.run_cell_magic("agent", f"{LINE} 1", "Print numbers.")
    run = _after_cell(store_path)
    store = DuckDBStore(store_path)
    before = time.time()
    store.move_notebook(run.notebook, "/elsewhere/moved.ipynb")
    store.flush()  # the summary again, with the move
    fresh = DuckDBStore(store_path)
    assert fresh.resolve_notebook(run.notebook, since=before) == "/elsewhere/moved.ipynb"
    assert fresh.resolve_notebook(run.notebook, since=time.time()) == run.notebook
    assert fresh.opens == 0
    assert fresh.runs("/elsewhere/moved.ipynb", run.agent)[0].run_id == run.run_id


# -- a new agent ----------------------------------------------------------------------


def _new_agent_store(ip, scripted, store_path: Path) -> tuple[DuckDBStore, RunRow]:
    """A store with one finished agent, and a fresh handle that has read its summary."""
    scripted.set_script(_script(1))
    ip.run_cell_magic("agent", f"{LINE} 3", "Print numbers.")
    run = _after_cell(store_path)
    fresh = DuckDBStore(store_path)
    assert fresh.runs(run.notebook, "newcomer") == []
    assert fresh.opens == 0  # a new agent learnt it has no run without DuckDB
    return fresh, run


def _row(run_id: str, step: int) -> CheckpointRow:
    return CheckpointRow(run_id, step, "start", "running", "began", time.time(), 0.0, 0, 1, {})


def _new_run(old: RunRow, agent: str) -> RunRow:
    return RunRow(
        f"{agent}-run", old.notebook, agent, None, "Hi.", "h", "scripted", None, None, 1.0, {}
    )


def test_a_run_another_kernel_wrote_is_never_missed(ip, scripted, store_path: Path):
    fresh, old = _new_agent_store(ip, scripted, store_path)
    other = DuckDBStore(store_path)  # another kernel's
    writer = other.writer("newcomer-run")
    writer.put_run(_new_run(old, "newcomer"))
    writer.put_checkpoint(_row("newcomer-run", 0), b"{}")
    assert [r.run_id for r in fresh.runs(old.notebook, "newcomer")] == ["newcomer-run"]  # live
    writer.close()  # folded into DuckDB
    assert [r.run_id for r in fresh.runs(old.notebook, "newcomer")] == ["newcomer-run"]
    DuckDBStore(store_path).flush()  # the summary written again knows it
    assert [r.run_id for r in DuckDBStore(store_path).runs(old.notebook, "newcomer")] == [
        "newcomer-run"
    ]


_KILLED_WRITER = """
import os, signal, sys, time
from jupyter_agent.store.api import CheckpointRow, RunRow
from jupyter_agent.store.duckdb.store import DuckDBStore
store = DuckDBStore(sys.argv[1])
writer = store.writer("killed-run")
writer.put_run(RunRow("killed-run", sys.argv[2], "killed", None, "Hi.", "h", "scripted",
                      None, None, 1.0, {}))
writer.put_checkpoint(CheckpointRow("killed-run", 0, "start", "running", "began", time.time(),
                                    0.0, 0, 1, {}), b"{}")
os.kill(os.getpid(), signal.SIGKILL)
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by a new interpreter (a process of its own) that imports this checkout."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_a_run_only_in_a_killed_kernels_journal_is_never_missed(ip, scripted, store_path):
    fresh, old = _new_agent_store(ip, scripted, store_path)
    done = _python(_KILLED_WRITER, str(store_path), old.notebook)
    assert done.returncode == -signal.SIGKILL
    assert list(fresh.journal_dir.glob("*.jnl"))  # only in its journal
    assert [r.run_id for r in fresh.runs(old.notebook, "killed")] == ["killed-run"]
    # A journal also makes the agent's state and timeline files stale.
    assert fresh.saved_timeline(old.notebook, old.agent) is None
    assert fresh.saved_latest(old.notebook, old.agent) is None


def test_a_deleted_agent_leaves_no_summary_or_timeline_naming_it(ip, scripted, store_path):
    fresh, old = _new_agent_store(ip, scripted, store_path)
    assert (
        list(fresh.journal_dir.glob("*.timeline"))
        and (fresh.journal_dir / "store.summary").exists()
    )
    fresh.delete_agent(old.notebook, old.agent)
    assert not list(fresh.journal_dir.glob("*.timeline"))
    assert DuckDBStore(store_path).runs(old.notebook, old.agent) == []


def test_a_postgresql_store_keeps_no_files_and_answers_from_its_tables(pg_url):
    from jupyter_agent.store.open import open_store

    store = open_store(pg_url)
    assert getattr(store, "saved_timeline", None) is None  # the timeline reads the database
    run = RunRow("pg-run", "/nb.ipynb", "pg", None, "Hi.", "h", "scripted", None, None, 1.0, {})
    assert store.runs("/nb.ipynb", "pg") == []
    writer = store.writer("pg-run")
    writer.put_run(run)
    writer.put_checkpoint(_row("pg-run", 0), b"{}")
    writer.close()
    assert [r.run_id for r in store.runs("/nb.ipynb", "pg")] == ["pg-run"]
    timeline = Timeline(store, "/nb.ipynb", "pg")
    timeline.load()
    assert timeline.selected == "pg-run" and timeline.total == 1


_NEW_AGENT_READS = """
import sys
from jupyter_agent.store.open import open_store
store = open_store(sys.argv[1])
assert store.runs(sys.argv[2], "newcomer") == []
assert store.resolve_notebook(sys.argv[2]) == sys.argv[2]
assert store.store_id() and store.learnt_window("scripted") is None
print(store.opens, "duckdb" in sys.modules)
"""


def test_a_new_agent_reads_nothing_of_duckdb_nor_imports_it(ip, scripted, store_path):
    _, old = _new_agent_store(ip, scripted, store_path)
    done = _python(_NEW_AGENT_READS, str(store_path), old.notebook)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "False"]


_WATCH = """
import sys as _w_sys, time as _w_time
import jupyter_agent.model.chat as _w_chat, jupyter_agent.store.duckdb.files as _w_files
_w = {"opens": [], "asked": None, "duckdb": None}
_w_open, _w_complete = _w_files.DuckDBFile._open, _w_chat.ChatCompletionsClient.complete
def _w_opened(self):
    _w["opens"].append(_w_time.perf_counter())
    return _w_open(self)
def _w_asked(self, *args, **kwargs):
    if _w["asked"] is None:
        _w["asked"], _w["duckdb"] = _w_time.perf_counter(), "duckdb" in _w_sys.modules
    return _w_complete(self, *args, **kwargs)
_w_files.DuckDBFile._open, _w_chat.ChatCompletionsClient.complete = _w_opened, _w_asked
def _w_report():
    report = (len([t for t in _w["opens"] if t < _w["asked"]]), _w["duckdb"], len(_w["opens"]))
    _w.update(opens=[], asked=None, duckdb=None)
    return report
"""


def test_in_a_new_kernel_the_first_model_request_comes_before_duckdb(
    kernel_factory, scripted: ScriptedServer
):
    """A resume with current files, then a new agent: neither opens nor imports DuckDB
    before its first model request; the store is read as each execution ends."""
    scripted.set_script(_script(3))
    k1 = kernel_factory()
    cell = "%%agent --model scripted --max-steps {}\nPrint numbers."
    assert "step limit" in k1.run(cell.format(1), cell_id="c").text
    k1.shutdown()
    k2 = kernel_factory()
    assert k2.run(_WATCH).status == "ok"
    done = k2.run(cell.format(9), cell_id="c")
    assert "Done." in done.text, done.text
    before, imported, opens = eval(k2.run("print(_w_report())").stdout)
    assert (before, imported) == (0, False) and opens >= 1  # opened as the execution ended
    scripted.set_script(_script(0))
    done = k2.run("%%agent --model scripted --name newcomer\nSay done.", cell_id="d")
    assert "Done." in done.text, done.text
    before, imported, opens = eval(k2.run("print(_w_report())").stdout)
    assert before == 0 and opens >= 1
