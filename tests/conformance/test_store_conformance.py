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
import warnings
from pathlib import Path

import pytest

from jupyter_agent.errors import AgentBusy, Conflict, NotFound, StoreError, StoreWarning
from jupyter_agent.namespace.serialize import digest as content_hash
from jupyter_agent.store.api import (
    Capability,
    CheckpointRow,
    HistoryTailStore,
    JournaledStore,
    RunRow,
    Store,
)
from jupyter_agent.store.duckdb import blobfiles
from jupyter_agent.store.schema import SCHEMA_VERSION
from jupyter_agent.views.listing import Reader

from ..conftest import eventually

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


def test_a_large_value_comes_back_whole(open_):
    big = os.urandom(blobfiles.MIN_BYTES + 1)  # over the size DuckDB keeps in files
    name = content_hash(big)  # a value file is named by its content hash, and checked against it
    write(open_(), run_row("r"), range(2), {1: {name: big}})
    assert open_().blobs([name]) == {name: big}


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


def test_a_chain_reads_from_a_step_on_and_checkpoints_filter_by_kind(open_):
    store = open_()
    _family(store)
    w = store.writer("fork", secrets=[])
    w.put_checkpoint(cp("fork", 5, kind="compaction"), b"payload fork/5")
    w.close()
    pairs = store.payloads([("parent", 2), ("fork", None)], since=2)
    assert [(r.run_id, r.step) for r, _ in pairs] == [
        ("parent", 2),
        ("fork", 3),
        ("fork", 4),
        ("fork", 5),
    ]
    assert [r.step for r, _ in store.payloads([("parent", 2), ("fork", None)], since=4)] == [4, 5]
    assert store.payloads([("parent", None)], since=9) == []
    assert [r.step for r in store.checkpoints("fork", kind="compaction")] == [5]
    assert [r.step for r in store.checkpoints("fork", kind="model")] == [3, 4]
    assert store.checkpoints("fork", kind="resume") == []
    write(store, run_row("holey"), [0, 1, 3, 4])
    assert [r.step for r, _ in store.payloads([("holey", None)], since=3)] == [3, 4]
    with pytest.raises(StoreError, match="Checkpoint 2 of run holey is missing"):
        store.payloads([("holey", None)], since=1)


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
from jupyter_agent.store.api import RunRow
from jupyter_agent.store.open import open_store
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

    assert eventually(free), "a killed holder's lock was never released"


def test_deleting_an_agent_another_process_is_about_to_run_is_refused(open_, spec):
    """The holder of the agent lock may not have written its run yet: it still owns the agent."""
    write(open_(), run_row("r1"), [0, 1])
    child = _child(spec, "lock")
    try:
        with pytest.raises(
            Conflict, match=r"'a' is running (in another kernel|elsewhere) \(pid \d+.*delet"
        ):
            open_().delete_agent(NB, "a")
        assert [r.run_id for r in open_().runs(notebook=NB, agent="a")] == ["r1"]
    finally:
        _kill(child)
    assert eventually(lambda: _deletes(open_))


def _deletes(open_) -> bool:
    try:
        return open_().delete_agent(NB, "a") == ["r1"]
    except Conflict:
        return False


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
        with pytest.raises(Conflict, match="open-run is running"):
            open_().delete_runs(["open-run"])
    finally:
        w.close()
    assert open_().live_runs() == set()

    child = _child(spec, "write")
    try:
        assert "child-run" in open_().live_runs()
    finally:
        _kill(child)
    assert eventually(lambda: "child-run" not in open_().live_runs())


# -- bad input ------------------------------------------------------------------------------


def test_a_value_another_user_wrote_is_never_handed_out(open_, spec):
    """Unpickling a saved value runs code: one that someone else could have written is refused."""
    big, digest = os.urandom(blobfiles.MIN_BYTES + 1), "cd" * 16
    store = open_()
    if Capability.OWNERS in store.capabilities:  # a row of another owner
        from jupyter_agent.store.postgres.store import PostgresStore

        write(PostgresStore(spec, owner="mallory"), run_row("m"), [0], {0: {digest: big}})
    elif Capability.VALUE_FILES in store.capabilities:  # a file planted by another user
        write(store, run_row("m"), [0], {0: {digest: big}})
        os.chown(store.blob_dir / digest[:2] / digest, 65534, 65534)
    else:
        pytest.skip("the store has neither owners nor value files another user could plant")
    with pytest.raises(StoreError, match="not loaded, because loading a (saved )?value can run"):
        open_().blobs([digest])


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


