"""``jupyter agent submit | worker | jobs | cancel``: a worker pool on DBOS queues.

``submit`` enqueues a headless run of a notebook's agents (DBOS's durable queue in
the store's database, :mod:`jupyter_agent.store.queue`), pinned to the notebook's
cells at submission: a job whose notebook's cells changed since refuses to run
(submit it again), while the outputs every run writes back change no pin.
``--every CRON`` makes a DBOS cron schedule that enqueues such a job each time.

``worker`` processes, on any number of machines, take jobs from the queue and
run each notebook as ``jupyter agent resume`` does (:func:`resume_notebook`), N
at a time: N DBOS executors of one job each, so that each worker's N holds
(:func:`cmd_worker`). Each job is one DBOS workflow whose one step is that run, so a worker
that dies mid-run leaves its job pending; a live worker sees it is gone
(:class:`~jupyter_agent.store.queue.Liveness`) and has DBOS recover the job, and
the run continues from the store's last checkpoint: no completed model or tool
step runs again. A job cancelled while it runs is seen by its worker within a
second (:func:`was_cancelled`), which interrupts the kernel as JupyterLab does:
its agent checkpoints as interrupted, and a later run continues it. An interrupt
the kernel missed is sent again, and a kernel that runs on regardless is killed
(:func:`~jupyter_agent.cli.resume.run_notebook`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..errors import JobError
from ..store import queue
from ..store.api import Store
from ..views import listing
from ..vocab import cell_agent_name
from .resume import read_notebook, resume_notebook

#: Seconds between a worker's looks for jobs of dead workers.
RECOVERY_INTERVAL = 1.0
#: Seconds a worker's run process must live to be started again when it ends.
SETTLE = 10.0


def agent_cells(nb: Any) -> dict[str, Any]:
    """The notebook's agent cells by agent name (``--name``, else the cell's id)."""
    found: dict[str, Any] = {}
    for cell in nb.cells:
        source = cell.get("source", "") if cell.get("cell_type") == "code" else ""
        first = source.lstrip().split("\n", 1)[0]
        if not first.startswith("%%agent"):
            continue
        try:
            words = shlex.split(first)
        except ValueError:
            words = first.split()
        name = None
        for i, word in enumerate(words):
            if word in ("-n", "--name") and i + 1 < len(words):
                name = words[i + 1]
            elif word.startswith("--name="):
                name = word.split("=", 1)[1]
        found[name or cell_agent_name(cell.get("id", ""))] = cell
    return found


def check_cron(expr: str) -> str:
    """``--every``: a cron expression of 5 fields, or 6 with seconds first; else why not."""
    from croniter import croniter

    fields = expr.split()
    if len(fields) not in (5, 6):
        raise argparse.ArgumentTypeError(
            f"{expr!r} is not a cron expression: it has {len(fields)} fields, not 5 "
            "(minute hour day month weekday) or 6 (seconds first)"
        )
    try:
        croniter(expr, second_at_beginning=len(fields) == 6)
    except Exception as exc:  # croniter's errors have no common base worth naming
        raise argparse.ArgumentTypeError(f"{expr!r} is not a cron expression: {exc}") from None
    return expr if len(fields) == 6 else "0 " + expr


def cmd_submit(store: Store, args: argparse.Namespace) -> Any:
    path = os.path.abspath(os.path.expanduser(args.notebook))
    name = os.path.basename(path)
    nb = read_notebook(path)
    agents = agent_cells(nb)
    if not agents:
        raise JobError(f"{name} has no agent cells (%%agent): there is nothing to run.")
    if args.agent is not None and args.agent not in agents:
        known = ", ".join(sorted(agents))
        raise JobError(f"{name} has no agent {args.agent!r}; its agents: {known}.")
    submitted = datetime.now(timezone.utc).isoformat()
    job = {
        "notebook": path,
        "agent": args.agent,
        "pin": queue.notebook_pin(nb),
        "submitted": submitted,
        "every": args.every,
    }
    target = queue.queue_target(store)
    client = queue.client(target)
    try:
        if args.every:
            job_id = "every-" + uuid.uuid4().hex[:10]
            client.create_schedule(
                schedule_name=job_id,
                workflow_name=queue.SCHEDULED_WORKFLOW,
                schedule=args.every,
                context=job,
                queue_name=queue.QUEUE,
            )
        else:
            job_id = "job-" + uuid.uuid4().hex[:10]
            options = {
                "queue_name": queue.QUEUE,
                "workflow_name": queue.JOB_WORKFLOW,
                "workflow_id": job_id,
                "app_version": queue.APP_VERSION,
            }
            client.enqueue(options, job)
    finally:
        client.destroy()
    if not args.json:
        when = f" every {args.every!r}" if args.every else ""
        print(f"Submitted {job_id}: {name}{when}; `jupyter agent worker` runs it.")
    return {"job": job_id, **job}


def cmd_jobs(store: Store, args: argparse.Namespace) -> Any:
    rows = queue.list_jobs(store)
    if args.json:
        return rows
    if not rows:
        print("No jobs.")
        return None
    table = [("job", "notebook", "agent", "submitted", "status")]
    for r in rows:
        status = listing.job_status(r)
        table.append(
            (r["job"], r["notebook"] or "-", r["agent"] or "all", r["submitted"] or "-", status)
        )
    print(listing.table(table))
    return None


def cmd_cancel(store: Store, args: argparse.Namespace) -> Any:
    """Cancel a queued job (it never runs), a running one (its worker interrupts it), or a schedule."""
    target = queue.queue_target(store)
    client = queue.client(target)
    try:
        if client.get_schedule(args.job) is not None:
            client.delete_schedule(args.job)
            what = "schedule"
        elif client.list_workflows(workflow_ids=[args.job], load_input=False, load_output=False):
            client.cancel_workflow(args.job)
            what = "job"
        else:
            raise JobError(
                f"No job {args.job!r} in {target.where}. `jupyter agent jobs` lists them."
            )
    finally:
        client.destroy()
    if not args.json:
        print(f"Cancelled {what} {args.job}.")
    return {"job": args.job, "cancelled": what}


def run_job(
    store: Store,
    job: dict[str, Any],
    timeout: float | None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run one job's notebook, refusing one whose cells changed since it was submitted.

    ``cancelled`` is polled while the notebook runs: once the job is cancelled its
    kernel is interrupted (the running agent checkpoints as interrupted) and no
    further cell runs.
    """
    path = job["notebook"]
    nb = read_notebook(path)
    if queue.notebook_pin(nb) != job["pin"]:
        raise JobError(
            f"{os.path.basename(path)}'s cells changed since the job was submitted: nothing was "
            "run. Submit it again to run the notebook as it is now."
        )
    agent = job.get("agent")
    skip = None
    if agent:
        others = {id(c) for n, c in agent_cells(nb).items() if n != agent}
        skip = lambda cell: id(cell) in others  # noqa: E731
    ran = resume_notebook(store, path, timeout=timeout, skip=skip, nb=nb, cancelled=cancelled)
    return {"notebook": path, "agent": agent, "ok": ran}


