"""State faults: values that cannot be saved, huge values, changed classes, newer or damaged stores, full disks.

Each case runs a scripted agent in a real kernel, injects the fault, and checks
three things: the user gets a clear message (a notice or a one-paragraph
UsageError, never a traceback), nothing already stored is lost, and a damaged
or newer store is never rewritten behind the user's back.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dill
import duckdb
import pytest

from jupyter_agent.store.api import CheckpointRow as Row
from jupyter_agent.store.duckdb import statefile
from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.store.open import open_store

from ..conftest import BACKENDS
from ..pg import PgServer
from .harness import AgentEnv, Backend, record, transcript


def tool(code: str, text: str = "Working.") -> dict:
    return {"content": text, "tool_calls": [{"name": "python", "arguments": {"code": code}}]}


def done(text: str = "Finished.") -> dict:
    return {"content": text}


def clean(execution) -> bool:  # type: ignore[no-untyped-def]
    return execution.status == "ok" and "Traceback" not in execution.text


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentEnv]:
    e = AgentEnv(tmp_path_factory.mktemp("state-faults"))
    yield e
    e.close()


@pytest.fixture(scope="module")
def pg_env(tmp_path_factory: pytest.TempPathFactory, pg_server: PgServer) -> Iterator[AgentEnv]:
    root = tmp_path_factory.mktemp("state-faults-pg")
    e = AgentEnv(root, Backend("postgres", root, pg_server))
    yield e
    e.close()


@pytest.fixture(params=BACKENDS)
def any_env(request: pytest.FixtureRequest) -> AgentEnv:
    """The module's kernel on each backend: for the restore tests, which hold on both."""
    return request.getfixturevalue("pg_env" if request.param == "postgres" else "env")


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "-"


def tree_digest(path: Path) -> dict[str, str]:
    """Digest of the DuckDB file and of every journal beside it.

    Not of what a read keeps for the next one (an agent's timeline, the store's summary):
    a read rewrites them when they are stale, and they are trusted only while current.
    """
    out = {path.name: file_digest(path)}
    jdir = path.with_name(path.name + ".journal")
    if jdir.is_dir():
        kept = (statefile.TIMELINE, statefile.SUMMARY)
        out |= {p.name: file_digest(p) for p in sorted(jdir.iterdir()) if not p.name.endswith(kept)}
    return out


# -- values that cannot be saved -------------------------------------------------------

UNPICKLABLE = """\
import socket, sqlite3, threading
gen = (i * i for i in range(5))
sock = socket.socket()
conn = sqlite3.connect(':memory:')
cur = conn.cursor()
lock = threading.Lock()
with open('report.csv', 'w') as report:
    report.write('a,b\\n1,2\\n')
handle = open('log.txt', 'a')
ok = {'answer': 42}
print('made them')
"""


def test_unpicklable_values_are_reported_and_the_rest_survives_a_crash(any_env: AgentEnv) -> None:
    env = any_env
    result = env.agent([tool(UNPICKLABLE), done()])
    assert clean(result), result.text
    for name in ("gen", "sock", "conn", "cur", "handle"):
        assert f"not saved: {name}:" in result.text, result.text
    assert "not saved: report" not in result.text  # a closed file is not state: no warning
    view = env.view()
    assert view.state.status == "done"
    assert {"gen", "sock", "conn", "cur", "handle"} <= set(view.state.unsaved)
    assert "report" not in view.state.unsaved and "report" not in view.state.vars
    assert {"ok", "lock"} <= set(view.state.vars)

    env.restart()  # a crash after the run; the user re-runs the cell in a new kernel
    again = env.rerun()
    assert clean(again), again.text
    assert "Variables restored from the store:" in again.text and "ok" in again.text
    assert "gen is not restored: generator cannot be saved" in again.text
    check = env.run("print(ok['answer'], open('report.csv').read().splitlines())")
    assert "42 ['a,b', '1,2']" in check.text, check.text  # the agent's file was not emptied
    record(
        "state",
        "unpicklable values" + env.backend.suffix,
        injection="generator, socket, sqlite connection and cursor, open and closed files, lock",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="each reported by name with the reason; saveable values restored after a "
        "kernel kill; files the agent wrote are never reopened by a restore",
    )


def test_restoring_a_closed_write_file_never_empties_it(env: AgentEnv, tmp_path: Path) -> None:
    """Regression: dill restored file objects by reopening them, 'w' mode truncating."""
    target = env.cwd / "keep.txt"
    target.write_text("precious\n")
    with open(target) as f:  # a blob as older versions stored it
        old_blob = dill.dumps(f, protocol=5, recurse=True)
    from jupyter_agent.namespace.tracking import restore

    ns: dict = {}
    restored, failed = restore(ns, {"f": "h"}, lambda hashes: {"h": old_blob})
    assert restored == [] and "file object" in failed["f"]
    assert target.read_text() == "precious\n"