# -- summaries: what lists, badges and the REST API show ----------------------------------

USAGE = {"usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}


def _write_kinds(store, run: RunRow, kinds: dict[int, str]) -> None:
    """``run`` with checkpoints of the given kinds; model checkpoints carry usage."""
    w = store.writer(run.run_id, secrets=[])
    w.put_run(run)
    for step, kind in kinds.items():
        info = USAGE if kind == "model" else {"why": kind}
        status = "done" if kind == "done" else "running"
        w.put_checkpoint(cp(run.run_id, step, kind, info=info, status=status), b"{}")
    w.close()


def _team(store) -> None:
    """Agent a: r1 (a model call at 1 and 3), then r2 forked at 2 (model calls at 3 and 4).
    Agent b: one run, and a run of another notebook."""
    _write_kinds(store, run_row("r1"), {0: "start", 1: "model", 2: "tool_result", 3: "model"})
    fork = run_row("r2", created=1001.0, parent_run="r1", parent_step=2)
    _write_kinds(store, fork, {3: "model", 4: "model", 5: "done"})
    _write_kinds(store, run_row("b1", agent="b", created=1002.0), {0: "start", 1: "model"})
    _write_kinds(store, run_row("x1", notebook="/other.ipynb"), {0: "start"})


def test_run_stats_count_the_steps_of_a_forks_history(open_):
    store = open_()
    _team(store)
    stats = open_().run_stats(["r1", "r2", "nope"])
    assert set(stats) == {"r1", "r2"}
    r1, r2 = stats["r1"], stats["r2"]
    assert (r1.checkpoints, r1.steps, r1.tokens) == (4, 2, 40)
    # r2's history: r1's model checkpoint 1 (3 is past the fork point), then its own 3 and 4.
    assert (r2.checkpoints, r2.steps, r2.last_step, r2.last_status) == (3, 3, 5, "done")
    assert (r2.prompt_tokens, r2.completion_tokens, r2.size) == (14, 6, 12)
    assert r2.last_info == {"why": "done"} and r2.updated_at == 2005.0
    assert open_().model_steps(["r1", "r2", "b1"]) == {"r1": [1, 3], "r2": [3, 4], "b1": [1]}
    assert open_().run_stats([]) == {}
    assert r1.plan is None


def test_run_stats_add_up_cached_tokens_and_cost(open_):
    store = open_()
    w = store.writer("c1", secrets=[])
    w.put_run(run_row("c1", agent="cached"))
    w.put_checkpoint(cp("c1", 0, "start"), b"{}")
    usage = {"prompt_tokens": 2000, "completion_tokens": 10, "cached_tokens": 1536}
    w.put_checkpoint(cp("c1", 1, info={"usage": usage, "cost_usd": 0.0012345}), b"{}")
    usage = {"prompt_tokens": 100, "completion_tokens": 5, "cache_write_tokens": 64}
    w.put_checkpoint(cp("c1", 2, info={"usage": usage, "cost_usd": 0.5}), b"{}")
    w.close()
    stats = open_().run_stats(["c1"])["c1"]
    assert (stats.cached_tokens, stats.cache_write_tokens) == (1536, 64)
    assert stats.cost_usd == pytest.approx(0.5012345)
    tail = getattr(open_(), "history_tail", None)
    if tail is not None:
        _, totals = tail([("c1", None)], 1)
        assert (totals["cached_tokens"], totals["cache_write_tokens"]) == (1536, 64)
        assert totals["cost_usd"] == pytest.approx(0.5012345)


def test_run_stats_carry_the_latest_plan(open_):
    store = open_()
    old = [{"title": "load", "status": "in_progress"}]
    new = [{"title": "load", "status": "done"}, {"title": "plot", "status": "pending"}]
    w = store.writer("p1", secrets=[])
    w.put_run(run_row("p1", agent="planner"))
    w.put_checkpoint(cp("p1", 0, "start"), b"{}")
    w.put_checkpoint(cp("p1", 1, "tool_result", info={"plan": old}), b"{}")
    w.put_checkpoint(cp("p1", 2, "tool_result", info={"plan": new}), b"{}")
    w.put_checkpoint(cp("p1", 3, "model"), b"{}")  # later, without a plan
    w.close()
    assert open_().run_stats(["p1"])["p1"].plan == new


def test_agent_summaries_show_each_agents_latest_run(open_):
    store = open_()
    _team(store)
    w = store.writer("b2", secrets=[])  # b's latest run, being written now
    w.put_run(run_row("b2", agent="b", created=1003.0))
    w.put_checkpoint(cp("b2", 0, "start"), b"{}")
    try:
        a, b = open_().agent_summaries(NB, timeline=2)
    finally:
        w.close()
    assert (a.name, a.latest.run.run_id, a.runs, a.latest.live) == ("a", "r2", 2, False)
    assert [c.step for c in a.timeline] == [4, 5]  # the last two, oldest first
    assert a.latest.stats is not None and a.latest.stats.steps == 3
    assert (b.name, b.latest.run.run_id, b.runs, b.latest.live) == ("b", "b2", 2, True)
    assert [s.name for s in open_().agent_summaries("/other.ipynb")] == ["a"]
    assert open_().agent_summaries("/nowhere.ipynb") == []


def test_agent_and_run_details(open_):
    store = open_()
    _team(store)
    detail = open_().agent_detail(NB, "a", timeline=1)
    assert detail is not None
    assert [r.run.run_id for r in detail.runs] == ["r1", "r2"]
    assert [r.stats.steps for r in detail.runs if r.stats] == [2, 3]
    assert detail.summary.latest.run.run_id == "r2" and detail.summary.runs == 2
    assert [c.step for c in detail.summary.timeline] == [5]
    assert open_().agent_detail(NB, "nobody") is None
    run = open_().run_detail("r2")
    assert run is not None and run.summary.run == store.run("r2")
    assert [c.step for c in run.checkpoints] == [3, 4, 5]
    assert run.summary.stats is not None and run.summary.stats.steps == 3
    assert open_().run_detail("nope") is None


def test_forks_are_the_runs_that_depend_on_others(open_):
    store = open_()
    _team(store)
    assert [r.run_id for r in open_().forks(["r1"])] == ["r2"]
    assert open_().forks(["r1", "r2"]) == []
    assert open_().forks([]) == []


def test_deleting_an_agent_keeps_what_other_agents_forked_from(open_):
    store = open_()
    _write_kinds(store, run_row("old", created=999.0), {0: "start", 1: "model"})
    _team(store)
    other = run_row("c1", agent="c", created=1004.0, parent_run="b1", parent_step=1)
    _write_kinds(store, other, {2: "model"})
    # a's latest (r2) needs r1: keep_latest deletes only the unrelated older run.
    assert open_().delete_agent(NB, "a", keep_latest=True) == ["old"]
    assert [r.run_id for r in open_().runs(notebook=NB, agent="a")] == ["r1", "r2"]
    with pytest.raises(Conflict, match="c1 of agent 'c' was forked"):
        open_().delete_agent(NB, "b")  # c's run continues b1's history
    assert store.run("b1") is not None
    with pytest.raises(NotFound, match="'nobody'"):
        open_().delete_agent(NB, "nobody")
    assert sorted(open_().delete_agent(NB, "a")) == ["r1", "r2"]
    assert open_().delete_agent(NB, "c") == ["c1"]
    assert open_().delete_agent(NB, "b") == ["b1"]
    assert [r.run_id for r in open_().runs()] == ["x1"]


def test_info_and_reading_never_create_the_store(open_):
    store = open_()
    assert not store.exists()
    # What the server and the CLI read before any agent ran.
    assert store.agent_summaries(NB) == []
    assert store.agent_detail(NB, "a") is None and store.run_detail("r") is None
    assert store.run_stats(["r"]) == {} and store.forks(["r"]) == [] and store.live_runs() == set()
    assert store.learnt_window("m") is None
    about = store.info()
    assert (about.exists, about.schema_version, about.runs, about.checkpoints) == (
        False,
        None,
        0,
        0,
    )
    assert about.reads_version == SCHEMA_VERSION
    assert not open_().exists()  # none of those reads created it
    _team(store)
    about = open_().info()
    assert (about.exists, about.schema_version, about.runs, about.checkpoints) == (
        True,
        SCHEMA_VERSION,
        4,
        10,
    )
    assert about.location == store.location


def test_every_read_verb_on_a_nonexistent_store_reads_as_nothing(open_, spec):
    store = open_()
    with store.session():  # what a resume reads first, before anything is written
        assert store.runs() == [] and store.runs(notebook=NB, agent="a") == []
        assert store.run("r") is None and store.checkpoints("r") == []
        assert store.latest_checkpoints(["r"]) == {} and store.model_steps(["r"]) == {}
        assert store.payloads([("r", None)]) == [] and store.blobs(["h"]) == {}
    store.check_trusted()
    assert store.live_runs() == set()
    assert store.resolve_notebook(NB, since=0.0) == NB
    assert store.learnt_window("m") is None
    assert set(store.sizes().values()) <= {0}
    assert not open_().exists()  # none of those reads created it
    if Capability.JOURNALS in store.capabilities:  # a store of files beside a path
        assert not Path(spec).parent.exists()  # not even the store's directory
    write(store, run_row("r"), [0])  # the first write creates it, for every backend
    assert [r.run_id for r in open_().runs()] == ["r"]


def test_a_session_serves_its_reads_from_one_connection(open_):
    store = open_()
    _team(store)
    reader = open_()
    before = reader.opens
    with reader.session(), reader.session():  # re-entrant
        for _ in range(3):
            reader.runs(notebook=NB)
            reader.agent_summaries(NB)
            reader.payloads([("r1", 2), ("r2", None)])
            reader.latest_checkpoints(["r1"])
    assert reader.opens - before <= 1


def test_payloads_are_stored_as_json(open_):
    from jupyter_agent.core.state import Delta, decode_delta, encode_delta

    store = open_()
    payload = encode_delta(Delta(messages=[{"role": "user", "content": "hi"}]))
    w = store.writer("j", secrets=["sk-secret-0123456789abcdefghij"])
    w.put_run(run_row("j"))
    w.put_checkpoint(cp("j", 0, "start"), payload)
    leaky = encode_delta(
        Delta(messages=[{"role": "user", "content": "sk-secret-0123456789abcdefghij"}])
    )
    w.put_checkpoint(cp("j", 1, "model"), leaky)
    w.close()
    (first, p0), (_, p1) = open_().payloads([("j", None)])
    assert first.kind == "start" and p0 == payload
    assert decode_delta(p0).messages == [{"role": "user", "content": "hi"}]
    assert b"sk-secret" not in p1 and decode_delta(p1).messages[0]["role"] == "user"


# -- optional features, as each backend declares them -----------------------------------


def test_declared_capabilities_come_with_their_members(open_):
    store = open_()
    assert isinstance(store, Store)
    assert isinstance(store, JournaledStore) == (Capability.JOURNALS in store.capabilities)
    assert isinstance(store, HistoryTailStore) == (Capability.HISTORY_TAIL in store.capabilities)
    if Capability.VALUE_FILES in store.capabilities:
        assert store.blob_dir.name.endswith(".blobs")
    if Capability.OWNERS in store.capabilities:
        assert isinstance(store.owner, str) and store.owner


def test_a_history_tail_agrees_with_the_whole_history(open_):
    store = open_()
    if Capability.HISTORY_TAIL not in store.capabilities:
        pytest.skip("the store reads a history whole")
    _team(store)
    chain = [("r1", 2), ("r2", None)]
    whole = [row for row, _ in store.payloads(chain)]
    rows, totals = store.history_tail(chain, 2)
    assert rows == whole[-2:]
    usage = [c.info.get("usage", {}) for c in whole]
    assert (totals["checkpoints"], totals["tokens"], totals["size"]) == (
        len(whole),
        sum(c.tokens for c in whole),
        sum(c.size for c in whole),
    )
    assert totals["prompt_tokens"] == sum(u.get("prompt_tokens", 0) for u in usage)
    assert totals["completion_tokens"] == sum(u.get("completion_tokens", 0) for u in usage)
    assert totals["plan"] is None


def test_a_store_has_one_id_from_its_creation(open_):
    store = open_()
    assert store.store_id() is None  # reading creates nothing
    store.flush()  # the store exists
    made = store.store_id()
    assert made and len(made) == 32
    store.remember_window("m", 8192)
    assert open_().store_id() == made
