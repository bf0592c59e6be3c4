"""What every store backend must do, checked against each (DuckDB file, PostgreSQL).

Records come back as written and in order; writing twice is harmless; deletes
keep what forks need and collect unreferenced blobs; chains of forks read
through ``payloads``; one writer per agent holds across processes; live runs
are those whose writer is alive; bad input is refused or set aside, never
half-stored. The server's metadata reader works on each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest

from jupyter_agent.server.queries import Reader
from jupyter_agent.store import (
    AgentBusy,
    CheckpointRow,
    RunRow,
    StoreError,
    StoreWarning,
)

NB = "/home/me/analysis.ipynb"


def run_row(run_id: str, agent: str = "a", created: float = 1000.0, **kw) -> RunRow:
    return RunRow(
        run_id=run_id,
        notebook=kw.pop("notebook", NB),
        agent=agent,
        cell_id="c1",
        prompt=f"prompt of {run_id}",
        prompt_hash="h-" + run_id,
        model="scripted",
        parent_run=kw.pop("parent_run", None),
        parent_step=kw.pop("parent_step", None),
        created_at=created,
        info=kw.pop("info", {"approve": "never"}),
    )


def cp(run_id: str, step: int, kind: str = "model", **kw) -> CheckpointRow:
    return CheckpointRow(
        run_id=run_id,
        step=step,
        kind=kind,
        status=kw.pop("status", "running"),
        summary=f"checkpoint {step} of {run_id}",
        created_at=kw.pop("created", 2000.0 + step),
        duration_ms=1.5,
        tokens=kw.pop("tokens", 10),
        size=4,
        info=kw.pop("info", {}),
    )


def write(store, run: RunRow, steps: range | list[int], blobs: dict[int, dict] | None = None):
    """Write ``run`` and its checkpoints ``steps``; blobs[step] = {hash: data} go with a step."""
    w = store.writer(run.run_id, secrets=[])
    w.put_run(run)
    for step in steps:
        saved = (blobs or {}).get(step, {})
        for digest, data in saved.items():
            w.put_blob(digest, data)
        info = {"blobs": sorted(saved)} if saved else {}
        w.put_checkpoint(cp(run.run_id, step, info=info), f"payload {run.run_id}/{step}".encode())
    w.close()


# -- records and ordering --------------------------------------------------------------


def test_records_come_back_as_written(open_):
    store = open_()
    write(store, run_row("r1"), range(3), {1: {"h1": b"\x00value one"}})
    other = open_()
    (run,) = other.runs(notebook=NB, agent="a")
    assert run == run_row("r1")
    assert other.run("r1") == run_row("r1")
    rows = other.checkpoints("r1")
    assert [r.step for r in rows] == [0, 1, 2]
    assert rows[1].info == {"blobs": ["h1"]}
    assert rows[1] == cp("r1", 1, info={"blobs": ["h1"]})
    assert other.latest_checkpoints(["r1", "nope"]) == {"r1": rows[2]}
    pairs = other.payloads([("r1", None)])
    assert [(r.step, p) for r, p in pairs] == [(s, f"payload r1/{s}".encode()) for s in range(3)]
    assert other.blobs(["h1", "missing"]) == {"h1": b"\x00value one"}


def test_runs_are_ordered_by_creation_and_filtered(open_):
    store = open_()
    write(store, run_row("late", created=3000.0), [0])
    write(store, run_row("early", created=1000.0), [0])
    write(store, run_row("b1", agent="b", created=2000.0), [0])
    write(store, run_row("elsewhere", notebook="/other.ipynb", created=1500.0), [0])
    assert [r.run_id for r in store.runs()] == ["early", "elsewhere", "b1", "late"]
    assert [r.run_id for r in store.runs(notebook=NB)] == ["early", "b1", "late"]
    assert [r.run_id for r in store.runs(notebook=NB, agent="a")] == ["early", "late"]


def test_checkpoints_ordered_by_step_whatever_the_write_order(open_):
    store = open_()
    write(store, run_row("r"), [2, 0, 1])
    assert [r.step for r in store.checkpoints("r")] == [0, 1, 2]
    assert store.latest_checkpoints(["r"])["r"].step == 2


# -- idempotence ------------------------------------------------------------------------


def test_writing_twice_is_harmless(open_):
    store = open_()
    write(store, run_row("r"), range(2), {0: {"h": b"v"}})
    write(store, run_row("r"), range(2), {0: {"h": b"v"}})  # a second execution repeats all
    store.flush()
    store.flush()
    assert [r.run_id for r in store.runs()] == ["r"]
    assert [r.step for r in store.checkpoints("r")] == [0, 1]
    assert store.blobs(["h"]) == {"h": b"v"}
    assert len(store.payloads([("r", None)])) == 2


# -- deletes, forks and chains ----------------------------------------------------------


def _family(store) -> None:
    """A parent (0..3) and a fork of it at checkpoint 2 (3..4), with blobs in each."""
    write(store, run_row("parent"), range(4), {1: {"hp": b"parent value"}})
    fork = run_row("fork", created=1001.0, parent_run="parent", parent_step=2)
    write(store, fork, [3, 4], {3: {"hf": b"fork value", "hp": b"parent value"}})


def test_a_chain_reads_through_the_fork_point(open_):
    store = open_()
    _family(store)
    pairs = store.payloads([("parent", 2), ("fork", None)])
    assert [(r.run_id, r.step) for r, _ in pairs] == [
        ("parent", 0),
        ("parent", 1),
        ("parent", 2),
        ("fork", 3),
        ("fork", 4),
    ]
    assert pairs[3][1] == b"payload fork/3"


def test_deleting_a_fork_keeps_its_ancestor_and_collects_its_blobs(open_):
    store = open_()
    _family(store)
    assert store.delete_runs(["fork"]) == 1
    assert [r.run_id for r in store.runs()] == ["parent"]
    assert store.checkpoints("fork") == []
    assert [r.step for r in store.checkpoints("parent")] == [0, 1, 2, 3]
    assert store.blobs(["hp", "hf"]) == {"hp": b"parent value"}  # hf had no other referrer
    assert store.delete_runs(["parent"]) == 1
    assert store.blobs(["hp"]) == {}
    assert store.delete_runs([]) == 0


def test_a_history_with_a_hole_is_refused(open_):
    store = open_()
    write(store, run_row("holey"), [0, 1, 3])
    with pytest.raises(StoreError, match="Checkpoint 2 of run holey is missing"):
        store.payloads([("holey", None)])
    assert len(store.payloads([("holey", 1)])) == 2


# -- liveness and one writer per agent ------------------------------------------------

_CHILD = f"""
import sys, time
from jupyter_agent.store_api import open_store
from jupyter_agent.store import RunRow
store = open_store(sys.argv[1])
if sys.argv[2] == "lock":
    with store.agent_lock({NB!r}, "a"):
        print("held", flush=True)
        time.sleep(120)
