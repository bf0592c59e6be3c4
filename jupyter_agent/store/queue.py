"""Where the worker pool's job queue lives: DBOS's system tables, beside the store.

The queue is DBOS's own (durable workflows, ``FOR UPDATE SKIP LOCKED`` dequeues,
cron schedules), never a table of ours. On PostgreSQL it lives in the store's
database, in a schema per member (``jupyter_agent_jobs_<owner>``): the member's
role is the only one granted it, so a member's jobs are visible to and claimable
by that member's workers alone, and a job runs with the role that submitted it.
On DuckDB (one machine) DBOS keeps the queue in a SQLite file beside the store
(``agents.jobs.sqlite`` for ``agents.duckdb``): DBOS cannot use DuckDB.

DBOS is imported only here and only when a queue is used, so ``%load_ext`` and
every other command never pay for it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import JobError
from .api import Store

#: The DBOS application every worker and client names (its workflows are shared).
APP = "jupyter-agent"
#: The one queue jobs wait in; per-member isolation comes from the schema.
QUEUE = "jupyter-agent-jobs"
#: Fixed, so that any worker (of any release that keeps the workflow) may recover any job.
APP_VERSION = "jupyter-agent-jobs-1"
#: The registered names of the two workflows (:mod:`jupyter_agent.cli.worker`).
JOB_WORKFLOW = "jupyter_agent_job"
SCHEDULED_WORKFLOW = "jupyter_agent_scheduled_job"
#: How a worker's connections name themselves, so a live worker can be told from a dead one.
WORKER_TAG = "jupyter-agent-worker:"


def executor_id(worker: str, run: int) -> str:
    """The DBOS executor of a worker's ``run``-th concurrent run (a worker of one is its own)."""
    return f"{worker}.{run}"


def worker_of(executor: str) -> str:
    """The worker an executor belongs to, as ``jupyter agent worker`` named it when it started."""
    return executor.split(".", 1)[0]


INSTALL = (
    "The worker pool needs DBOS: pip install 'jupyter-agent-cells[workers]' (or pip install dbos)."
)


@dataclass(frozen=True)
class QueueTarget:
    """The DBOS system database of a store: its URL, schema, and how to name it."""

    url: str
    schema: str
    owner: str
    where: str

    @property
    def postgres(self) -> bool:
        return not self.url.startswith("sqlite")


def queue_schema(owner: str) -> str:
    """The member's queue schema: a plain lower-case identifier made from the owner's name."""
    return "jupyter_agent_jobs_" + re.sub(r"[^a-z0-9_]", "_", owner.lower())[:40]


def queue_target(store: Store) -> QueueTarget:
    """Where ``store``'s jobs queue: its PostgreSQL database, or a SQLite file beside its DuckDB file."""
    url = getattr(store, "url", None)
    if isinstance(url, str) and url.startswith(("postgresql://", "postgres://")):
        # The login role, whose grants decide; the store's owner must be that role anyway.
        owner = urlsplit(url).username or str(getattr(store, "owner", ""))
        schema = queue_schema(owner)
        return QueueTarget(url, schema, owner, f"schema {schema} of {store.location}")
    path = Path(getattr(store, "path", store.location))
    sibling = path.with_suffix(".jobs.sqlite")
    return QueueTarget(f"sqlite:///{sibling}", "dbos", "", str(sibling))


def dbos() -> Any:
    """The ``dbos`` module, or a :class:`JobError` saying how to install it."""
    try:
        import dbos as module
    except ImportError:
        raise JobError(INSTALL) from None
    return module


def prepare(target: QueueTarget) -> None:
    """Create or upgrade the queue's tables (idempotent); refused with the reason.

    On a team store a member's role may not create schemas: the admin prepares
    each member's with :func:`prepare_member` once.
    """
    module = dbos()
    if not target.postgres:
        Path(target.url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    try:
        module.DBOS.migrate(target.url, schema=target.schema)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise JobError(
            f"The job queue in {target.where} cannot be set up: {first}. On a team store the "
            "admin prepares each member's queue (docs/unattended.md)."
        ) from None


def prepare_member(admin_url: str, role: str) -> str:
    """As the admin: create ``role``'s queue schema and grant it to that role alone; its name."""
    schema = queue_schema(role)
    dbos().DBOS.migrate(admin_url, schema=schema, application_role=role)
    return schema


def client(target: QueueTarget) -> Any:
    """A DBOS client on the queue (enqueue, list, cancel, schedules), its tables prepared."""
    prepare(target)
    return dbos().DBOSClient(
        system_database_url=target.url, dbos_system_schema=target.schema, application_name=APP
    )


def notebook_pin(nb: Any) -> str:
    """The content hash a job is pinned to: every cell's type and source, in order.

    Outputs and metadata are left out, since every run writes them back; a change
    to any cell's code or text changes the pin, and the job refuses to run.
    """
    cells = [[c.get("cell_type"), c.get("source", "")] for c in nb.get("cells", [])]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode()).hexdigest()


