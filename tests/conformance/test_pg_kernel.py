"""PostgreSQL only, in real kernels: SIGKILL mid tool call, then resume in a new kernel.

The kernels get ``JUPYTER_AGENT_STORE=<postgresql URL>``; the request log of the
scripted server shows that no completed step is requested twice.
"""

from __future__ import annotations

import time

from jupyter_agent.store_pg import PostgresStore
from jupyter_agent.testing import ScriptedServer

from ..test_durable_kernel import CELL, counting_script


def test_kill_during_tool_resumes_from_postgres(
    kernel_factory, scripted: ScriptedServer, tmp_path, pg_url
):
    log = tmp_path / "effects.log"
    scripted.set_script(counting_script(log, slow_step=1))
    k1 = kernel_factory(JUPYTER_AGENT_STORE=pg_url)
    run = k1.start(CELL, cell_id="cell-pg")
    k1.wait_for(run, "time.sleep(5)")
    deadline = time.monotonic() + 20
    while log.read_text().count("step1") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    store = PostgresStore(pg_url)
    (row,) = store.runs()
    assert store.live_runs() == {row.run_id}  # its kernel holds the run's lock
    k1.kill()
    assert scripted.turns_requested() == [0, 1]
    deadline = time.monotonic() + 10
    while store.live_runs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.live_runs() == set()  # the dead kernel's session released it

    k2 = kernel_factory(JUPYTER_AGENT_STORE=pg_url)
    scripted.set_script(counting_script(log))
    result = k2.run(CELL, cell_id="cell-pg")
    assert result.status == "ok", result.text
    assert "↻ resuming after step" in result.text
    assert "Variables restored from the store: a" in result.text
    assert "Finished: c == 3." in result.text
    # Turns 0 and 1 were answered before the kill and are never requested again.
    assert scripted.turns_requested() == [0, 1, 2, 3]
    assert log.read_text().splitlines() == ["step0", "step1", "step1", "step2"]
    assert k2.run("print(a, b, c)").stdout.strip() == "1 2 3"
    assert [r.run_id for r in store.runs()] == [row.run_id]  # resumed, not restarted
    listing = k2.run("%agent list").stdout
    assert "cell-cell-pg" in listing and "done" in listing
