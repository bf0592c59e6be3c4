"""The durability setting: what each mode syncs, and the crash each one survives.

``sync`` (the default) makes every step durable against a machine crash with one
``fdatasync`` of the run's journal; what a crash mid-write can leave in the journal
(a torn tail, a damaged frame) is covered by the journal's tests in test_store.py
and tests/faults. ``process`` never syncs, and survives the kernel's SIGKILL: the
page cache outlives the process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from jupyter_agent.config import RunPolicy
from jupyter_agent.errors import UsageProblem
from jupyter_agent.store.api import CheckpointRow, RunRow
from jupyter_agent.store.duckdb.store import DuckDBStore
from jupyter_agent.testing import ScriptedServer

from .test_durable_kernel import CELL, counting_script

#: Wraps ``os.fdatasync`` in a kernel so each sync of a journal is logged to a file.
COUNT_JOURNAL_SYNCS = """
import os as _os
_real_fdatasync = _os.fdatasync
def _logged_fdatasync(fd, _real=_real_fdatasync):
    if _os.readlink(f"/proc/self/fd/{{fd}}").endswith(".jnl"):
        with open({log!r}, "a") as _f:
            _f.write("sync\\n")
    return _real(fd)
_os.fdatasync = _logged_fdatasync
"""


def journal_syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The descriptors ``fdatasync`` is called on from now on, in this process."""
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(fd) or real(fd))
    return synced


def write_one_step(store: DuckDBStore, durability: str) -> None:
    writer = store.writer("r1", durability=durability)
    writer.put_run(RunRow("r1", "/nb", "a", None, "t", "h", "m", None, None, 1.0, {}))
    writer.put_checkpoint(CheckpointRow("r1", 0, "start", "running", "s", 1.0, 0, 0, 1, {}), b"x")
    writer.close(merge=False)


def test_sync_syncs_each_checkpoint_and_process_never(tmp_path, monkeypatch):
    synced = journal_syncs(monkeypatch)
    write_one_step(DuckDBStore(tmp_path / "sync.duckdb"), "sync")
    assert synced  # durable before the writer returns
    del synced[:]
    store = DuckDBStore(tmp_path / "process.duckdb")
    write_one_step(store, "process")
    assert synced == []  # written to the OS only, closing included
    assert [c.step for c in store.checkpoints("r1")] == [0]  # and readable all the same


def test_an_unknown_mode_is_a_one_line_error():
    with pytest.raises(UsageProblem, match="durability must be 'sync' or 'process', not 'fast'"):
        RunPolicy(durability="fast")
    assert RunPolicy().durability == "sync"


@pytest.mark.parametrize("mode", ["sync", "process"])
def test_each_mode_survives_a_kernel_sigkill(
    kernel_factory, scripted: ScriptedServer, tmp_path: Path, mode: str
):
    """SIGKILLed in its second tool call, the run resumes in a new kernel losing no step."""
    effects, syncs = tmp_path / "effects.log", tmp_path / "syncs.log"
    scripted.set_script(counting_script(effects, slow_step=1))
    k1 = kernel_factory()
    setup = f"%config AgentMagics.durability = {mode!r}\n" + COUNT_JOURNAL_SYNCS.format(
        log=str(syncs)
    )
    assert k1.run(setup).status == "ok"
    run = k1.start(CELL, cell_id="cell-d")
    k1.wait_for(run, "time.sleep(5)")
    deadline = time.monotonic() + 20
    while "step1" not in effects.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    k1.kill()
    synced = syncs.read_text().count("sync") if syncs.exists() else 0
    if mode == "sync":
        # The run's start, then one per step: step 0's result (a python call's start and
        # the reply before it are synced with the call's result; step 1 has none yet).
        assert synced == 2
    else:
        assert synced == 0

    k2 = kernel_factory()
    assert k2.run(f"%config AgentMagics.durability = {mode!r}").status == "ok"
    scripted.set_script(counting_script(effects))
    result = k2.run(CELL, cell_id="cell-d")
    assert result.status == "ok", result.text
    assert "↻ resuming after step" in result.text
    assert "Finished: c == 3." in result.text
    assert scripted.turns_requested() == [0, 1, 2, 3]  # no answered model call asked again
    assert effects.read_text().splitlines() == ["step0", "step1", "step1", "step2"]
    assert k2.run("print(a, b, c)").stdout.strip() == "1 2 3"


def test_a_bad_mode_in_the_kernel_is_refused_in_one_line(kernel_factory):
    result = kernel_factory().run("%config AgentMagics.durability = 'fast'")
    assert "durability" in result.text and "'sync'" in result.text