else:
    w = store.writer("child-run", secrets=[])
    w.put_run(RunRow("child-run", {NB!r}, "a", None, "p", "h", "m", None, None, 1.0, {{}}))
    print("held", flush=True)
    time.sleep(120)
"""


def _child(spec: str, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, spec, mode], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "held", f"child did not take the lock: {line!r}"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _eventually(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_agent_lock_refuses_a_second_writer_in_another_process(open_, spec):
    child = _child(spec, "lock")
    try:
        store = open_()
        with pytest.raises(AgentBusy, match="'a'"), store.agent_lock(NB, "a"):
            pass
        with store.agent_lock(NB, "other agent"):  # other agents are free
            pass
    finally:
        _kill(child)

    def free() -> bool:
        try:
            with open_().agent_lock(NB, "a"):
                return True
        except AgentBusy:
            return False

    assert _eventually(free), "a killed holder's lock was never released"


def test_agent_lock_is_reentrant_in_a_thread_and_refuses_another(open_):
    store = open_()
    refused: list[Exception] = []

    def other() -> None:
        try:
            with open_().agent_lock(NB, "a"):
                pass
        except AgentBusy as exc:
            refused.append(exc)

    with store.agent_lock(NB, "a"), store.agent_lock(NB, "a"):
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(refused) == 1 and "already running in this kernel" in str(refused[0])
    with store.agent_lock(NB, "a"):  # released by the outer exit
        pass


def test_live_runs_are_runs_whose_writer_is_alive(open_, spec):
    store = open_()
    write(store, run_row("finished"), [0])
    w = store.writer("open-run", secrets=[])
    w.put_run(run_row("open-run", created=1002.0))
    w.put_checkpoint(cp("open-run", 0), b"p")
    try:
        assert open_().live_runs() == {"open-run"}
        with pytest.raises(StoreError, match="open-run is running"):
            open_().delete_runs(["open-run"])
    finally:
        w.close()
    assert open_().live_runs() == set()

    child = _child(spec, "write")
    try:
        assert "child-run" in open_().live_runs()
    finally:
        _kill(child)
    assert _eventually(lambda: "child-run" not in open_().live_runs())


# -- bad input ------------------------------------------------------------------------------


def test_unknown_ids_read_as_nothing(open_):
    store = open_()
    assert store.run("nope") is None
    assert store.checkpoints("nope") == []
    assert store.latest_checkpoints([]) == {}
    assert store.payloads([("nope", None)]) == []
    assert store.blobs([]) == {}


def test_a_malformed_checkpoint_is_never_half_stored(open_):
    store = open_()
    w = store.writer("r", secrets=[])
    w.put_run(run_row("r"))
    w.put_checkpoint(cp("r", 0), b"zero")
    bad = cp("r", 1)
    bad.step = "one"  # type: ignore[assignment]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)  # DuckDB sets it aside, with a warning
        try:
            w.put_checkpoint(bad, b"bad")
        except StoreError as exc:  # PostgreSQL refuses it at once
            assert "nothing was stored" in str(exc)
        w.put_checkpoint(cp("r", 1), b"one")
        w.close()
        rows = open_().checkpoints("r")
    assert [(r.step, r.summary) for r in rows] == [
        (0, "checkpoint 0 of r"),
        (1, "checkpoint 1 of r"),
    ]


def test_secrets_are_redacted_from_what_is_written(open_):
    store = open_()
    secret = "sk-live-0123456789abcdefghij"
    w = store.writer("r", secrets=[secret])
    run = run_row("r")
    run.prompt = f"use {secret} please"
    w.put_run(run)
    w.close()
    (stored,) = open_().runs()
    assert secret not in stored.prompt


# -- notebook moves, model facts ------------------------------------------------------


def test_notebook_moves_carry_runs_along(open_):
    store = open_()
    write(store, run_row("r", notebook="/home/me/old/nb.ipynb"), [0])
    assert store.move_notebook("/home/me/old", "/home/me/new", moved_at=5000.0) == 1
    assert [r.notebook for r in store.runs()] == ["/home/me/new/nb.ipynb"]
    assert store.resolve_notebook("/home/me/old/nb.ipynb", since=4000.0) == "/home/me/new/nb.ipynb"
    assert store.resolve_notebook("/home/me/old/nb.ipynb", since=6000.0) == "/home/me/old/nb.ipynb"


def test_learnt_context_windows_are_remembered(open_):
    store = open_()
    store.flush()  # the store exists
    assert store.learnt_window("m") is None
    store.remember_window("m", 8192)
    store.remember_window("m", 4096)
    assert open_().learnt_window("m") == 4096


# -- the server's metadata reader -------------------------------------------------------


def test_the_server_reader_works_on_every_backend(open_):
    store = open_()
    write(store, run_row("r1"), range(3))
    fork = run_row("r2", created=1001.0, parent_run="r1", parent_step=1)
    write(store, fork, [2, 3])
    reader = Reader(open_())
    assert reader.exists()
    (agent,) = reader.agents(NB)
    assert agent["name"] == "a" and agent["run_id"] == "r2" and agent["runs"] == 2
    # Steps are model checkpoints along the history: r1's 0 and 1, then r2's 2 and 3.
    assert agent["steps"] == 4
    assert [c["step"] for c in agent["timeline"]] == [2, 3]
    detail = reader.agent(NB, "a")
    assert [r["run_id"] for r in detail["all_runs"]] == ["r1", "r2"]
    assert detail["all_runs"][0]["checkpoints"] == 3
    run, notebook = reader.run("r1")
    assert notebook == NB and [c["step"] for c in run["checkpoints"]] == [0, 1, 2]
    assert reader.delete_agent(NB, "a", keep_latest=True) == []  # r2 needs r1
    assert sorted(reader.delete_agent(NB, "a")) == ["r1", "r2"]
    assert reader.agents(NB) == []