# -- very large values -----------------------------------------------------------------

LARGE = """\
import hashlib, os
import numpy as np
big = os.urandom(64 * 2**20)
arr = np.random.default_rng(0).random(6_500_000)
print(hashlib.sha256(big).hexdigest()[:16], hashlib.sha256(arr.tobytes()).hexdigest()[:16])
"""


def test_large_values_are_checkpointed_and_restored(any_env: AgentEnv) -> None:
    env = any_env
    pytest.importorskip("numpy")
    started = time.monotonic()
    result = env.agent([tool(LARGE), done()])
    elapsed = time.monotonic() - started
    assert clean(result), result.text
    digests = result.text.split("Working.")[-1].split()
    sizes = open_store(env.store).sizes()
    stored = sum(sizes.values())
    env.restart()
    started = time.monotonic()
    again = env.rerun()
    restore_s = time.monotonic() - started
    assert clean(again), again.text
    check = env.run(
        "import hashlib\n"
        "print(hashlib.sha256(big).hexdigest()[:16], hashlib.sha256(arr.tobytes()).hexdigest()[:16])"
    )
    assert check.text.split()[:2] == [d for d in digests if len(d) == 16][:2], (check.text, digests)
    assert stored > 110 * 2**20, sizes  # both values are stored whole
    if "blobs" in sizes:  # DuckDB: each is a file beside the store, which holds references
        assert sizes["blobs"] > 110 * 2**20 and sizes["duckdb"] < 16 * 2**20, sizes
    record(
        "state",
        "large values" + env.backend.suffix,
        injection="64 MiB bytes and a 52 MB numpy array made in one step",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome=f"run {elapsed:.1f} s, restore in a new kernel {restore_s:.1f} s, "
        f"store {stored / 2**20:.0f} MiB; values identical after restore",
    )


def test_a_kill_while_a_large_value_is_written_resumes(any_env: AgentEnv) -> None:
    env = any_env
    script = [tool("big2 = bytes(range(256)) * (2**18)\nprint(len(big2))"), done()]
    result = env.agent(script, crash="torn:blob:1")  # dies as the 64 MiB value is written
    assert result.status is None or "Traceback" not in result.text
    view = env.view()  # readable, the torn write ignored
    assert view.checkpoints[-1].kind == "tool_call"
    again = env.rerun()
    assert clean(again), again.text
    assert env.view().state.status == "done"
    check = env.run("print(len(big2), big2[:3])")
    assert "67108864 b'\\x00\\x01\\x02'" in check.text
    on_duckdb = env.backend.name == "duckdb"  # PostgreSQL has no frame to tear
    record(
        "state",
        "kill mid-write of a large value" + env.backend.suffix,
        injection="crash hook torn:blob:1 (SIGKILL "
        + (
            "after half of a 64 MiB journal frame)"
            if on_duckdb
            else "as the 64 MiB value is written, before its checkpoint's transaction)"
        ),
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome=("torn frame ignored" if on_duckdb else "nothing half-stored")
        + "; the in-flight tool call ran again; value restored",
    )


# -- classes that change between runs --------------------------------------------------

CLASSES = """\
import shapes
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm(self):
        return (self.x ** 2 + self.y ** 2) ** 0.5
p = Point(3, 4)
sq = shapes.Square(2)
print(p.norm(), sq.area())
"""


def test_classes_redefined_between_runs(any_env: AgentEnv) -> None:
    env = any_env
    (env.cwd / "shapes.py").write_text(
        "class Square:\n    def __init__(self, side):\n        self.side = side\n"
        "    def area(self):\n        return self.side ** 2\n"
    )
    result = env.agent([tool(CLASSES), done()])
    assert clean(result) and "5.0 4" in result.text, result.text
    # The module's class is renamed and the notebook redefines Point differently.
    (env.cwd / "shapes.py").write_text("class Rectangle:\n    pass\n")
    env.restart()
    user = env.run("class Point:\n    def __init__(self, a):\n        self.a = a\n")
    assert user.status == "ok"
    again = env.rerun()
    assert clean(again), again.text
    assert "sq cannot be restored (AttributeError" in again.text, again.text
    check = env.run("print(p.norm(), type(p) is Point)")
    assert "5.0 True" in check.text, check.text  # the agent's class came back with its instance
    view = env.view()
    assert view.state.status == "done" and "sq" in view.state.vars  # still stored, not dropped
    record(
        "state",
        "classes redefined" + env.backend.suffix,
        injection="a class in a module renamed, a notebook class redefined, kernel restarted",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="instance of the vanished class reported (not restored, still stored); the "
        "agent's own class restored with its instance",
    )


# -- newer versions --------------------------------------------------------------------