class Liveness:
    """A worker's sign of life that ends with its process, and the others' it can see.

    On PostgreSQL a connection named ``jupyter-agent-worker:<id>`` (the server drops
    it when the process dies, even by SIGKILL); on SQLite an exclusive lock on a
    file beside the queue (the kernel releases it likewise). A job left running by
    a worker no longer alive is recovered by a live one (:mod:`jupyter_agent.cli.worker`).
    """

    def __init__(self, target: QueueTarget, executor: str) -> None:
        self.target, self.executor = target, executor
        if target.postgres:
            import psycopg

            self._con: Any = psycopg.connect(
                target.url, application_name=WORKER_TAG + executor, autocommit=True
            )
        else:
            import fcntl

            self._dir = Path(target.url[len("sqlite:///") :] + ".workers")
            self._dir.mkdir(parents=True, exist_ok=True)
            self._con = open(self._dir / f"{executor}.lock", "w")  # noqa: SIM115 held while alive
            fcntl.flock(self._con, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def live(self) -> set[str]:
        """The ids of the workers alive now on this queue (this one among them)."""
        if self.target.postgres:
            rows = self._con.execute(
                "SELECT application_name FROM pg_stat_activity "
                "WHERE usename = current_user AND application_name LIKE %s",
                (WORKER_TAG + "%",),
            ).fetchall()
            return {r[0][len(WORKER_TAG) :] for r in rows}
        import fcntl

        alive = {self.executor}
        for lock in self._dir.glob("*.lock"):
            if lock.stem == self.executor:
                continue
            with open(lock, "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    alive.add(lock.stem)
                    continue
            lock.unlink(missing_ok=True)  # its worker is gone
        return alive

    def close(self) -> None:
        self._con.close()


#: How a job's DBOS status reads in ``jobs``, ``list``, the REST API and the lab panel.
STATUS = {
    "ENQUEUED": "queued",
    "DELAYED": "queued",
    "PENDING": "running",
    "SUCCESS": "done",
    "ERROR": "failed",
    "MAX_RECOVERY_ATTEMPTS_EXCEEDED": "failed",
    "CANCELLED": "cancelled",
}


def _when(ms: int | None) -> str | None:
    from datetime import datetime, timezone

    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


def _job_of(inputs: Any) -> dict[str, Any]:
    """The job a workflow was given: its last positional argument (a scheduled run's first is its time)."""
    args = (inputs or {}).get("args") or ()
    job = args[-1] if args else {}
    return job if isinstance(job, dict) else {}


def list_jobs(store: Store, *, limit: int = 200) -> list[dict[str, Any]]:
    """The member's jobs, newest first, then their schedules: what ``jobs`` and ``list`` show.

    Reading never creates the queue: a store with no queue file or schema has no jobs.
    """
    target = queue_target(store)
    if not queue_exists(target):
        return []
    c = client(target)
    try:
        rows = []
        for w in c.list_workflows(
            name=[JOB_WORKFLOW, SCHEDULED_WORKFLOW], sort_desc=True, limit=limit
        ):
            job = _job_of(w.input)
            error = w.error
            rows.append(
                {
                    "job": w.workflow_id,
                    "notebook": job.get("notebook"),
                    "agent": job.get("agent"),
                    "submitted": _when(w.created_at),
                    "status": STATUS.get(str(w.status), str(w.status).lower()),
                    "every": job.get("every"),
                    "worker": (
                        worker_of(w.executor_id)
                        if str(w.status) == "PENDING" and w.executor_id
                        else None
                    ),
                    "error": _first_line(error) if error is not None else None,
                }
            )
        for s in c.list_schedules(workflow_name=SCHEDULED_WORKFLOW):
            job = s["context"] if isinstance(s["context"], dict) else {}
            rows.append(
                {
                    "job": s["schedule_name"],
                    "notebook": job.get("notebook"),
                    "agent": job.get("agent"),
                    "submitted": job.get("submitted"),
                    "status": "scheduled" if s["status"] == "ACTIVE" else s["status"].lower(),
                    "every": s["schedule"],
                    "worker": None,
                    "error": None,
                }
            )
        return rows
    finally:
        c.destroy()


def queue_exists(target: QueueTarget) -> bool:
    """Whether the queue's tables exist (and this role may see them), creating nothing."""
    if not target.postgres:
        return Path(target.url[len("sqlite:///") :]).exists()
    import psycopg

    with psycopg.connect(target.url, autocommit=True) as con:
        row = con.execute(
            "SELECT has_schema_privilege(current_user, %s, 'USAGE') FROM pg_namespace "
            "WHERE nspname = %s",
            (target.schema, target.schema),
        ).fetchone()
    return bool(row and row[0])


#: The statuses ``list``, the REST API and the lab panel show: jobs that are not over well.
UNFINISHED = ("queued", "running", "failed")


def unfinished_jobs(store: Store, notebook: str | None = None) -> list[dict[str, Any]]:
    """Queued, running and failed jobs (of ``notebook``): none where DBOS or the queue is absent."""
    try:
        dbos()
    except JobError:
        return []
    rows = [j for j in list_jobs(store) if j["status"] in UNFINISHED]
    return [j for j in rows if notebook is None or j["notebook"] == notebook]


def _first_line(error: Any) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
