"""The store interface: the records and verbs every part of jupyter-agent uses.

The kernel, the timeline widget, the CLI and the server extension talk to the
checkpoint store only through :class:`Store`; no connection object ever leaves
a backend, and only backend modules import a database driver. Two backends,
both on the verbs written once in :mod:`jupyter_agent.store.sql`:

* :mod:`jupyter_agent.store.duckdb.store` — a local DuckDB file fed by per-run journals
  (the default; a path, or ``duckdb://PATH``);
* :mod:`jupyter_agent.store.postgres.store` — a PostgreSQL server (a ``postgresql://`` URL),
  imported only when such a URL is given.

:func:`jupyter_agent.store.open.open_store` picks one. Records are plain
dataclasses, so this module imports nothing heavy: the server extension loads
it without the agent loop. What a backend offers beyond the verbs it declares
(:class:`Capability`); callers check the declaration, never probe attributes.

Invariants every backend keeps (see each verb for its own):

* Rows are insert-only and keyed — runs by ``run_id``, checkpoints by
  ``(run_id, step)``, blobs by content hash — so writing a record twice is
  harmless and a reader never sees a row change under it (deletion aside).
* A run has one writer at a time (:meth:`Store.agent_lock`); readers never wait
  for it and never block it for longer than one short read.
* Payloads are JSON (format ``"json"``); the only pickled data are blobs
  (namespace values), which are handed out only after :meth:`Store.check_trusted`.
* Everything written has the writer's secrets redacted.
"""

from __future__ import annotations

import enum
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..core import history

#: How many checkpoints of an agent's latest run a summary includes by default.
TIMELINE_LIMIT = 200
#: The payload encodings a checkpoint row can be tagged with. Only "json" is
#: written; "dill" is read once, when an older store or journal is migrated.
PAYLOAD_FORMATS = ("json", "dill")


# -- records --------------------------------------------------------------------------


@dataclass
class RunRow:
    """One run of an agent: a prompt executed from its start (or from a fork point)."""

    run_id: str
    """16 hex digits, unique in the store."""
    notebook: str
    """Absolute path of the notebook the agent belongs to (follows recorded moves)."""
    agent: str
    """The agent's name: ``--name``, ``cell-<cell id>`` or ``prompt-<hash>``."""
    cell_id: str | None
    """The notebook cell that runs the agent, when the frontend sent one."""
    prompt: str
    """The task, with secrets redacted."""
    prompt_hash: str
    """:func:`jupyter_agent.core.state.prompt_hash` of the prompt as typed (before redaction)."""
    model: str
    """The model the run started with (a resume may use another; see its checkpoint)."""
    parent_run: str | None
    """For a fork, the run it was forked from; None for a run started afresh."""
    parent_step: int | None
    """For a fork, the parent's checkpoint it continues from (inclusive)."""
    created_at: float
    """Unix time the run was created."""
    info: dict = field(default_factory=dict)
    """Run settings as JSON: ``approve`` policy, ``plan`` mode, a fork's ``instruction``."""


@dataclass
class CheckpointRow:
    """The metadata of one checkpoint; its payload (a step delta) is read apart."""

    run_id: str
    """The run the checkpoint belongs to."""
    step: int
    """The checkpoint's sequence number in its run (0, 1, …; a fork starts after its
    parent step). Users read it as "checkpoint N", never "step N"."""
    kind: str
    """What it records: a :class:`jupyter_agent.vocab.Kind` value."""
    status: str
    """The run's stored status after it: a :class:`jupyter_agent.vocab.Status` value."""
    summary: str
    """One line for the timeline, secrets redacted."""
    created_at: float
    """Unix time it was written."""
    duration_ms: float
    """Time since the previous checkpoint of the same execution."""
    tokens: int
    """Tokens the step spent (model and compaction checkpoints)."""
    size: int
    """Bytes of its payload and of the blobs written with it."""
    info: dict = field(default_factory=dict)
    """Kind-specific JSON: ``usage``, ``plan``, ``blobs`` (hashes of its values), …"""


