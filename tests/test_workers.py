"""The worker pool: ``jupyter agent submit | worker | jobs | cancel`` on DBOS queues.

Real kernels, the CLI as subprocesses, a DuckDB store (its queue in a SQLite file
beside it) and, in tests/conformance/test_pg_workers.py, PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jupyter_agent.cli.resume import CANCEL_GRACE
from jupyter_agent.store import queue
from jupyter_agent.store.open import open_store
from jupyter_agent.testing import ScriptedServer

from .kernels import ended
from .test_cli import SETUP, cli, notebook, outputs_text
from .test_cli_resume import one_line_refusal
from .test_durable_kernel import tool

pytest.importorskip("dbos", reason="pip install 'jupyter-agent-cells[workers]'")


def agent_cell(n: int, name: str | None = None) -> str:
    """An agent cell whose prompt names its notebook (the scripted server's requests say whose)."""
    named = f" --name {name}" if name else ""
    return f"%%agent --model scripted{named}\nNotebook {n}: build a and b."


def script(log: Path, *, sleep: float = 0.0) -> list[dict]:
    """Two tool steps that append to ``log`` (to count executions), then an answer."""
    steps = []
    for i in range(2):
        pause = f"import time; time.sleep({sleep})\n" if sleep else ""
        pause = "import os\n" + pause
        code = f"{pause}with open({str(log)!r}, 'a') as f: f.write(os.environ['JUPYTER_AGENT_NOTEBOOK'] + ' step{i}\\n')"
        steps.append(tool(code))
    return [*steps, {"content": "Done."}]


class Workers:
    """``jupyter agent worker`` processes, each stopped (SIGTERM, else SIGKILL) by its PID."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env, self.procs = env, []
        self.ids: list[str] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_agent", "worker", *args],
            env={**os.environ, **(env or self.env)},
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.procs.append(proc)
        line = proc.stderr.readline() if proc.stderr else ""
        assert line.startswith("Worker "), line + (proc.stderr.read() if proc.stderr else "")
        self.ids.append(line.split()[1])
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def worker_pool(env: dict[str, str]) -> Iterator[Workers]:
    """The ``workers`` fixture's body: every worker started is stopped at teardown."""
    pool = Workers(env)
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture
def workers(agent_env) -> Iterator[Workers]:
    yield from worker_pool(agent_env)


def jobs(env: dict[str, str]) -> list[dict]:
    """What ``jobs --json`` prints, read in this process (each CLI start imports DBOS anew)."""
    return queue.list_jobs(open_store(env["JUPYTER_AGENT_STORE"]))


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.3)


def all_done(env: dict[str, str], count: int, *, cancelled: int = 0) -> Callable[[], bool]:
    """Whether ``count`` jobs ended, all done but ``cancelled`` of them (a failed one fails)."""

    def check() -> bool:
        listed = [j for j in jobs(env) if j["status"] != "scheduled"]
        failed = [j for j in listed if j["status"] == "failed"]
        assert not failed, failed
        ended = sorted(j["status"] for j in listed)
        return ended == ["cancelled"] * cancelled + ["done"] * (count - cancelled)

    return check


def test_submit_and_a_worker_on_duckdb(
    scripted: ScriptedServer, agent_env, store_path, tmp_path, workers
):
    log = tmp_path / "effects.log"
    scripted.set_script(script(log))
    paths = [notebook(tmp_path / f"nb{n}.ipynb", [SETUP, agent_cell(n)]) for n in range(2)]
    for path in paths:
        done = cli("submit", str(path), env=agent_env)
        assert done.returncode == 0 and "Submitted job-" in done.stdout, done.stderr
    listed = cli("jobs", "--json", env=agent_env)
    queued = json.loads(listed.stdout)
    assert [j["status"] for j in queued] == ["queued", "queued"], listed.stderr
    assert {j["notebook"] for j in queued} == {str(p) for p in paths}
    assert store_path.with_suffix(".jobs.sqlite").exists()  # the queue: a SQLite file beside it
    listed = cli("list", env=agent_env).stdout
    assert listed.splitlines()[0].split() == ["job", "notebook", "agent", "status"], listed
    rows = [line.split() for line in listed.splitlines()[1:3]]
    assert sorted(r[1] for r in rows) == sorted(map(str, paths)), listed
    assert all(r[2:] == ["all", "queued"] for r in rows), listed
    listed = json.loads(cli("list", "--json", env=agent_env).stdout)  # the same jobs as JSON
    assert sorted((j["notebook"], j["agent"], j["status"]) for j in listed["jobs"]) == sorted(
        (str(p), None, "queued") for p in paths
    )
    assert listed["agents"] == []
    workers.start("--concurrency", "2")
    wait_for(all_done(agent_env, 2), 60, "both jobs done")
    assert sorted(log.read_text().splitlines()) == sorted(
        f"{p} step{i}" for p in paths for i in range(2)
    )
    assert "Done." in outputs_text(paths[0])[1]  # outputs written back, as resume does
    table = cli("jobs", env=agent_env).stdout.splitlines()
    assert table[0].split() == ["job", "notebook", "agent", "submitted", "status"]
    assert len(table) == 3 and all(line.split()[-1] == "done" for line in table[1:]), table
    listed = json.loads(cli("list", "--json", env=agent_env).stdout)
    assert listed["jobs"] == [] and len(listed["agents"]) == 2  # done jobs are in `jobs` only