def test_a_store_from_a_newer_version_is_refused_untouched(env: AgentEnv) -> None:
    result = env.agent([tool("x = 1"), done()])
    assert clean(result)
    with duckdb.connect(str(env.store)) as con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    before = tree_digest(env.store)
    refused = env.rerun()
    assert "UsageError" in refused.text and "newer jupyter-agent" in refused.text
    assert "Traceback" not in refused.text
    fresh = env.rerun(body="A new task.")  # a new run must not touch it either
    assert "newer jupyter-agent" in fresh.text
    assert tree_digest(env.store) == before
    with duckdb.connect(str(env.store)) as con:
        con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    restored = env.rerun()
    assert clean(restored) and "finished earlier" in restored.text
    record(
        "state",
        "newer store schema",
        injection="meta.schema_version set to 99",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="UsageError 'written by a newer jupyter-agent'; files byte-identical afterwards",
    )


def test_a_checkpoint_from_a_newer_version_is_refused(env: AgentEnv) -> None:
    script = [tool("x = 1"), tool("y = 2"), done()]
    result = env.agent(script, options="--max-steps 1")
    assert clean(result) and "step limit" in result.text
    view = env.view()
    last = view.checkpoints[-1]
    w = Store(env.store).writer(last.run_id)
    newer = json.dumps({"v": 99, "messages": [], "shape": "unknown"}).encode()
    w.put_checkpoint(
        Row(
            last.run_id,
            last.step + 1,
            "model",
            "running",
            "from the future",
            time.time(),
            1.0,
            0,
            len(newer),
            {},
        ),
        newer,
    )
    w.close()
    before = tree_digest(env.store)
    refused = env.rerun()
    assert "UsageError" in refused.text and "state version 99" in refused.text, refused.text
    assert "Traceback" not in refused.text
    assert tree_digest(env.store) == before
    record(
        "state",
        "newer checkpoint payload",
        injection="a checkpoint whose delta says state version 99",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="UsageError 'newer jupyter-agent (state version 99…)'; nothing written",
    )


# -- damaged stores --------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated"])
def test_a_damaged_duckdb_file_is_reported_and_never_overwritten(
    env: AgentEnv, damage: str
) -> None:
    result = env.agent([tool("x = 1"), done()])
    assert clean(result)
    good = env.store.read_bytes()
    bad = bytearray(good)
    if damage == "truncated":
        bad = bad[: len(bad) // 3]
    else:
        for offset in range(12_288, len(bad), 4096):
            bad[offset : offset + 8] = b"\xde\xad\xbe\xef" * 2
    env.store.write_bytes(bytes(bad))
    for attempt in (env.rerun(), env.rerun(body="Another task.")):
        assert "UsageError" in attempt.text and "left untouched" in attempt.text, attempt.text
        assert "Traceback" not in attempt.text
    assert env.store.read_bytes() == bytes(bad)  # never "repaired" into an empty store
    env.store.write_bytes(good)
    restored = env.rerun()
    assert clean(restored) and "finished earlier" in restored.text
    record(
        "state",
        f"DuckDB file {damage}",
        injection="every 4 KiB block after the first three overwritten"
        if damage == "flipped bytes"
        else "file cut to a third of its size",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="UsageError 'cannot be used … left untouched'; the file was not modified; "
        "with the original file back everything was there",
    )


def _dead_journal(env: AgentEnv, reference_script: list[dict], crash: str) -> Path:
    result = env.agent(reference_script, crash=crash)
    assert result.status is None or "Traceback" not in result.text
    journals = sorted((env.store.parent / (env.store.name + ".journal")).glob("*.jnl"))
    assert len(journals) == 1, journals
    return journals[0]


SCRIPT3 = [tool(f"v{i} = {i}\nprint('step', {i})", f"Step {i}.") for i in range(3)] + [done()]


def test_a_torn_journal_tail_resumes_from_the_last_intact_checkpoint(env: AgentEnv) -> None:
    reference = env.agent(SCRIPT3)
    assert clean(reference)
    expected = transcript(env.view().state)
    outcomes = []
    for cut in (0.9, 0.6, 0.3):
        path = _dead_journal(env, SCRIPT3, crash="after:checkpoint.tool_result:3")
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut)])
        again = env.rerun()
        assert clean(again), again.text
        view = env.view()
        assert view.state.status == "done" and transcript(view.state) == expected
        outcomes.append(cut)
    record(
        "state",
        "journal truncated",
        injection="the dead journal of a killed run cut to 90 %, 60 %, 30 % of its length",
        trials=len(outcomes),
        completed=len(outcomes),
        lost=0,
        duplicated=0,
        outcome="the run resumed from the last intact record and finished with the "
        "uninterrupted transcript (steps past the cut ran again: they were not on disk)",
    )