@dataclass
class RunStats:
    """Aggregates of one run's checkpoints, computed by the store (metadata only)."""

    run_id: str
    """The run."""
    checkpoints: int
    """How many checkpoints the run has (its own, not its ancestors')."""
    tokens: int
    """Sum of the ``tokens`` column: the ledger's total."""
    prompt_tokens: int
    """Sum of ``info.usage.prompt_tokens`` over the run's checkpoints."""
    completion_tokens: int
    """Sum of ``info.usage.completion_tokens`` over the run's checkpoints."""
    size: int
    """Bytes of its payloads and blobs."""
    updated_at: float
    """Time of its last checkpoint."""
    last_step: int
    """Sequence number of its last checkpoint."""
    last_status: str
    """Stored status of its last checkpoint (see :func:`vocab.effective_status`)."""
    last_info: dict
    """``info`` of its last checkpoint (budget and stuck checkpoints explain themselves)."""
    steps: int = 0
    """Steps (``model`` checkpoints) of the run's history: a fork's parent's up to the
    fork point, then its own."""
    plan: list[dict] | None = None
    """The run's latest plan (``info.plan`` of its last checkpoint that has one)."""
    cached_tokens: int = 0
    """Sum of ``info.usage.cached_tokens``: prompt tokens a provider's cache served."""
    cache_write_tokens: int = 0
    """Sum of ``info.usage.cache_write_tokens``: prompt tokens written to a cache."""
    cost_usd: float | None = None
    """Sum of ``info.cost_usd`` (dollars, caching counted); None: no checkpoint was priced."""


@dataclass
class RunSummary:
    """A run with its aggregates and liveness, as lists and badges show it."""

    run: RunRow
    """The run's row."""
    stats: RunStats | None
    """Its aggregates; None while it has no checkpoint yet."""
    live: bool
    """Whether a process is executing it now (sampled before and after the read)."""


@dataclass
class AgentSummary:
    """An agent of a notebook: its latest run, how many runs it has, its recent timeline."""

    name: str
    """The agent's name."""
    latest: RunSummary
    """Its latest run."""
    runs: int
    """How many runs it has."""
    timeline: list[CheckpointRow]
    """The latest run's last checkpoints (at most the limit asked for), oldest first."""


@dataclass
class AgentDetail:
    """One agent with every run it has."""

    summary: AgentSummary
    """As in :meth:`Store.agent_summaries`."""
    runs: list[RunSummary]
    """Every run, oldest first."""


@dataclass
class RunDetail:
    """One run with all its checkpoints' metadata."""

    summary: RunSummary
    """The run, its aggregates and liveness."""
    checkpoints: list[CheckpointRow]
    """Its own checkpoints, in order."""


@dataclass
class StoreInfo:
    """What ``jupyter-agent store-info`` reports."""

    location: str
    """Where the store is (a path, or a URL without its password)."""
    exists: bool
    """Whether anything was ever written there."""
    schema_version: int | None
    """The schema version stored; None for a store not created yet."""
    reads_version: int
    """The newest schema version this backend reads."""
    runs: int
    """Runs stored."""
    checkpoints: int
    """Checkpoints stored."""


RUN_COLUMNS = [f.name for f in fields(RunRow)]
CHECKPOINT_COLUMNS = [f.name for f in fields(CheckpointRow)]
#: The most a checkpoint's ``tokens`` can hold: the column is ``INTEGER`` on every
#: backend, and a record it refuses would keep its run from being folded in.
MAX_ROW_TOKENS = 2**31 - 1


class Capability(enum.Enum):
    """An optional feature a backend declares in :attr:`Store.capabilities`.

    The verbs of :class:`Store` are every backend's; these come with more
    members or rules, which callers (and the conformance suite) rely on only
    where the store declares them.
    """

    JOURNALS = "journals"
    """Runs are journaled beside the store and folded in later, so a reader can bring
    an answer up to date from the journals while another process holds the store
    (see :class:`JournaledStore`)."""
    VALUE_FILES = "value_files"
    """Large values are files beside the store (``blob_dir``), refused when another user
    owns or could write them."""
    OWNERS = "owners"
    """Every row has an owner (``owner``): reads see that owner's rows only, and a
    payload or value another owner wrote is refused."""
    HISTORY_TAIL = "history_tail"
    """A history's last checkpoints and its totals, without reading every row (see
    :class:`HistoryTailStore`)."""


# -- the protocol -----------------------------------------------------------------------


@runtime_checkable
class RunWriterLike(Protocol):
    """Appends one execution's records durably; see :meth:`Store.writer`."""

    secrets: list[str]
    """The values redacted from everything it writes."""

    def put_run(self, run: RunRow) -> None:
        """Record the run's row (once, in its first execution); durable with the next checkpoint."""

    def put_blob(self, digest: str, data: bytes) -> None:
        """Record a namespace value (dill bytes) under its content hash; durable with the
        checkpoint that refers to it, written next."""

    def prepare_blob(self, digest: str, data: bytes) -> None:
        """Do ahead, on any thread, what :meth:`put_blob` of this value would wait for
        (the DuckDB writer writes a large value's file); ``put_blob`` still records it."""

    def put_checkpoint(self, cp: CheckpointRow, payload: bytes, *, durable: bool = True) -> None:
        """Record a checkpoint and its JSON payload; durable when this returns.

        ``durable=False``: kept if the process dies, made durable (if not before)
        with the next checkpoint: for one that nothing acts on until the next.
        """

    def close(self, *, merge: bool = True) -> None:
        """End the execution; its records become visible to every reader."""