def test_each_worker_keeps_its_own_concurrency(
    scripted: ScriptedServer, agent_env, tmp_path, workers
):
    """Two workers, of 1 and of 3: neither's number is the other's (DBOS keeps one per queue).

    Each job's call waits at a gate the test opens once four calls wait there: all
    four jobs run at once, and the workers running them are counted then.
    """
    waiting, gate = tmp_path / "waiting.log", tmp_path / "open"
    code = (
        "import os, time\n"
        f"open({str(waiting)!r}, 'a').write(os.environ['JUPYTER_AGENT_NOTEBOOK'] + '\\n')\n"
        f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.1)"
    )
    scripted.set_script([tool(code), {"content": "Done."}])
    paths = [notebook(tmp_path / f"nb{n}.ipynb", [SETUP, agent_cell(n)]) for n in range(4)]
    for path in paths:
        assert cli("submit", str(path), env=agent_env).returncode == 0
    workers.start("--concurrency", "1")
    workers.start("--concurrency", "3")  # registered last: its number must not become the other's
    one, three = workers.ids
    most: Counter[str] = Counter()

    def count() -> bool:
        listed = [j for j in jobs(agent_env) if j["status"] != "scheduled"]
        running = Counter(j["worker"] for j in listed if j["status"] == "running")
        for worker, n in running.items():
            most[worker] = max(most[worker], n)
        assert set(running) <= {one, three}, running
        return all(j["status"] == "done" for j in listed)

    def all_waiting() -> bool:
        count()
        return waiting.exists() and len(waiting.read_text().splitlines()) == 4

    try:
        wait_for(all_waiting, 120, "all four jobs' calls at the gate")
        count()  # all four are running now
    finally:
        gate.touch()
    assert sorted(waiting.read_text().splitlines()) == sorted(map(str, paths))
    wait_for(count, 60, "all four jobs done")
    assert most[one] == 1, most
    assert most[three] == 3, most


def test_bad_input_is_one_line_and_queues_nothing(agent_env, tmp_path):
    plain = notebook(tmp_path / "plain.ipynb", ["print(1)"])
    agents = notebook(tmp_path / "agents.ipynb", [SETUP, agent_cell(1, name="loader")])
    one_line_refusal(
        cli("submit", str(tmp_path / "missing.ipynb"), env=agent_env), "No notebook missing.ipynb"
    )
    one_line_refusal(cli("submit", str(plain), env=agent_env), "plain.ipynb has no agent cells")
    one_line_refusal(
        cli("submit", str(agents), "--agent", "nobody", env=agent_env),
        "no agent 'nobody'",
        "loader",
    )
    for cron, why in (("every day", "2 fields"), ("61 * * * *", "not a cron expression")):
        refused = cli("submit", str(agents), "--every", cron, env=agent_env)
        assert refused.returncode == 2 and why in refused.stderr, refused.stderr
    one_line_refusal(cli("cancel", "job-nope", env=agent_env), "No job 'job-nope'")
    assert jobs(agent_env) == []
    refused = cli("worker", "--concurrency", "0", env=agent_env)
    assert refused.returncode == 2 and "--concurrency" in refused.stderr, refused.stderr
    without_dbos = [  # as where DBOS is not installed
        sys.executable,
        "-c",
        "import sys; sys.modules['dbos'] = None\nfrom jupyter_agent.cli import main; sys.exit(main())",
    ]
    refused = cli("submit", str(agents), env=agent_env, command=without_dbos)
    one_line_refusal(refused, "needs DBOS", "pip install 'jupyter-agent-cells[workers]'")


