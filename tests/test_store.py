"""The store on real DuckDB files and journals."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import threading
import time

import duckdb
import pytest

from jupyter_agent.errors import (
    AgentBusy,
    AgentError,
    Conflict,
    NotFound,
    NotWaiting,
    StoreBusy,
    StoreError,
)
from jupyter_agent.namespace.serialize import digest as content_hash
from jupyter_agent.store.api import CheckpointRow, RunRow
from jupyter_agent.store.api import Store as StoreProtocol
from jupyter_agent.store.duckdb import journal
from jupyter_agent.store.duckdb.store import DuckDBStore
from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.store.open import open_store
from jupyter_agent.store.schema import SCHEMA_VERSION


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


def test_a_record_not_durable_yet_is_synced_with_the_next_or_at_close(tmp_path, monkeypatch):
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(journal.os, "fdatasync", lambda fd: synced.append(fd) or real(fd))
    writer = journal.JournalWriter(tmp_path, "r1")
    record = journal.Record("runs", {"x": 1}, b"p")
    writer.append(record, durable=False)
    assert synced == []  # written (a killed process keeps it), not synced yet
    assert journal.decode_all(writer.path.read_bytes())[0][0].row == {"x": 1}
    writer.append(record)
    assert len(synced) == 1  # one sync for both
    writer.append(record, durable=False)
    writer.close()
    assert len(synced) == 2  # the last one, at close
    quiet = journal.JournalWriter(tmp_path, "r2")
    quiet.append(record)
    quiet.close()
    assert len(synced) == 3  # a durable append is not synced again at close


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
        from jupyter_agent.store.api import RunRow, CheckpointRow
        from jupyter_agent.store.duckdb.store import DuckDBStore as Store
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


def test_the_schema_is_checked_once_per_file_state(tmp_path):
    """Each open would otherwise check the schema again (half the cost of an open)."""
    path = tmp_path / "s.duckdb"
    store = Store(path)
    w = store.writer("r1")
    w.put_run(run_row())
    w.close()
    checks = store.schema_checks
    store.runs()
    store.checkpoints("r1")
    assert store.schema_checks == checks and store.opens >= 3
    with duckdb.connect(str(path)) as con:  # another process upgrades the file
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer jupyter-agent"):
        store.runs()
    assert store.schema_checks == checks + 1


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
        from jupyter_agent.store.duckdb.store import DuckDBStore as Store
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
    # The holder forks a worker that outlives it, as agent code may; it goes on once the
    # worker is past the fork (its at-fork handlers ran), so the kill cannot come between.
    then = (
        "r, w = os.pipe()\n"
        "            if os.fork() == 0:\n"
        "                os.write(w, b'x')\n"
        "                time.sleep(5)\n"
        "                os._exit(0)\n"
        "            os.read(r, 1)"
    )
    holder = hold_agent_lock(path, "a", then)
    holder.kill()
    holder.wait()
    with Store(path).agent_lock("/nb.ipynb", "a"):
        pass


def write_run(store: Store, run: RunRow, kinds: list[str], tokens: int = 3) -> None:
    """A run with one checkpoint per kind (model ones with usage), through a writer."""
    w = store.writer(run.run_id, secrets=[])
    w.put_run(run)
    first = 0 if run.parent_step is None else run.parent_step + 1
    for i, kind in enumerate(kinds):
        usage = {"prompt_tokens": 2, "completion_tokens": 1} if kind == "model" else {}
        info = {"usage": usage} if usage else {}
        step = first + i
        row = CheckpointRow(
            run.run_id, step, kind, "running", kind, 10.0 + step, 1.0, tokens, 5, info
        )
        w.put_checkpoint(row, b"{}")
    w.close()


def test_summaries_forks_and_deletion_rules_are_store_verbs(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    assert store.agent_summaries("/nb.ipynb") == [] and not store.exists()  # nothing created
    assert store.info().exists is False
    parent = run_row("p1", "a")
    write_run(store, parent, ["start", "model", "tool_call", "tool_result", "model"])
    fork = RunRow("f1", "/nb.ipynb", "a", None, "task", "h", "m", "p1", 2, 2.0, {})
    write_run(store, fork, ["fork", "model"])
    other = RunRow("o1", "/nb.ipynb", "b", None, "x", "h", "m", "p1", 1, 3.0, {})
    write_run(store, other, ["fork"])

    (a, b) = store.agent_summaries("/nb.ipynb")
    assert (a.name, a.runs, a.latest.run.run_id, b.name) == ("a", 2, "f1", "b")
    assert [c.kind for c in a.timeline] == ["fork", "model"]
    stats = a.latest.stats
    assert stats is not None and not a.latest.live
    # The fork's history: the parent's model step up to checkpoint 2, then its own.
    assert (stats.steps, stats.checkpoints, stats.tokens) == (2, 2, 6)
    assert (stats.prompt_tokens, stats.completion_tokens, stats.last_step) == (2, 1, 4)
    detail = store.agent_detail("/nb.ipynb", "a")
    assert detail is not None and [r.run.run_id for r in detail.runs] == ["p1", "f1"]
    assert detail.runs[0].stats is not None and detail.runs[0].stats.steps == 2
    run = store.run_detail("f1")
    assert run is not None and [c.step for c in run.checkpoints] == [3, 4]
    assert store.run_detail("nope") is None and store.agent_detail("/nb.ipynb", "z") is None
    assert store.model_steps(["p1", "f1"]) == {"p1": [1, 4], "f1": [4]}
    assert [r.run_id for r in store.forks(["p1"])] == ["f1", "o1"]
    info = store.info()
    assert (info.exists, info.schema_version, info.runs, info.checkpoints) == (
        True,
        SCHEMA_VERSION,
        3,
        8,
    )

    # Forks keep their ancestors: agent b's run was forked from p1.
    with pytest.raises(Conflict, match="forked from a run that would be deleted"):
        store.delete_agent("/nb.ipynb", "a")
    assert store.delete_agent("/nb.ipynb", "a", keep_latest=True) == []  # p1 is f1's ancestor
    assert store.delete_agent("/nb.ipynb", "b") == ["o1"]
    assert store.delete_agent("/nb.ipynb", "a", keep_latest=True) == []
    assert sorted(store.delete_agent("/nb.ipynb", "a")) == ["f1", "p1"]
    with pytest.raises(NotFound):
        store.delete_agent("/nb.ipynb", "a")


def test_open_store_picks_the_backend(tmp_path, monkeypatch):
    path = tmp_path / "s.duckdb"
    assert isinstance(open_store(path), DuckDBStore)
    assert open_store(f"duckdb://{path}").location == str(path)
    monkeypatch.setenv("JUPYTER_AGENT_STORE", str(path))
    assert open_store().location == str(path)
    assert isinstance(open_store(), StoreProtocol)
    try:
        import jupyter_agent.store.postgres.store  # noqa: F401
    except ImportError:
        with pytest.raises(StoreError, match="PostgreSQL backend"):
            open_store("postgresql://user@db.example/agents")
    else:  # the PostgreSQL backend is there: the URL selects it (without connecting yet)
        store = open_store("postgresql://user@db.example/agents")
        assert type(store).__name__ == "PostgresStore"


def test_refusals_are_agent_errors_not_store_faults():
    assert issubclass(StoreError, AgentError) and issubclass(StoreBusy, StoreError)
    for refusal in (AgentBusy, NotWaiting, NotFound, Conflict):
        assert issubclass(refusal, AgentError) and not issubclass(refusal, StoreError)
    from jupyter_agent import errors

    # One tree: every exception class of errors.py but the two non-errors is an AgentError,
    # so the boundaries catch AgentError alone.
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    outside = {c.__name__ for c in classes if not issubclass(c, AgentError)}
    assert outside == {"Cancelled", "StoreWarning"}
    assert issubclass(errors.StateVersionError, AgentError)


# -- large values beside the store; readers that do not write --------------------------

BIG = 3 << 20  # over the size kept in files


def blob_row(run_id: str, step: int, hashes: list[str]) -> CheckpointRow:
    row = cp(run_id, step)
    row.info = {"blobs": hashes}
    return row


def test_a_large_value_is_a_private_file_and_a_foreign_one_is_refused(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    value = os.urandom(BIG)
    digest = content_hash(value)  # the name a value file must have
    w = store.writer("r1")
    w.put_run(run_row())
    w.put_blob(digest, value)
    w.put_checkpoint(blob_row("r1", 0, [digest]), b"")
    w.close()
    path = store.blob_dir / digest[:2] / digest
    assert path.read_bytes() == value
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.blob_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with duckdb.connect(str(store.path)) as con:  # DuckDB holds only the reference
        assert con.execute("SELECT size, data IS NULL FROM blobs").fetchall() == [(BIG, True)]
    assert store.blobs([digest]) == {digest: value}
    os.chown(path, 65534, 65534)  # planted by another user
    with pytest.raises(StoreError, match="another user"):
        store.blobs([digest])
    os.chown(path, os.getuid(), os.getgid())
    os.chown(store.blob_dir, 65534, 65534)
    with pytest.raises(StoreError, match="another user"):
        store.check_trusted()


def test_delete_collects_blob_files_nothing_refers_to(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    values = [os.urandom(BIG) for _ in range(2)]
    kept, dropped = (content_hash(v) for v in values)  # value files are named by content hash
    for run_id, digest, value in (("r1", kept, values[0]), ("r2", dropped, values[1])):
        w = store.writer(run_id)
        w.put_run(run_row(run_id, agent=run_id))
        w.put_blob(digest, value)
        w.put_checkpoint(blob_row(run_id, 0, [digest]), b"")
        w.close()
    orphan = store.blob_dir / "33" / ("33" * 16)  # written by a kernel that died before its record
    orphan.parent.mkdir(mode=0o700, exist_ok=True)  # a random hash may share its folder
    orphan.write_bytes(b"x")
    fresh = store.blob_dir / "44" / ("44" * 16)  # a writer may be about to journal this one
    fresh.parent.mkdir(mode=0o700, exist_ok=True)
    fresh.write_bytes(b"y")
    old = time.time() - 3600
    for p in store.blob_dir.glob("*/*"):
        if p != fresh:
            os.utime(p, (old, old))
    store.delete_runs(["r2"])
    left = {p.name for p in store.blob_dir.glob("*/*")}
    assert left == {kept, fresh.name}
    assert list(store.blobs([kept, dropped])) == [kept]


def test_listing_while_a_live_journal_grows_does_not_write_to_duckdb(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    w = store.writer("r0")
    w.put_run(run_row("r0", agent="done"))
    w.put_checkpoint(cp("r0", 0, "done"), b"")
    w.close()
    before = os.stat(store.path)
    files = sorted(os.listdir(tmp_path))
    w = store.writer("r1")
    w.put_run(run_row("r1", agent="live"))
    for step in range(5):
        w.put_checkpoint(cp("r1", step), b"payload")
        agents = {a.name: a for a in store.agent_summaries("/nb.ipynb")}
        latest = agents["live"].latest
        assert latest.live and latest.stats is not None and latest.stats.checkpoints == step + 1
        assert [c.step for c in store.checkpoints("r1")] == list(range(step + 1))
    after = os.stat(store.path)
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    assert sorted(os.listdir(tmp_path)) == files  # no write-ahead log either
    w.close()  # the owner folds its journal when its execution ends
    assert os.stat(store.path).st_mtime_ns != before.st_mtime_ns
    assert [c.step for c in store.checkpoints("r1")] == list(range(5))
    assert not list(store.journal_dir.glob("*.jnl"))


def _python(code: str) -> dict:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}]}


def _saving_big(kernel_factory, scripted, tmp_path):
    """A kernel whose agent saved a 16 MiB value to a file and now waits; the script; the cell."""
    hold = tmp_path / "hold"
    hold.touch()
    wait = f"import os, time\nwhile os.path.exists({str(hold)!r}): time.sleep(0.05)\nprint('w')"
    script = [
        _python("big = bytes(range(256)) * (16 * 4096)\nprint('made', len(big))"),
        _python(wait),
        {"content": "Done."},
    ]
    scripted.set_script(script)
    cell = "%%agent --model scripted\nMake a big value."
    kernel = kernel_factory()
    run = kernel.start(cell, cell_id="cell-big")
    kernel.wait_for(run, "saved big")  # the checkpoint referring to the file is durable
    return kernel, hold, script, cell


def test_a_large_value_is_restored_from_its_file_after_a_kernel_kill(
    kernel_factory, scripted, store_path, tmp_path
):
    k1, hold, script, cell = _saving_big(kernel_factory, scripted, tmp_path)
    store = Store(store_path)
    k1.kill()
    (file,) = store.blob_dir.glob("*/*")
    assert file.stat().st_size > 16 << 20 and stat.S_IMODE(file.stat().st_mode) == 0o600
    hold.unlink()
    scripted.set_script(script)
    k2 = kernel_factory()
    result = k2.run(cell, cell_id="cell-big")
    assert result.status == "ok", result.text
    assert "Variables restored from the store: big" in result.text
    assert k2.run("print(big == bytes(range(256)) * (16 * 4096))").stdout.strip() == "True"
    with duckdb.connect(str(store_path), read_only=True) as con:
        assert con.execute(
            "SELECT count(*) FROM blobs WHERE size > 1e6 AND data IS NOT NULL"
        ).fetchone() == (0,)


def test_a_value_file_with_one_flipped_byte_is_not_restored_and_says_why(
    kernel_factory, scripted, store_path, tmp_path
):
    k1, hold, script, cell = _saving_big(kernel_factory, scripted, tmp_path)
    k1.kill()
    (file,) = Store(store_path).blob_dir.glob("*/*")
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit of the value wrong
    file.write_bytes(bytes(data))
    hold.unlink()
    scripted.set_script(script)
    k2 = kernel_factory()
    result = k2.run(cell, cell_id="cell-big")
    assert "Variables restored from the store: big" not in result.text, result.text
    assert "big is not restored" in result.text, result.text
    assert "does not match its content hash" in result.text, result.text
    assert k2.run("print('big' in globals())").stdout.strip() == "False"
    assert file.read_bytes() == bytes(data)  # kept as it is, for inspection


def test_a_200_mib_value_does_not_hold_up_agent_list(kernel_factory, scripted, tmp_path):
    done = tmp_path / "done"
    scripted.set_script(
        [_python("big = bytearray(200 * 2**20)\nprint('made')"), {"content": "Done."}]
    )
    lister = kernel_factory()
    lister.run("%agent list")  # warm: imports and the store's first open are not measured
    poll = lister.start(
        "import os, time\nworst = 0.0\nend = time.monotonic() + 90\n"
        f"while not os.path.exists({str(done)!r}) and time.monotonic() < end:\n"
        "    t = time.monotonic()\n"
        "    get_ipython().run_line_magic('agent', 'list')\n"
        "    worst = max(worst, time.monotonic() - t)\n"
        "    time.sleep(0.05)\n"
        "print('worst', worst)"
    )
    writer = kernel_factory()
    result = writer.run("%%agent --model scripted\nMake a big value.", cell_id="cell-big")
    assert result.status == "ok" and "made" in result.text, result.text
    done.touch()
    lister.wait(poll)
    worst = float(poll.stdout.split("worst")[-1])
    assert worst < 3.0, f"%agent list waited {worst:.1f} s while a 200 MiB value was stored"


def test_deleting_an_agent_on_postgres_removes_its_lock_row_but_not_a_held_one(pg_url):
    import psycopg

    from jupyter_agent.store.postgres.admin import SCHEMA

    store = open_store(pg_url)
    for run_id, agent in (("r-gone", "gone"), ("r-kept", "kept")):
        with store.agent_lock("/nb.ipynb", agent):
            w = store.writer(run_id, secrets=[])
            w.put_run(RunRow(run_id, "/nb.ipynb", agent, None, "t", "h", "m", None, None, 1.0))
            w.put_checkpoint(CheckpointRow(run_id, 0, "start", "done", "s", 1.0, 1, 0, 1), b"{}")
            w.close()

    def lock_rows() -> list[str]:
        with psycopg.connect(pg_url) as con:
            rows = con.execute(f"SELECT agent FROM {SCHEMA}.agent_locks ORDER BY agent")
            return [r[0] for r in rows.fetchall()]

    assert lock_rows() == ["gone", "kept"]
    store.delete_agent("/nb.ipynb", "gone")
    assert lock_rows() == ["kept"]
    # An agent whose lock is taken but whose run is not written yet keeps its row.
    with store.agent_lock("/nb.ipynb", "starting"):
        store.delete_agent("/nb.ipynb", "kept")
        assert lock_rows() == ["starting"]
    with store.agent_lock("/nb.ipynb", "gone"):  # the agent's name can be used again
        assert lock_rows() == ["gone", "starting"]