@runtime_checkable
class Store(Protocol):
    """The checkpoint store of every agent. Implementations must be thread-safe.

    Reads never block a writer for long and never create a store that does not
    exist (except where a verb says it writes). Every fault of the store itself
    is a :class:`~jupyter_agent.errors.StoreError` whose message says what to do;
    a lookup that finds nothing returns None or an empty collection, except
    :meth:`delete_agent`, which raises :class:`~jupyter_agent.errors.NotFound`.
    """

    location: str
    """Where the store is, for messages (never holds a password)."""
    capabilities: frozenset[Capability]
    """The optional features it has (see :class:`Capability`)."""

    # -- writing --------------------------------------------------------------------

    def writer(
        self, run_id: str, secrets: list[str] | None = None, *, durability: str = "sync"
    ) -> RunWriterLike:
        """A writer for one execution of ``run_id``.

        ``secrets`` (default: the secret-looking environment values) are redacted
        from every row and payload written. While it is open the run is live
        (:meth:`live_runs`); a process that dies leaves it not live.
        ``durability`` (:attr:`jupyter_agent.config.RunPolicy.durability`): ``sync``,
        a checkpoint survives a machine crash; ``process``, only the writer's death.
        """

    def save_latest(self, notebook: str, agent: str, run_id: str, body: bytes) -> None:
        """Keep the agent's latest run and state (``body``) where :meth:`saved_latest` reads
        them without a query, if this backend can; called as an execution ends."""
        return None

    def saved_latest(self, notebook: str, agent: str) -> tuple[str, bytes] | None:
        """(run id, body) of :meth:`save_latest`, while nothing written since contradicts it."""
        return None

    def agent_lock(self, notebook: str, agent: str) -> AbstractContextManager[None]:
        """Be the only writer of the agent while held (re-entrant in a thread).

        Another thread or process gets :class:`~jupyter_agent.errors.AgentBusy` at
        once; a process that dies releases it.
        """

    def flush(self) -> None:
        """Make everything written by finished and live writers visible to queries now."""

    # -- reading rows -----------------------------------------------------------------

    def runs(self, notebook: str | None = None, agent: str | None = None) -> list[RunRow]:
        """Runs, oldest first, optionally of one notebook and agent."""

    def run(self, run_id: str) -> RunRow | None:
        """One run, or None."""

    def checkpoints(self, run_id: str, kind: str | None = None) -> list[CheckpointRow]:
        """A run's own checkpoints, in order (metadata only); only those of ``kind`` if given."""

    def latest_checkpoints(self, run_ids: list[str]) -> dict[str, CheckpointRow]:
        """The last checkpoint of each run that has one."""

    def payloads(
        self, chain: list[tuple[str, int | None]], since: int = 0
    ) -> list[tuple[CheckpointRow, bytes]]:
        """Checkpoints with their JSON payloads along ``(run_id, up-to-step)`` segments,
        from step ``since`` on (a resume reads from its latest snapshot, see
        :func:`jupyter_agent.core.state.fold`).

        Unpickles nothing, so it needs no trust check. A chain with a hole (a
        checkpoint lost to damage) raises :class:`~jupyter_agent.errors.StoreError`:
        folding it would make up a conversation that never happened.
        """

    def blobs(self, hashes: list[str]) -> dict[str, bytes]:
        """Namespace values (dill bytes) by hash; calls :meth:`check_trusted` first."""

    def check_trusted(self) -> None:
        """Raise :class:`~jupyter_agent.errors.StoreError` unless only this user could
        have written the store: blobs are unpickled, and unpickling runs code."""

    def live_runs(self) -> set[str]:
        """Runs a living process is executing now."""

    def model_steps(self, run_ids: list[str]) -> dict[str, list[int]]:
        """Per run, the sorted sequence numbers of its ``model`` checkpoints."""

    # -- summaries (what lists, badges and the REST API show) ---------------------------

    def run_stats(self, run_ids: list[str]) -> dict[str, RunStats]:
        """Aggregates of each run that has checkpoints, ``steps`` counting its history."""

    def agent_summaries(
        self, notebook: str, *, timeline: int = TIMELINE_LIMIT
    ) -> list[AgentSummary]:
        """Every agent of a notebook with its latest run, oldest agent first."""

    def agent_detail(
        self, notebook: str, agent: str, *, timeline: int = TIMELINE_LIMIT
    ) -> AgentDetail | None:
        """One agent with all its runs, or None."""

    def run_detail(self, run_id: str) -> RunDetail | None:
        """One run with all its checkpoints, or None."""

    def forks(self, run_ids: list[str]) -> list[RunRow]:
        """Runs outside ``run_ids`` forked from one of them (they depend on its history)."""

    def exists(self) -> bool:
        """Whether anything was ever written (reading must not create the store)."""

    def info(self) -> StoreInfo:
        """Schema version and row counts."""

    def sizes(self) -> dict[str, int]:
        """Bytes the store takes, by part (backend-specific keys)."""

    # -- deleting -------------------------------------------------------------------------

    def delete_runs(self, run_ids: list[str]) -> int:
        """Delete runs and their checkpoints, then every blob no checkpoint refers to.

        Returns how many runs were really deleted (unknown ids, and on a team store
        another member's runs, delete nothing). Refuses
        (:class:`~jupyter_agent.errors.Conflict`) while one of them is live.
        """

    def delete_agent(self, notebook: str, agent: str, *, keep_latest: bool = False) -> list[str]:
        """Delete an agent's runs (all, or all but the latest and its ancestors).

        A deleted run's ``delegate`` children are deleted with it. Forks keep their
        ancestors: a run another agent's run was forked from is not deleted (:class:`~jupyter_agent.errors.Conflict`), nor a live run. An
        agent with no runs raises :class:`~jupyter_agent.errors.NotFound`.
        Returns the deleted run ids.
        """

    # -- notebooks and models ----------------------------------------------------------

    def move_notebook(self, old: str, new: str, moved_at: float | None = None) -> int:
        """Record that a notebook or folder moved; its runs (also ones written later by
        kernels that still use the old path) follow. Returns how many runs moved."""

    def resolve_notebook(self, path: str, since: float | None = None) -> str:
        """Where the notebook known as ``path`` since ``since`` (default: this
        process's start) lives now."""

    def store_id(self) -> str | None:
        """Which store this is: an id made once by whoever created it, never a credential.

        A notebook records it, so a run against another store is noticed
        (see :mod:`jupyter_agent.core.notebook_store`). None: no store yet."""

    def learnt_window(self, model: str) -> int | None:
        """The context window ``model``'s endpoint reported, if it ever refused one."""

    def remember_window(self, model: str, tokens: int) -> None:
        """Remember ``model``'s context window for later runs."""

    # -- batching -----------------------------------------------------------------------

    def session(self) -> AbstractContextManager[None]:
        """Serve the reads of this thread from one connection until it exits.

        Nothing may wait on a model or a user inside it: other processes may be
        kept waiting while it is open.
        """