def test_a_changed_notebook_is_not_run_and_a_cancelled_job_never_runs(
    scripted: ScriptedServer, agent_env, tmp_path, workers
):
    log = tmp_path / "effects.log"
    scripted.set_script(script(log))
    changed = notebook(tmp_path / "changed.ipynb", [SETUP, agent_cell(1)])
    kept = notebook(tmp_path / "kept.ipynb", [SETUP, agent_cell(2)])
    assert cli("submit", str(changed), env=agent_env).returncode == 0
    cancelled = json.loads(cli("submit", str(kept), "--json", env=agent_env).stdout)["job"]
    notebook(changed, [SETUP, agent_cell(1), "print('added')"])
    done = cli("cancel", cancelled, env=agent_env)
    assert done.returncode == 0 and f"Cancelled job {cancelled}" in done.stdout, done.stderr
    workers.start()

    def settled() -> bool:
        return {j["status"] for j in jobs(agent_env)} <= {"failed", "cancelled"}

    wait_for(settled, 60, "the changed notebook's job failed")
    by_status = {j["status"]: j for j in jobs(agent_env)}
    assert "cells changed since the job was submitted" in by_status["failed"]["error"]
    assert by_status["cancelled"]["job"] == cancelled
    assert not log.exists() and scripted.requests == []  # neither ran an agent step


def test_cancelling_a_running_job_interrupts_its_agent(
    scripted: ScriptedServer, agent_env, tmp_path, workers
):
    log = tmp_path / "effects.log"
    slow = script(log)
    slow[1] = {**slow[1], "delay": 40}  # the model's answer for the second step is slow
    scripted.set_script(slow)
    path = notebook(tmp_path / "nb.ipynb", [SETUP, agent_cell(1), "print('next' + 'cell')"])
    job = json.loads(cli("submit", str(path), "--json", env=agent_env).stdout)["job"]
    workers.start()
    wait_for(lambda: scripted.turns_requested() == [0, 1], 60, "the slow request was made")
    assert cli("cancel", job, env=agent_env).returncode == 0
    cancelled = time.monotonic()

    def status() -> list[tuple[str, str]]:
        listed = json.loads(cli("list", "--json", env=agent_env).stdout)["agents"]
        return [(a["notebook"], a["status"]) for a in listed]

    wait_for(lambda: status() == [(str(path), "interrupted")], 10, "the agent was interrupted")
    assert time.monotonic() - cancelled < 10
    assert [j["status"] for j in jobs(agent_env)] == ["cancelled"]
    texts = outputs_text(path)
    assert "interrupted" in texts[1] and "nextcell" not in texts[2]  # the next cell did not run
    # A later resume continues the run: the completed step is not made again.
    scripted.set_script(script(log))
    done = cli("resume", str(path), env=agent_env)
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [f"{path} step0", f"{path} step1"]
    assert scripted.turns_requested() == [0, 1, 1, 2]


def test_cancelling_a_running_job_stops_what_its_tool_started(
    scripted: ScriptedServer, agent_env, tmp_path, workers
):
    """The interrupt reaches the kernel's process group, as JupyterLab's stop button does.

    The agent's code runs a command through ``os.system``, which ignores SIGINT in the
    kernel while the command runs: a SIGINT to the kernel alone changes nothing, the
    command must be told too.
    """
    pidfile = tmp_path / "child.pid"
    code = f"import os\nos.system('echo $$ > {pidfile}; exec sleep 120')"
    scripted.set_script([tool(code), {"content": "Done."}])
    path = notebook(tmp_path / "nb.ipynb", [SETUP, agent_cell(1)])
    job = json.loads(cli("submit", str(path), "--json", env=agent_env).stdout)["job"]
    workers.start()
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(), 60, "started")
    pid = int(pidfile.read_text())
    try:
        assert cli("cancel", job, env=agent_env).returncode == 0
        wait_for(lambda: ended(pid), 15, "the command the agent's code ran ended")
    finally:
        if not ended(pid):
            os.kill(pid, signal.SIGKILL)  # not left behind by a failing run
    wait_for(lambda: [j["status"] for j in jobs(agent_env)] == ["cancelled"], 15, "cancelled")