def cmd_worker(store: Store, args: argparse.Namespace) -> Any:
    """Take jobs, ``--concurrency`` at a time: one DBOS executor, or a process per run.

    DBOS keeps a queue's concurrency per executor but in the queue's one row, so the
    last worker to register it would set every worker's. Every executor here
    registers the queue to run one job at a time, and a worker of N runs N of them,
    each a process of its own (:func:`_supervise`): each worker's own number holds.
    """
    target = queue.queue_target(store)
    queue.dbos()
    queue.prepare(target)
    if args.concurrency > 1 and args.executor is None:
        return _supervise(store, target, args)
    executor = args.executor or uuid.uuid4().hex[:12]
    _serve(store, target, executor, args.timeout, announce=args.executor is None)
    return None


def _supervise(store: Store, target: queue.QueueTarget, args: argparse.Namespace) -> None:
    """Run ``args.concurrency`` executor processes until stopped, restarting one that ends.

    Each dies with this process (a parent-death signal on Linux), so a worker that is
    killed leaves its jobs to be recovered, as a worker of one would. One that ends
    within :data:`SETTLE` seconds of its start cannot start (it said why on stderr):
    the worker stops rather than start it again every second.
    """
    from .resume import store_target

    worker = uuid.uuid4().hex[:12]
    command = [sys.executable, "-m", "jupyter_agent", "--store", store_target(store), "worker"]
    if args.timeout is not None:
        command += ["--timeout", str(args.timeout)]

    def spawn(i: int) -> subprocess.Popen:
        executor = queue.executor_id(worker, i)
        return subprocess.Popen([*command, "--executor", executor], preexec_fn=_die_with_parent)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    procs = [spawn(i) for i in range(args.concurrency)]
    started = [time.monotonic()] * len(procs)
    print(
        f"Worker {worker} takes jobs from {target.where}, {args.concurrency} at a time.",
        file=sys.stderr,
        flush=True,
    )
    try:
        while not stop.wait(RECOVERY_INTERVAL):
            for i, proc in enumerate(procs):
                if proc.poll() is None:
                    continue
                if time.monotonic() - started[i] < SETTLE:
                    raise JobError(
                        f"Worker {worker} stopped: its run process {i} ended as it started "
                        f"(exit status {proc.returncode}); see the lines above."
                    )
                procs[i], started[i] = spawn(i), time.monotonic()
    except KeyboardInterrupt:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait()
    print(f"Worker {worker} stopped.", file=sys.stderr)