@runtime_checkable
class JournaledStore(Store, Protocol):
    """What a store that declares :attr:`Capability.JOURNALS` offers its readers."""

    journal_dir: Path
    """Where its journals are."""
    FOLDED_KEEP: float
    """Seconds a folded journal is kept for readers that cannot open the store meanwhile."""

    def waiting(self, seconds: float) -> AbstractContextManager[None]:
        """Wait at most ``seconds`` for the store in this thread (not its ``busy_timeout``)."""

    def file_state(self) -> tuple:
        """What changes whenever the store's file is written."""


@runtime_checkable
class HistoryTailStore(Store, Protocol):
    """What a store that declares :attr:`Capability.HISTORY_TAIL` offers."""

    def history_tail(
        self, chain: list[tuple[str, int | None]], limit: int
    ) -> tuple[list[CheckpointRow], dict]:
        """The last ``limit`` checkpoints (metadata only) of the history along ``chain``'s
        segments, oldest first, and totals over all of it (``checkpoints``, ``tokens``,
        ``prompt_tokens``, ``completion_tokens``, ``cached_tokens``, ``cache_write_tokens``,
        ``cost_usd``, ``saved_tokens``, ``size``, ``plan``)."""


def history_chain(run: RunRow, parent_of: dict[str, RunRow]) -> list[tuple[str, int | None]]:
    """The ``(run, up-to-step)`` segments of ``run``'s history, from rows already read."""
    return history.segments(run, parent_of.get)


def payload_messages(payload: bytes) -> list[dict]:
    """The messages a checkpoint's JSON payload adds (for display; nothing is unpickled)."""
    import json

    try:
        data = json.loads(payload) if payload else {}
    except ValueError:
        return []
    messages = data.get("messages") if isinstance(data, dict) else None
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