def interrupted_by(mode: str, path: Path, env: dict[str, str]) -> dict[str, str]:
    """A worker's env whose kernel for ``path`` is interrupted as ``mode`` says (kernel spec).

    ``message``: a kernel spec of ``"interrupt_mode": "message"``, written on the
    worker's JUPYTER_PATH and named in the notebook, so that the worker sends an
    ``interrupt_request`` on the control channel rather than a signal.
    """
    if mode == "signal":
        return env
    spec = path.parent / "jupyter" / "kernels" / "python3-message"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps({**kernel, "interrupt_mode": mode}))
    nb = json.loads(path.read_text())
    nb["metadata"]["kernelspec"] = {**nb["metadata"]["kernelspec"], "name": spec.name}
    path.write_text(json.dumps(nb))
    return {**env, "JUPYTER_PATH": str(spec.parent.parent)}


@pytest.mark.parametrize("mode", ["signal", "message"])
def test_a_cancel_the_agents_code_missed_still_stops_the_agent(
    scripted: ScriptedServer, agent_env, tmp_path, workers, mode
):
    """The kernel ignores SIGINT while ``os.system`` runs: the interrupt ends the command only.

    No KeyboardInterrupt reaches the agent's call, which goes on (here: sleeps) though
    its job shows ``cancelled``: the worker interrupts again until the run stops, so
    the call is cut short, and no model request or further call follows it. A kernel
    interrupted by message is interrupted again by message.
    """
    started, later = tmp_path / "started", tmp_path / "later.log"
    code = (
        f"import os, time\nopen({str(started)!r}, 'w').close()\nos.system('sleep 30')\n"
        "time.sleep(30)"
    )
    after = tool(f"open({str(later)!r}, 'a').write('ran\\n')")
    scripted.set_script([tool(code), after, {"content": "Done."}])
    path = notebook(tmp_path / "nb.ipynb", [SETUP, agent_cell(1)])
    env = interrupted_by(mode, path, agent_env)
    job = json.loads(cli("submit", str(path), "--json", env=agent_env).stdout)["job"]
    workers.start(env=env)
    wait_for(started.exists, 60, "the command started")
    time.sleep(0.5)  # into os.system
    assert cli("cancel", job, env=agent_env).returncode == 0
    # Within the grace: by an interrupt, not the kill (which leaves the agent running).
    wait_for(lambda: last_status(agent_env, path) == "interrupted", CANCEL_GRACE, "interrupted")
    wait_for(lambda: [j["status"] for j in jobs(agent_env)] == ["cancelled"], 15, "cancelled")
    assert not later.exists()  # no call after the one the cancel landed in ran
    assert scripted.turns_requested() == [0]  # nor was the model asked again


def last_status(env: dict[str, str], path: Path) -> str | None:
    """The status of the last checkpoint of the notebook's last run (None: none yet)."""
    store = open_store(env["JUPYTER_AGENT_STORE"])
    runs = store.runs(notebook=str(path))
    last = store.latest_checkpoints([runs[-1].run_id]) if runs else {}
    return last[runs[-1].run_id].status if last else None


def test_a_cancelled_job_asks_the_model_nothing_more_though_its_interrupt_was_missed(
    scripted: ScriptedServer, agent_env, tmp_path, workers
):
    """A fast model does not outrun a cancel whose interrupt the agent's code missed.

    The interrupt ends the ``os.system`` command only, and the next comes seconds
    later: time enough for another (billed) model request and the call it asks
    for. The worker tells the kernel before it interrupts it, so the agent stops
    between its steps: no request after the cancel was seen, no further call. It
    pauses as interrupted, and the next submit continues it from there.
    """
    started, later = tmp_path / "started", tmp_path / "later.log"
    code = f"import os\nopen({str(started)!r}, 'w').close()\nos.system('sleep 30')"
    after = tool(f"open({str(later)!r}, 'a').write('ran\\n')")
    scripted.set_script([tool(code), after, {"content": "Done."}])
    path = notebook(tmp_path / "nb.ipynb", [SETUP, agent_cell(1)])
    job = json.loads(cli("submit", str(path), "--json", env=agent_env).stdout)["job"]
    workers.start()
    wait_for(started.exists, 60, "the command started")
    time.sleep(0.5)  # into os.system
    assert cli("cancel", job, env=agent_env).returncode == 0
    wait_for(lambda: last_status(agent_env, path) == "interrupted", CANCEL_GRACE, "interrupted")
    wait_for(lambda: [j["status"] for j in jobs(agent_env)] == ["cancelled"], 15, "cancelled")
    assert scripted.turns_requested() == [0]  # nothing asked after the cancel was seen
    assert not later.exists()  # and no further call ran
    assert cli("submit", str(path), env=agent_env).returncode == 0
    wait_for(all_done(agent_env, 2, cancelled=1), 90, "the agent continued")
    assert later.read_text() == "ran\n"  # the call the cancel kept from starting, once
    assert scripted.turns_requested() == [0, 1, 2]  # the command's result was kept
    assert last_status(agent_env, path) == "done"


