"""Store and journal faults at the file level: fast, in-process, one fault per test.

These pin down the mechanisms the kernel-level tests rely on: a failed write
never leaves a half frame behind, a reader folding a dead journal never makes
it look alive, damage in the middle of a journal costs one record and is
reported, and a store written by a newer version is left exactly as it is.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import duckdb
import pytest

from jupyter_agent.errors import StoreError, StoreWarning
from jupyter_agent.store.api import CheckpointRow, RunRow
from jupyter_agent.store.duckdb import journal
from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.store.schema import SCHEMA_VERSION

from .harness import record


def run_row(run_id: str = "r1") -> RunRow:
    return RunRow(run_id, "/nb.ipynb", "a", None, "task", "h", "m", None, None, 1.0, {})


def cp(run_id: str, step: int) -> CheckpointRow:
    return CheckpointRow(run_id, step, "model", "running", f"step {step}", 1.0, 1.0, 0, 1, {})


def dead_journal(store: Path, body: str) -> None:
    """Write journal records in a child process that then dies without closing anything."""
    code = (
        textwrap.dedent(
            f"""
        import os
        from jupyter_agent.store.api import RunRow, CheckpointRow
        from jupyter_agent.store.duckdb.store import DuckDBStore as Store
        from jupyter_agent.store.rows import Record
        w = Store({str(store)!r}).writer("r1", secrets=[])
        run = RunRow("r1", "/nb.ipynb", "a", None, "t", "h", "m", None, None, 1.0, {{}})
        def cp(step):
            return CheckpointRow("r1", step, "model", "running", f"step {{step}}", 1.0, 1.0, 0, 1, {{}})
        """
        )
        + textwrap.dedent(body)
        + "\nos._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_failed_write_is_cut_back_so_later_records_stay_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "s.duckdb")
    w = store.writer("r1", secrets=[])
    w.put_run(run_row())
    w.put_checkpoint(cp("r1", 0), b"zero")
    real_write = os.write
    calls = {"n": 0}

    def short_then_full(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[:7])  # a short write...
        raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk is full

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(StoreError, match="No space left on device.*re-run the cell to resume"):
        w.put_checkpoint(cp("r1", 1), b"one" * 1000)
    monkeypatch.setattr(os, "write", real_write)
    w.put_checkpoint(cp("r1", 1), b"one")  # space freed: the run goes on
    path = next(store.journal_dir.glob("*.jnl"))
    found = journal.decode(path.read_bytes())
    assert not found.damaged and not found.torn
    assert [r.row.get("step") for r in found.records] == [None, 0, 1]
    w.close()
    assert [c.step for c in store.checkpoints("r1")] == [0, 1]
    record(
        "state",
        "short write, then ENOSPC",
        injection="os.write writes 7 bytes of a frame, then fails with ENOSPC",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="StoreError naming the cause; the half frame cut off; the next write and "
        "every earlier record readable",
    )


def test_a_reader_folding_a_dead_journal_does_not_make_it_look_alive(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    dead_journal(path, "w.put_run(run)\nw.put_checkpoint(cp(0), b'x')\n")
    store = Store(path)
    held = journal.scan(store.journal_dir)  # what a merging reader holds meanwhile
    try:
        assert [j.live for j in held] == [False]
        assert store.live_runs() == set()  # a locking merger used to read as "running"
    finally:
        for j in held:
            j.close()
    assert [r.run_id for r in store.runs()] == ["r1"]


def test_a_forked_child_does_not_keep_a_crashed_run_alive(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    dead_journal(
        path,
        """
        w.put_run(run)
        ready, tell = os.pipe()
        if os.fork() == 0:  # a worker forked by the agent's code, outliving the kernel
            import time
            os.write(tell, b"up")  # its fork handlers have run: it is as it will stay
            time.sleep(3)
            os._exit(0)
        os.read(ready, 2)
        """,
    )
    assert Store(path).live_runs() == set()


def test_damage_mid_journal_costs_one_record_and_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    dead_journal(path, "w.put_run(run)\nfor i in range(5):\n    w.put_checkpoint(cp(i), b'p')\n")
    jnl = next((tmp_path / "s.duckdb.journal").glob("*.jnl"))
    data = bytearray(jnl.read_bytes())
    found = journal.decode(bytes(data))
    data[found.offsets[3] + 15] ^= 0xFF  # inside checkpoint 2
    jnl.write_bytes(bytes(data))
    store = Store(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        steps = [c.step for c in store.checkpoints("r1")]
    assert steps == [0, 1, 3, 4]  # the records after the damage were recovered
    assert any(issubclass(w.category, StoreWarning) and "damaged" in str(w.message) for w in caught)
    kept = list(jnl.parent.glob("*.damaged"))
    assert len(kept) == 1 and kept[0].read_bytes() == bytes(data)
    with pytest.raises(StoreError, match="Checkpoint 2 of run r1 is missing"):
        store.payloads([("r1", None)])
    record(
        "state",
        "CRC damage in a journal",
        injection="one byte flipped in the third of five checkpoint frames of a dead journal",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="four intact checkpoints folded (resynchronised past the bad frame); the "
        "file kept as *.damaged with a StoreWarning; loading the run refused",
    )


def test_a_frame_with_valid_crc_but_garbage_inside_is_damage_not_a_crash() -> None:
    body = b"\x05\x00\x00\x00{nope" + b"payload"
    import struct
    import zlib

    frame = struct.pack("<4sII", journal.MAGIC, len(body), zlib.crc32(body)) + body
    good = journal.encode(journal.Record("runs", {"x": 1}))
    found = journal.decode(good + frame + good)
    assert len(found.records) == 2 and found.damaged


def test_records_of_a_newer_version_stay_in_their_journal(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    dead_journal(
        path,
        """
        w.put_run(run)
        w._append(Record("annotations", {"run_id": "r1", "note": "from the future"}, b""))
        w.put_checkpoint(cp(0), b'x')
        """,
    )
    store = Store(path)
    assert [c.step for c in store.checkpoints("r1")] == [0]
    kept = list(store.journal_dir.glob("*.jnl"))
    assert len(kept) == 1  # not deleted: the unknown record is waiting for a newer version
    store.flush()
    assert [c.step for c in store.checkpoints("r1")] == [0]


def test_a_newer_store_is_not_touched_even_when_it_lacks_our_tables(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    Store(path).flush()
    with duckdb.connect(str(path)) as con:
        con.execute("ALTER TABLE blobs RENAME TO values_v2")
        con.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)]
        )
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer jupyter-agent"):
        Store(path).runs()
    assert path.read_bytes() == before
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        tables = {r[0] for r in rows}
    assert "blobs" not in tables  # the old code created it before checking the version


def test_store_path_problems_are_store_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    # Reading creates nothing, so a path no store can be at reads as an empty store;
    # the first write (what a run does first) says what is wrong with it.
    assert Store(tmp_path / "file" / "sub" / "s.duckdb").runs() == []
    with pytest.raises(StoreError, match="Cannot create the agent store directory"):
        Store(tmp_path / "file" / "sub" / "s.duckdb").flush()
    with pytest.raises(StoreError, match="cannot be used"):
        Store(tmp_path / "file" / "s.duckdb").flush()


def caught_warnings(fn):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn()
    return value, [str(w.message) for w in caught if issubclass(w.category, StoreWarning)]


def test_a_malformed_record_sets_its_journal_aside_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    dead_journal(path, "w.put_run(run)\nw.put_checkpoint(cp(0), b'p')\n")
    store = Store(path)
    assert [r.run_id for r in store.runs()] == ["r1"]
    # A second run whose checkpoint lacks a column: CRC-valid, but not a row.
    w = store.writer("r2", secrets=[])
    w.put_run(RunRow("r2", "/nb.ipynb", "b", None, "t", "h", "m", None, None, 2.0, {}))
    w._append(journal.Record("checkpoints", {"run_id": "r2", "step": 0, "kind": "model"}, b"x"))
    w.put_checkpoint(cp("r2", 1), b"y")
    w.close(merge=False)
    runs, texts = caught_warnings(store.runs)
    assert sorted(r.run_id for r in runs) == ["r1", "r2"]  # every agent still works
    assert [c.step for c in store.checkpoints("r1")] == [0]
    assert [c.step for c in store.checkpoints("r2")] == [1]
    kept = list(store.journal_dir.glob("r2.*" + journal.DAMAGED_SUFFIX))
    assert len(kept) == 1 and any(kept[0].name in t for t in texts), texts
    # A value DuckDB itself refuses (out of range): that journal is set aside whole.
    w = store.writer("r3", secrets=[])
    w.put_run(RunRow("r3", "/nb.ipynb", "c", None, "t", "h", "m", None, None, 3.0, {}))
    w.put_checkpoint(cp("r3", 2**40), b"z")
    w.close(merge=False)
    runs, texts = caught_warnings(store.runs)
    assert sorted(r.run_id for r in runs) == ["r1", "r2"]
    kept = list(store.journal_dir.glob("r3.*" + journal.DAMAGED_SUFFIX))
    assert len(kept) == 1 and any("could not be stored" in t for t in texts), texts
    record(
        "state",
        "a malformed journal record",
        injection="a CRC-valid checkpoint record missing its required columns",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="the record skipped, the journal kept as *.damaged with a StoreWarning naming "
        "it; every other run and agent readable",
    )


def test_things_named_like_journals_are_skipped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    dead_journal(path, "w.put_run(run)\nw.put_checkpoint(cp(0), b'p')\n")
    jdir = tmp_path / "s.duckdb.journal"
    (jdir / "adir.1.x.jnl").mkdir()
    (jdir / "loop.1.x.jnl").symlink_to("loop.1.x.jnl")
    os.mkfifo(jdir / "fifo.1.x.jnl")
    store = Store(path)
    runs, texts = caught_warnings(store.runs)
    assert [r.run_id for r in runs] == ["r1"]
    for name in ("adir", "loop", "fifo"):
        assert any(f"{name}.1.x.jnl was skipped" in t for t in texts), (name, texts)
    assert store.live_runs() == set()


def test_a_bad_query_is_the_callers_bug_not_a_damaged_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    store.flush()
    # The DuckDB backend's own connection: a query of its code that is wrong.
    with pytest.raises(duckdb.BinderException), store._connect() as con:
        con.execute("SELECT no_such_column FROM runs")
    assert store.runs() == []


def test_a_foreign_wal_gets_its_own_advice(tmp_path: Path) -> None:
    ours, other = Store(tmp_path / "a" / "s.duckdb"), tmp_path / "b" / "t.duckdb"
    ours.flush()
    other.parent.mkdir()
    code = (
        f"import duckdb, os; c = duckdb.connect({str(other)!r}); "
        "c.execute('PRAGMA disable_checkpoint_on_shutdown'); "
        "c.execute('CREATE TABLE t AS SELECT 1 AS x'); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    wal = ours.path.with_name(ours.path.name + ".wal")
    wal.write_bytes(other.with_name(other.name + ".wal").read_bytes())
    with pytest.raises(StoreError) as err:
        ours.runs()
    text = str(err.value)
    assert "does not belong to the agent store" in text and f"Move {wal} aside" in text, text
    assert "start a new store" not in text
    wal.rename(wal.with_name("aside.wal"))
    assert ours.runs() == []


@pytest.fixture
def tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN); see docs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_and_read_only_disks_say_so_and_a_read_only_store_still_reads(tmpfs: Path) -> None:
    store = Store(tmpfs / "s.duckdb")
    w = store.writer("r1", secrets=[])
    w.put_run(run_row())
    w.put_checkpoint(cp("r1", 0), b"small")
    w.close()
    w = store.writer("r1", secrets=[])
    w.put_checkpoint(cp("r1", 1), os.urandom(2_500_000))  # fits the journal, not DuckDB too
    w.close(merge=False)  # a finished execution's journal is folded by the next open
    with pytest.raises(StoreError) as err:
        store.flush()
    text = str(err.value)
    assert "the disk is full" in text and "Free space" in text and "move it aside" not in text
    (store.journal_dir / next(store.journal_dir.glob("*.jnl")).name).unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    try:
        assert [r.run_id for r in store.runs()] == ["r1"]  # listed
        assert [bytes(p) for _, p in store.payloads([("r1", None)])] == [b"small"]  # restorable
        with store.agent_lock("/nb.ipynb", "a"):  # nobody can write here: no lock to take
            pass
        with pytest.raises(StoreError, match="cannot be written|Read-only file system") as err:
            store.delete_runs(["r1"])
        assert "move it aside" not in str(err.value)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    record(
        "state",
        "full disk while folding; read-only store",
        injection="a 4 MiB tmpfs filled by a fold; then remounted read-only",
        trials=2,
        completed=2,
        lost=0,
        duplicated=0,
        outcome="'the disk is full … free space' (no advice to start over); the read-only "
        "store opened read-only: listed and restored from",
    )


def test_a_journaled_row_reads_back_as_written_whatever_its_values() -> None:
    """Rows are framed with orjson, and with json where orjson would refuse or change a
    value: each reads back equal to what json itself would have written."""
    import json
    import math

    from jupyter_agent.store.rows import Record

    odd = [
        {"summary": "plain ascii", "tokens": 3, "created_at": 1.5, "info": "{}"},
        {"summary": 'ünïcödé ✓ and a quote " and a \\ and \n', "size": 0},
        {"summary": "a lone surrogate \udc80", "step": 2},
        {"tokens": 2**70, "step": -(2**65)},  # past 64 bits
        {"duration_ms": float("nan")},
        {"duration_ms": float("inf"), "created_at": float("-inf")},
        {"info": None, "ok": True, "f": 1e300},
    ]
    data = b"".join(journal.encode(Record("checkpoints", row, b"\x00payload")) for row in odd)
    found = journal.decode(data)
    assert not found.damaged and not found.torn and len(found.records) == len(odd)
    for row, framed in zip(odd, found.records, strict=True):
        expected = json.loads(json.dumps(row))
        assert framed.payload == b"\x00payload"
        for key, value in expected.items():
            got = framed.row[key]
            if isinstance(value, float) and math.isnan(value):
                assert isinstance(got, float) and math.isnan(got)
            else:
                assert got == value and type(got) is type(value), (key, got, value)
