"""Readers answer within a second, with the right statuses, while another process holds the store."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from jupyter_agent.store.api import CheckpointRow, RunRow
from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.store.writer import RunWriter
from jupyter_agent.views.listing import Reader

from .conftest import eventually
from .kernels import Kernel

NOTEBOOK = "/nb/contention.ipynb"


def start_run(store: Store, run_id: str, agent: str, at: float) -> RunWriter:
    w = store.writer(run_id, secrets=[])
    w.put_run(RunRow(run_id, NOTEBOOK, agent, None, "p", "h", "m", None, None, at))
    w.put_checkpoint(CheckpointRow(run_id, 0, "start", "running", "start", at, 1, 0, 1), b"{}")
    w.put_checkpoint(
        CheckpointRow(run_id, 1, "model", "running", "model", at + 0.1, 1, 7, 1), b"{}"
    )
    return w


def finish(w: RunWriter, run_id: str, at: float, *, fold: bool) -> None:
    w.put_checkpoint(CheckpointRow(run_id, 2, "model", "done", "Done.", at, 1, 5, 1), b"{}")
    w.close(merge=fold)


@contextmanager
def held(path: Path, seconds: float) -> Iterator[None]:
    """Another process holds the DuckDB file read-write (as a kernel folding does)."""
    code = (
        f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('held', flush=True); "
        f"time.sleep({seconds})"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t = time.monotonic()
    out = fn()
    return out, time.monotonic() - t


def test_readers_answer_within_a_second_while_a_writer_holds_the_store(
    store_path: Path, kernel_factory: Callable[..., Kernel]
) -> None:
    store = Store(store_path)
    now = time.time()
    finish(start_run(store, "aaaa0001", "done-before", now), "aaaa0001", now + 1, fold=True)
    folded = start_run(store, "bbbb0002", "folded-meanwhile", now + 2)
    late = start_run(store, "cccc0003", "ends-while-held", now + 3)
    running = start_run(store, "dddd0004", "still-running", now + 4)

    reader = Reader(Store(store_path, busy_timeout=2.0))  # the server's timeout
    first = {a["name"]: a["status"] for a in reader.agents(NOTEBOOK)}
    assert first == dict.fromkeys(
        ["done-before", "folded-meanwhile", "ends-while-held", "still-running"], "running"
    ) | {"done-before": "done"}
    kernel = kernel_factory(JUPYTER_AGENT_NOTEBOOK=NOTEBOOK)
    assert "folded-meanwhile" in kernel.run("%agent list").stdout  # read once, not held

    # Since those answers: a run ended and was folded (its journal is gone), then
    # while another process holds the store a run ends and a new one starts.
    finish(folded, "bbbb0002", now + 5, fold=True)
    with held(store_path, 8):
        finish(late, "cccc0003", now + 6, fold=False)
        start_run(store, "eeee0005", "new", now + 7)
        agents, took = timed(lambda: reader.agents(NOTEBOOK))
        listing = kernel.run(TIMED_LIST)
        assert listing.status == "ok", listing.text

    assert took < 1.0
    statuses = {a["name"]: (a["status"], a["steps"], a["tokens"]) for a in agents}
    assert statuses == {
        "done-before": ("done", 2, 12),
        "folded-meanwhile": ("done", 2, 12),
        "ends-while-held": ("done", 2, 12),
        "still-running": ("running", 1, 7),
        "new": ("running", 1, 7),
    }
    table, took_list = listing.stdout.rsplit("TOOK", 1)
    assert float(took_list) < 1.0
    lines = {ln.split()[0]: ln for ln in table.splitlines()[1:] if ln.strip()}
    assert "done after 2 steps" in lines["folded-meanwhile"]
    assert "done after 2 steps" in lines["ends-while-held"]
    assert "running" in lines["new"] and "running" in lines["still-running"]
    assert "interrupted" not in listing.stdout and "busy" not in listing.stdout.lower()
    running.close()


#: ``%agent list``, timed by the kernel itself.
TIMED_LIST = "import time\nt = time.monotonic()\n%agent list\nprint('TOOK', time.monotonic() - t)"


def test_a_reader_does_not_open_an_unchanged_store_to_show_journaled_progress(
    store_path: Path,
) -> None:
    store = Store(store_path)
    store.flush()  # the file exists: reading it does not write it
    now = time.time()
    w = start_run(store, "ffff0006", "a", now)
    reader = Reader(Store(store_path))
    assert [a["status"] for a in reader.agents(NOTEBOOK)] == ["running"]
    opens = reader.store.opens
    # The run ends and is resumed; nothing is folded: the file is as the reader left it.
    finish(w, "ffff0006", now + 1, fold=False)
    resumed = store.writer("ffff0007", secrets=[])
    resumed.put_run(RunRow("ffff0007", NOTEBOOK, "a", None, "p", "h", "m", "ffff0006", 2, now + 2))
    for step, kind in ((3, "resume"), (4, "model")):
        row = CheckpointRow("ffff0007", step, kind, "running", kind, now + 2 + step / 10, 1, 4, 1)
        resumed.put_checkpoint(row, b"{}")
    (shown,), as_of = reader.agents_as_of(NOTEBOOK)
    assert reader.store.opens == opens  # answered from the journals alone
    assert (shown["status"], shown["steps"], shown["runs"], as_of) == ("running", 3, 2, None)
    store.flush()  # the finished run is folded: the file changed, so it is read again...
    (again,), as_of = reader.agents_as_of(NOTEBOOK)
    assert again == shown and as_of is None  # ...on a thread: this answer did not wait for it
    assert eventually(lambda: reader.store.opens == opens + 1)
    (stored,), as_of = reader.agents_as_of(NOTEBOOK)  # from that read; the file is unchanged
    assert reader.store.opens == opens + 1 and as_of is None
    assert shown == stored  # the journals told the same as the store
    resumed.close()


def test_a_reader_answers_at_once_while_the_store_changes_and_sees_deletions_a_poll_later(
    store_path: Path,
) -> None:
    """The file changes under a polling reader: it answers from its last read and the journals."""
    store = Store(store_path)
    now = time.time()
    finish(start_run(store, "aaaa0011", "kept", now), "aaaa0011", now + 1, fold=True)
    finish(start_run(store, "bbbb0012", "deleted", now + 2), "bbbb0012", now + 3, fold=True)
    reader = Reader(Store(store_path, busy_timeout=2.0))
    assert {a["name"] for a in reader.agents(NOTEBOOK)} == {"kept", "deleted"}
    detail, _ = reader.run("aaaa0011")
    with_messages, _ = reader.run("aaaa0011", messages=True)
    assert reader.agent(NOTEBOOK, "kept")["all_runs"][0]["status"] == "done"
    opens = reader.store.opens

    # Another process deletes an agent and a new run is folded in: the file changed.
    Store(store_path).delete_agent(NOTEBOOK, "deleted")
    finish(start_run(store, "cccc0013", "new", now + 4), "cccc0013", now + 5, fold=True)
    with held(store_path, 8):  # and a writer holds it now: the reads cannot open it
        answers, took = timed(lambda: (reader.agents(NOTEBOOK), reader.agent(NOTEBOOK, "kept")))
        agents, kept = answers
        assert took < 0.5 and reader.store.opens == opens  # nothing waited for the file
        assert {a["name"]: a["status"] for a in agents} == {
            "kept": "done",
            "deleted": "done",
            "new": "done",  # the deletion is not known yet
        }
        assert [r["run_id"] for r in kept["all_runs"]] == ["aaaa0011"]
        assert reader.run("aaaa0011")[0] == detail
        assert reader.run("aaaa0011", messages=True)[0] == with_messages  # each step read once
    assert eventually(lambda: {a["name"] for a in reader.agents(NOTEBOOK)} == {"kept", "new"})


def test_a_run_the_list_shows_from_its_journal_can_be_opened(store_path: Path) -> None:
    """Another kernel's live run is listed from its journal; opening it must not say it is gone."""
    Store(store_path).flush()
    reader = Reader(Store(store_path))
    assert reader.agents(NOTEBOOK) == []
    code = (
        "import sys, time; sys.path.insert(0, '.'); from jupyter_agent.store.duckdb.store import DuckDBStore as Store; "
        "from tests.test_store_contention import start_run; "
        f"w = start_run(Store({str(store_path)!r}), 'ffff0008', 'a', time.time()); "
        "print('running', flush=True); time.sleep(60)"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "running"
        (shown,) = reader.agents(NOTEBOOK)
        detail, notebook = reader.run(shown["run_id"], messages=True)
        assert notebook == NOTEBOOK and detail["status"] == "running" and detail["live"]
        assert [c["step"] for c in detail["checkpoints"]] == [0, 1] and detail["steps"] == 1
        assert [r["run_id"] for r in reader.runs(NOTEBOOK, "a")] == ["ffff0008"]
    finally:
        writer.kill()
        writer.wait()