def test_a_damaged_journal_is_kept_and_the_run_refused_not_rewritten(env: AgentEnv) -> None:
    path = _dead_journal(env, SCRIPT3, crash="after:checkpoint.tool_result:3")
    data = bytearray(path.read_bytes())
    from jupyter_agent.store.duckdb import journal

    found = journal.decode(bytes(data))
    victim = next(  # the second model reply's frame, in the middle of the journal
        off
        for i, (off, rec) in enumerate(zip(found.offsets, found.records, strict=True))
        if rec.label == "checkpoint.model" and i > 3
    )
    data[victim + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    again = env.rerun()
    assert "Traceback" not in again.text
    assert "damaged data" in again.text  # StoreWarning naming the file
    assert "UsageError" in again.text and "is missing from the store" in again.text, again.text
    kept = list(path.parent.glob("*.damaged"))
    assert len(kept) == 1 and kept[0].read_bytes() == bytes(data)
    rows = Store(env.store).checkpoints(found.records[1].row["run_id"])
    assert len(rows) == sum(r.table == "checkpoints" for r in found.records) - 1  # all others
    fresh = env.rerun(options="--restart")
    assert clean(fresh), fresh.text
    record(
        "state",
        "journal damaged mid-file",
        injection="one byte flipped inside a checkpoint frame in the middle of a dead journal",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="intact frames before and after it folded in; the file kept as *.damaged with "
        "a warning; resuming that run refused with a UsageError naming the missing checkpoint",
    )


# -- full or read-only disks -----------------------------------------------------------

FILL = [
    tool("a = 1\nprint('small')", "Step 0."),
    tool("blob = bytes(range(256)) * 8192\nprint(len(blob))", "Step 1."),
    tool("b = 2\nprint('small again')", "Step 2."),
    done(),
]


def test_file_size_limit_stops_at_a_checkpoint_and_resumes(env: AgentEnv) -> None:
    reference = env.agent(FILL)
    assert clean(reference)
    expected = transcript(env.view().state)
    # A new agent in a kernel that may not grow any file much past the store's size.
    env.n += 1
    env.store = env.root / f"s{env.n}" / "agents.duckdb"
    env.cell_id = f"a{env.n}"
    Store(env.store).flush()
    env.server.reset_log()
    limit = env.store.stat().st_size + 512 * 1024  # DuckDB still fits; the 2 MiB value not
    env.run(
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))"
    )
    try:
        failed = env.rerun()
    finally:
        env.run(
            "resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, "
            "resource.RLIM_INFINITY))"
        )
    assert "UsageError" in failed.text and "File too large" in failed.text, failed.text
    assert "re-run the cell to resume" in failed.text and "Traceback" not in failed.text
    before = env.view()
    again = env.rerun()
    assert clean(again), again.text
    after = env.view()
    assert after.state.status == "done" and transcript(after.state) == expected
    assert set(before.keys()) <= set(after.keys())
    record(
        "state",
        "disk full (RLIMIT_FSIZE)",
        injection="RLIMIT_FSIZE in the kernel: no file past the store's size + 512 KiB; "
        "the agent makes a 2 MiB value",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="UsageError 'File too large … re-run the cell to resume'; the journal cut "
        "back to its last whole record; resumed to the uninterrupted transcript",
    )


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    ok = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if ok.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN); see docs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_and_read_only_filesystems(env: AgentEnv, tmpfs: Path) -> None:
    env.n += 1
    env.store = tmpfs / "agents.duckdb"
    env.cell_id = f"a{env.n}"
    env.server.set_script(
        [
            tool("x = 1", "Step 0."),
            tool("import os\ny = os.urandom(5 * 2**20)\nprint(len(y))", "Step 1."),
            done(),
        ]
    )
    env.server.reset_log()
    full = env.rerun()
    assert "UsageError" in full.text and "No space left on device" in full.text, full.text
    assert "Traceback" not in full.text
    subprocess.run(["mount", "-o", "remount,size=64m", str(tmpfs)], check=True)
    healed = env.rerun()
    assert clean(healed), healed.text
    assert env.view().state.status == "done"
    before = tree_digest(env.store)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    try:
        ro = env.rerun(body="A new task on a read-only disk.")
        assert "UsageError" in ro.text and "Traceback" not in ro.text, ro.text
        assert "Read-only file system" in ro.text or "read-only" in ro.text.lower()
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    assert tree_digest(env.store) == before
    record(
        "state",
        "disk full (tmpfs) and read-only",
        injection="store on a 4 MiB tmpfs, a 5 MiB value; then the tmpfs remounted read-only",
        trials=2,
        completed=2,
        lost=0,
        duplicated=0,
        outcome="UsageError 'No space left on device'; resumed after the tmpfs grew; a "
        "read-only store gives a UsageError and is left as it was",
    )