def test_a_kernel_that_ignores_every_interrupt_is_killed(
    scripted: ScriptedServer, agent_env, tmp_path, workers
):
    """Code that catches every KeyboardInterrupt is stopped all the same, by a kill after a grace."""
    pidfile = tmp_path / "kernel.pid"
    code = (
        f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
        "while True:\n    try:\n        time.sleep(60)\n    except KeyboardInterrupt:\n        pass"
    )
    scripted.set_script([tool(code), {"content": "Done."}])
    path = notebook(tmp_path / "nb.ipynb", [SETUP, agent_cell(1)])
    job = json.loads(cli("submit", str(path), "--json", env=agent_env).stdout)["job"]
    workers.start()
    wait_for(lambda: pidfile.exists() and pidfile.read_text().isdigit(), 60, "the call started")
    kernel = int(pidfile.read_text())
    try:
        assert cli("cancel", job, env=agent_env).returncode == 0
        cancelled = time.monotonic()
        wait_for(lambda: ended(kernel), 1 + CANCEL_GRACE + 10, "the kernel was killed")
        assert time.monotonic() - cancelled > CANCEL_GRACE - 1  # not before the grace
    finally:
        if not ended(kernel):
            os.kill(kernel, signal.SIGKILL)  # not left behind by a failing run
    wait_for(lambda: [j["status"] for j in jobs(agent_env)] == ["cancelled"], 15, "cancelled")
    listed = json.loads(cli("list", "--json", env=agent_env).stdout)["agents"]
    assert [a["status"] for a in listed] == ["interrupted"]  # its call in flight, resumable


def test_recovering_a_dead_workers_jobs(tmp_path):
    """The one private DBOS call the workers make does what recovery relies on.

    ``recover_executors`` puts back a job still running under a dead worker, and only
    that: not a live worker's, not one another worker already took after the death
    (two live workers may both see it), so no job runs twice.
    """
    import sqlite3

    from dbos import DBOS

    from jupyter_agent.cli.worker import recover_executors

    path = tmp_path / "agents.jobs.sqlite"
    target = queue.QueueTarget(f"sqlite:///{path}", "dbos", "", str(path))
    client = queue.client(target)
    ids = ["job-dead", "job-live", "job-queued"]
    try:
        for job_id in ids:
            options = {
                "queue_name": "nobody-dequeues-this",
                "workflow_name": queue.JOB_WORKFLOW,
                "workflow_id": job_id,
                "app_version": queue.APP_VERSION,
            }
            client.enqueue(options, {"notebook": job_id})
    finally:
        client.destroy()

    def set_running(job_id: str, executor: str) -> None:
        with sqlite3.connect(path) as con:
            con.execute(
                "UPDATE workflow_status SET status = 'PENDING', executor_id = ? "
                "WHERE workflow_uuid = ?",
                (executor, job_id),
            )

    def statuses() -> dict[str, str]:
        with sqlite3.connect(path) as con:
            rows = con.execute("SELECT workflow_uuid, status FROM workflow_status").fetchall()
        return dict(rows)

    set_running("job-dead", "gone")
    set_running("job-live", "alive")
    DBOS(
        config={
            "name": queue.APP,
            "system_database_url": target.url,
            "application_version": queue.APP_VERSION,
            "executor_id": "recovering",
            "log_level": "WARNING",
            "run_migrations": False,
        }
    )
    try:
        DBOS.launch()
        assert recover_executors(DBOS, ["gone"]) == ["job-dead"]
        assert statuses() == {
            "job-dead": "ENQUEUED",
            "job-live": "PENDING",
            "job-queued": "ENQUEUED",
        }
        set_running("job-dead", "alive")  # another live worker took it meanwhile
        assert recover_executors(DBOS, ["gone"]) == []  # the same death, seen again
        assert statuses()["job-dead"] == "PENDING"
    finally:
        DBOS.destroy(destroy_registry=True)
