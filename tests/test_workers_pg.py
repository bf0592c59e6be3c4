"""The worker pool on PostgreSQL: workers that die, members that must not see each other's jobs.

Real PostgreSQL (tests/pg.py), real kernels, the CLI as subprocesses. The
SIGKILL test runs twelve notebooks on three workers (one to two and a half
minutes on two cores); ``JUPYTER_AGENT_WORKERS_NOTEBOOKS=4`` runs fewer while
working on the workers.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime

import psycopg
import pytest

from jupyter_agent.store import queue
from jupyter_agent.store.postgres.store import PostgresStore
from jupyter_agent.testing import ScriptedServer

from .conformance.test_pg_team import _team
from .test_cli import SETUP, cli, notebook
from .test_workers import Workers, agent_cell, all_done, jobs, script, wait_for, worker_pool

pytest.importorskip("dbos", reason="pip install 'jupyter-agent-cells[workers]'")

#: Notebooks of the SIGKILL test (three workers, two runs each at a time).
NOTEBOOKS = int(os.environ.get("JUPYTER_AGENT_WORKERS_NOTEBOOKS", "12"))


@pytest.fixture
def backend() -> str:
    return "postgres"


@pytest.fixture
def workers(agent_env) -> Iterator[Workers]:
    yield from worker_pool(agent_env)


def notebook_of(request: dict) -> str:
    """Which notebook's agent made a model request: its prompt says ``Notebook N``."""
    for message in request["body"].get("messages", []):
        content = message.get("content")
        if isinstance(content, str) and content.startswith("Notebook "):
            return content.split(":", 1)[0]
    return "?"


def test_a_worker_killed_mid_run_loses_no_job_and_repeats_no_step(
    scripted: ScriptedServer, agent_env, tmp_path, workers: Workers
):
    log = tmp_path / "effects.log"
    scripted.set_script(script(log, sleep=1.5))
    paths = [notebook(tmp_path / f"nb{n}.ipynb", [SETUP, agent_cell(n)]) for n in range(NOTEBOOKS)]
    for path in paths:
        assert cli("submit", str(path), env=agent_env).returncode == 0
    procs = {}
    for _ in range(3):
        proc = workers.start("--concurrency", "2")
        procs[workers.ids[-1]] = proc

    def mid_run() -> str | None:
        """A worker running a notebook whose first tool step is done and second under way."""
        written = log.read_text().splitlines() if log.exists() else []
        for job in jobs(agent_env):
            nb = job["notebook"]
            if (
                job["status"] == "running"
                and f"{nb} step0" in written
                and f"{nb} step1" not in written
            ):
                return job["worker"]
        return None

    victim: list[str] = []
    wait_for(lambda: bool(victim.append(mid_run() or "") or victim[-1]), 60, "a run mid-way")
    time.sleep(0.3)  # into the second tool step's sleep
    procs[victim[-1]].send_signal(signal.SIGKILL)
    procs[victim[-1]].wait()
    wait_for(all_done(agent_env, NOTEBOOKS), 20 * NOTEBOOKS, f"all {NOTEBOOKS} jobs done")

    steps = Counter(log.read_text().splitlines())
    assert set(steps) == {f"{p} step{i}" for p in paths for i in range(2)}
    assert [s for s, n in steps.items() if n > 1] == []  # no tool step ran twice
    turns = Counter((notebook_of(r), r["turn"]) for r in scripted.requests if r["turn"] >= 0)
    assert len(turns) == 3 * NOTEBOOKS  # every notebook's three model steps
    assert [t for t, n in turns.items() if n > 1] == []  # none requested twice


def test_a_members_worker_cannot_run_or_read_another_members_job(
    scripted: ScriptedServer, agent_env, pg_url, tmp_path, workers: Workers
):
    member = _team(pg_url, "alice", "bob")
    alice, bob = member("alice"), member("bob")
    for store in (alice, bob):
        queue.prepare_member(pg_url, store.owner)  # the admin, once per member
    env = {
        who.owner: {**agent_env, "JUPYTER_AGENT_STORE": who.url, "JUPYTERHUB_USER": who.owner}
        for who in (alice, bob)
    }
    log = tmp_path / "effects.log"
    scripted.set_script(script(log))
    path = notebook(tmp_path / "hers.ipynb", [SETUP, agent_cell(1)])
    submitted = cli("submit", str(path), "--json", env=env[alice.owner])
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)["job"]

    assert cli("jobs", env=env[bob.owner]).stdout.strip() == "No jobs."
    workers.start(env=env[bob.owner])
    time.sleep(4)  # his worker polls his queue: hers is not in it
    assert [(j["job"], j["status"]) for j in jobs(env[alice.owner])] == [(job, "queued")]
    assert not log.exists() and scripted.requests == []
    hers = queue.queue_target(alice).schema
    with psycopg.connect(bob.url, autocommit=True) as con:
        for sql in (
            f"SELECT * FROM {hers}.workflow_status",
            f"UPDATE {hers}.workflow_status SET status = 'CANCELLED'",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute(sql)
    refused = cli("cancel", job, env=env[bob.owner])
    assert refused.returncode == 1 and "No job" in refused.stderr, refused.stderr

    workers.start(env=env[alice.owner])
    wait_for(all_done(env[alice.owner], 1), 60, "her job done by her worker")
    assert alice.runs(notebook=str(path))  # written by her role: row security shows her rows only
    assert bob.runs() == []


def test_a_member_without_a_prepared_queue_is_told_why(agent_env, pg_url, tmp_path):
    member = _team(pg_url, "carol")
    carol: PostgresStore = member("carol")
    path = notebook(tmp_path / "nb.ipynb", [SETUP, agent_cell(1)])
    env = {**agent_env, "JUPYTER_AGENT_STORE": carol.url, "JUPYTERHUB_USER": carol.owner}
    refused = cli("submit", str(path), env=env)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 1 and len(lines) == 1, refused.stderr
    assert "cannot be set up" in lines[0] and "admin prepares" in lines[0], lines[0]


def test_every_runs_at_the_times_given(
    scripted: ScriptedServer, agent_env, tmp_path, workers: Workers
):
    log = tmp_path / "effects.log"
    scripted.set_script(script(log))
    path = notebook(tmp_path / "nightly.ipynb", [SETUP, agent_cell(1)])
    submitted = cli("submit", str(path), "--every", "*/20 * * * * *", "--json", env=agent_env)
    assert submitted.returncode == 0, submitted.stderr
    schedule = json.loads(submitted.stdout)["job"]
    assert [(j["job"], j["status"]) for j in jobs(agent_env)] == [(schedule, "scheduled")]
    workers.start()
    wait_for(lambda: any(j["status"] == "done" for j in jobs(agent_env)), 60, "a scheduled run")
    runs = [j for j in jobs(agent_env) if j["status"] != "scheduled"]
    assert runs and all(j["notebook"] == str(path) for j in runs)
    fired = [datetime.fromisoformat(j["submitted"]).timestamp() for j in runs]
    assert all(int(t) % 20 in (0, 1) for t in fired), [j["submitted"] for j in runs]
    done = cli("cancel", schedule, env=agent_env)
    assert done.returncode == 0 and f"Cancelled schedule {schedule}" in done.stdout
    assert all(j["status"] != "scheduled" for j in jobs(agent_env))