def _die_with_parent() -> None:
    """In a worker's executor process, before it runs: be killed when the worker dies (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _serve(
    store: Store, target: queue.QueueTarget, executor: str, timeout: float | None, announce: bool
) -> None:
    """One DBOS executor taking jobs, one at a time, until SIGTERM."""
    module = queue.dbos()
    dbos = module.DBOS
    alive = queue.Liveness(target, executor)  # before any job is taken, so it is never orphaned

    @dbos.step(name="run notebook")
    def run_step(job: dict[str, Any]) -> dict[str, Any]:
        return run_job(store, job, timeout, cancelled=was_cancelled(dbos, dbos.workflow_id))

    @dbos.workflow(name=queue.JOB_WORKFLOW)
    def job_workflow(job: dict[str, Any]) -> dict[str, Any]:
        return run_step(job)

    @dbos.workflow(name=queue.SCHEDULED_WORKFLOW)
    def scheduled_workflow(when: datetime, job: dict[str, Any]) -> dict[str, Any]:
        return run_step(job)

    config = {
        "name": queue.APP,
        "system_database_url": target.url,
        "dbos_system_schema": target.schema,
        "application_version": queue.APP_VERSION,
        "executor_id": executor,
        "scheduler_polling_interval_sec": 1.0,
        "log_level": "WARNING",
        "run_migrations": False,
    }
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    dbos(config=config)
    try:
        dbos.launch()
        # The same for every executor, so that no worker's registration changes another's.
        dbos.register_queue(queue.QUEUE, worker_concurrency=1, polling_interval_sec=0.2)
        if announce:
            print(
                f"Worker {executor} takes jobs from {target.where}, 1 at a time.",
                file=sys.stderr,
                flush=True,
            )
        suspects: set[str] = set()
        while not stop.wait(RECOVERY_INTERVAL):
            recover_dead(dbos, alive, suspects)
    except KeyboardInterrupt:
        pass
    finally:
        dbos.destroy()
        alive.close()
    if announce:
        print(f"Worker {executor} stopped.", file=sys.stderr)


def was_cancelled(dbos: Any, job: str | None) -> Callable[[], bool]:
    """Whether the job ``job`` was cancelled (``jupyter agent cancel``), asked of DBOS."""

    def check() -> bool:
        status = dbos.get_workflow_status(job) if job else None
        return status is not None and str(status.status) == "CANCELLED"

    return check


def recover_dead(dbos: Any, alive: queue.Liveness, suspects: set[str]) -> list[str]:
    """Have DBOS recover the running jobs of workers that are gone; their ids.

    A worker is gone once it was seen dead twice, a second apart: by then its
    orphaned kernels (which exit a second after their parent) no longer hold its
    agents. A job recovered twice at once (two live workers saw the same death)
    still runs once: DBOS re-enqueues it and one dequeue wins. ``suspects`` carries
    the workers seen dead last time.
    """
    pending = dbos.list_workflows(status="PENDING", load_input=False, load_output=False)
    owners = {w.executor_id for w in pending if w.executor_id}
    dead = owners - alive.live() if owners else set()
    gone = sorted(dead & suspects)
    suspects.clear()
    suspects.update(dead - set(gone))
    if gone:
        recover_executors(dbos, gone)
    return gone


def recover_executors(dbos: Any, executors: list[str]) -> list[str]:
    """Put the jobs still running under ``executors`` (workers that are gone) back in the queue.

    Returns the jobs' ids. DBOS's Python API has no public call for this: it recovers
    another executor's workflows through its Conductor service (or an admin HTTP
    endpoint this worker does not run). ``DBOS.resume_workflow`` is public but not the
    same: it re-enqueues any unfinished workflow whoever holds it, so two live workers
    that both saw a death could each put back a job the other already took, and the
    job would run twice. DBOS's own recovery, called here, re-enqueues a workflow
    only while it is PENDING under a dead executor, so a second recovery of the same
    death matches nothing. It is private, so this is its only caller, and
    ``tests/test_workers.py::test_recovering_a_dead_workers_jobs`` fails if DBOS changes it.
    """
    handles = dbos._recover_pending_workflows(executors)
    return [h.get_workflow_id() for h in handles]
