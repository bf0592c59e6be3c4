"""The checkpoint store of one user: a DuckDB file plus per-run journals beside it.

The verbs are :class:`jupyter_agent.store.sql.SQLStore`'s, in DuckDB's dialect.
What is this backend's own:

* Writers never touch DuckDB while an agent runs: each run execution appends to
  its own journal (:mod:`jupyter_agent.store.duckdb.journal`, through
  :mod:`jupyter_agent.store.duckdb.writer`), folded in when it ends
  (:mod:`jupyter_agent.store.duckdb.fold`). DuckDB is opened only for short
  moments, retrying while another process holds the file
  (:mod:`jupyter_agent.store.duckdb.files`).
* Values of :data:`blobfiles.MIN_BYTES` or more are files beside the store,
  journaled by reference (:mod:`jupyter_agent.store.duckdb.blobfiles`).
* Liveness is a journal whose owner holds its ``flock``; one writer per agent is
  a lock file (:mod:`jupyter_agent.store.duckdb.locks`).
* Trust is the files': pickled data is handed out only from files no other user
  owns or could write (:meth:`DuckDBStore.check_trusted`).

Checkpoint payloads are JSON (``payload_format`` 'json'); the store unpickles
nothing but the dill payloads of an older release, once, when it migrates them.
Blobs (namespace values) are unpickled by the kernel, after :meth:`check_trusted`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from ...config import SYNC
from ...core.redaction import secrets_in_environment
from ...errors import AgentBusy, StoreError
from ..api import CHECKPOINT_COLUMNS, Capability, CheckpointRow, RunRow
from ..dialect import MAX_STEP, Dialect, Nothing, Query, first, pinned
from ..rows import checkpoint_from_row
from ..sql import SQLStore, process_started_at
from . import blobfiles, journal, known, locks, statefile
from .files import DuckDBQuery
from .fold import JournalFolding
from .journal import JournalWriter
from .paths import warn
from .writer import DuckDBRunWriter

if TYPE_CHECKING:
    import duckdb
else:
    from .lazy import duckdb  # imported at the first connection


class DuckDBDialect(Dialect):
    """DuckDB's SQL: ``?`` parameters, JSON functions on the text columns."""

    parsed_of = "{column}"  # DuckDB's JSON functions take the text
    value_of = "json_extract({parsed}, '$.{key}')"
    number_of = "TRY_CAST(json_extract_string({parsed}, '$.{dotted}') AS BIGINT)"
    amount_of = "TRY_CAST(json_extract_string({parsed}, '$.{dotted}') AS DOUBLE)"
    strings_of = "UNNEST(CAST({value} AS VARCHAR[]))"
    is_array_of = "json_type({value}) = 'ARRAY'"
    last_of = "arg_max({expr}, step){only}"  # no list built and sorted per group


def _agent_key(notebook: str, agent: str) -> str:
    """An agent's name on disk: its lock file's and its state file's."""
    return hashlib.sha256(f"{notebook}\0{agent}".encode()).hexdigest()[:32]


class DuckDBStore(JournalFolding, SQLStore):
    """Checkpoints of every agent, kept in one DuckDB file and its journals.

    Implements :class:`jupyter_agent.store.api.Store`.
    """

    dialect: ClassVar[Dialect] = DuckDBDialect()
    capabilities = frozenset({Capability.JOURNALS, Capability.VALUE_FILES, Capability.HISTORY_TAIL})
    lost_how = " (lost to a damaged journal, which was kept beside the store for inspection)"

    # -- connections -------------------------------------------------------------

    @contextlib.contextmanager
    def _reads(self, *, fold: bool = True) -> Iterator[Query]:
        """DuckDB with the journals folded in (``fold``), or as it is; nothing while there is
        no store (only its DuckDB file, without ``fold``): reading never creates it."""
        if not (self.exists() if fold else self.path.exists()):
            yield Nothing()
            return
        with self._connect(merge=fold) as con:
            yield DuckDBQuery(con)

    @contextlib.contextmanager
    def _writes(self, doing: str, *, fold: bool = True) -> Iterator[Query]:
        """DuckDB after folding finished journals (``fold``), live ones left out."""
        with self._connect(merge=fold, live=False) as con:
            yield DuckDBQuery(con)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Serve this thread's reads from one connection (journals folded once, as it opens).

        For a batch of reads that belong together, such as everything a resume
        reads before its first model request. DuckDB is opened by the first read
        that needs it (what the small files of :mod:`.known` and the state file
        answer needs none), and held until the session ends, so no model call or
        user wait may happen inside. Re-entrant.
        """
        if (
            getattr(self._local, "con", None) is not None
            or getattr(self._local, "session", None) is not None
        ):
            yield
            return
        with contextlib.ExitStack() as opened, pinned(self._local, "session", opened):
            yield

    def as_of(self) -> list[int] | None:
        """The DuckDB file's stamp (:func:`statefile.stamp`) once this thread's session, if
        any, has opened it: what is read after this is at least as new as the stamp."""
        if getattr(self._local, "session", None) is not None and self.exists():
            with self._reads():
                pass
        return statefile.stamp(self.path)

    def flush(self) -> None:
        """Fold finished runs' journals into DuckDB now (running ones are their kernel's)."""
        with self._connect(live=False):
            pass

    def exists(self) -> bool:
        return self.path.exists() or self.journal_dir.is_dir()

    # -- writing -------------------------------------------------------------------

    def writer(
        self, run_id: str, secrets: list[str] | None = None, *, durability: str = SYNC
    ) -> DuckDBRunWriter:
        """A journal for one execution of ``run_id``; close it to fold it into DuckDB.

        ``secrets`` (default: the secret-looking environment values) are redacted
        from everything written, whatever the caller passes in. With ``durability``
        ``process`` the journal is written but never ``fdatasync``ed: the page cache
        outlives a killed kernel, not a crashed machine.
        """
        self._ensure_dir()
        try:
            jw = JournalWriter(self.journal_dir, run_id, sync=durability == SYNC)
        except OSError as exc:
            raise StoreError(
                f"Cannot write checkpoints under {self.journal_dir}: {exc.strerror or exc}."
            ) from exc
        return DuckDBRunWriter(self, jw, secrets_in_environment() if secrets is None else secrets)

    @contextlib.contextmanager
    def agent_lock(self, notebook: str, agent: str) -> Iterator[None]:
        """Be the only writer of the agent ``agent`` of ``notebook`` while this is held.

        Taken before the agent's latest run is read, and held until its execution
        ends, so deciding what to run and running it are one atomic step across
        processes. Re-entrant within a thread; another thread or process gets
        :class:`AgentBusy` at once, naming the holder's pid. A process that dies
        releases it (a ``flock`` on a per-agent file in the journal directory).
        """
        self._ensure_dir()
        key = _agent_key(notebook, agent)
        held = contextlib.ExitStack()
        try:
            held.enter_context(locks.owner_lock(self.journal_dir / (key + locks.LOCK_SUFFIX)))
        except locks.LockHeld as exc:
            raise (
                AgentBusy.here(agent) if exc.here else AgentBusy.elsewhere(agent, exc.pid)
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise StoreError(
                    f"Cannot take the lock of agent {agent!r} under {self.journal_dir}: "
                    f"{exc.strerror or exc}."
                ) from exc
            # A store this process cannot write: it cannot be a second writer either
            # (its journal cannot be created), and restoring from it must still work.
        with held:
            yield

    def save_latest(self, notebook: str, agent: str, run_id: str, body: bytes) -> None:
        """The agent's state file (see :mod:`jupyter_agent.store.duckdb.statefile`)."""
        statefile.write(self.journal_dir, _agent_key(notebook, agent), self.path, run_id, body)

    def saved_latest(self, notebook: str, agent: str) -> tuple[str, bytes] | None:
        return statefile.read(self.journal_dir, _agent_key(notebook, agent), self.path)

    # -- what the small files answer (see .known) -----------------------------------------

    def saved_timeline(self, notebook: str, agent: str) -> tuple[list[RunRow], dict] | None:
        """The agent's runs and what its timeline showed, kept by :meth:`keep_timeline`,
        if nothing was written since."""
        return known.read_timeline(self.journal_dir, _agent_key(notebook, agent), self.path)

    def keep_timeline(
        self, notebook: str, agent: str, as_of: list[int] | None, runs: list[RunRow], view: dict
    ) -> None:
        """Keep the agent's runs and a timeline's ``view`` of them, read after :meth:`as_of`
        gave ``as_of``; best effort."""
        with contextlib.suppress(OSError, TypeError):
            key = _agent_key(notebook, agent)
            known.write_timeline(self.journal_dir, key, as_of, runs, view)

    def _summary(self) -> known.Summary | None:
        summary = known.read_summary(self.journal_dir, self.path)
        if summary is not None and summary.store_id:
            self._known_id = (self._inode(), summary.store_id)
        return summary

    def _inode(self) -> int | None:
        try:
            return os.stat(self.path).st_ino
        except OSError:
            return None

    #: The store id a current summary gave, with the DuckDB file's inode then: an id never
    #: changes while the file is the same one, journals written since or not.
    _known_id: tuple[int | None, str] | None = None

    def _closing(self, con: Any) -> None:
        """Note what the small files answer, unless they are current already."""
        db = statefile.stamp(self.path)  # before the reads: no other process writes now
        if db is None or len(db) > 2 and db[2] > 0:
            return  # this connection wrote: its close checkpoints the log, a new stamp
        if statefile.read_current(known.summary_path(self.journal_dir), self.path) is not None:
            return
        with contextlib.suppress(OSError, TypeError, ValueError, duckdb.Error):
            q = DuckDBQuery(con)
            known.write_summary(
                self.journal_dir,
                db,
                q.all("SELECT DISTINCT notebook, agent FROM runs"),
                q.all("SELECT key, value FROM meta"),
                q.all("SELECT old, new, moved_at FROM notebook_moves ORDER BY moved_at"),
            )

    def runs(self, notebook: str | None = None, agent: str | None = None) -> list[RunRow]:
        if not self.path.exists() and not journal.any_journal(self.journal_dir):
            return []  # a new store: neither its file nor a journal holds a run
        if notebook is not None and agent is not None:
            if (kept := self.saved_timeline(notebook, agent)) is not None:
                return kept[0]
            summary = self._summary()
            if summary is not None and not summary.has_runs(notebook, agent):
                return []  # a new agent: no run in DuckDB, none in a journal
        return super().runs(notebook, agent)

    def store_id(self) -> str | None:
        summary = self._summary()
        if summary is not None and summary.store_id:
            return summary.store_id
        known_id = self._known_id
        if known_id is not None and known_id[0] is not None and known_id[0] == self._inode():
            return known_id[1]
        return super().store_id()

    def resolve_notebook(self, path: str, since: float | None = None) -> str:
        summary = self._summary()
        cutoff = process_started_at() if since is None else since
        found = summary.resolve(path, cutoff) if summary is not None else None
        return found if found is not None else super().resolve_notebook(path, since)

    def learnt_window(self, model: str) -> int | None:
        summary = self._summary()
        if summary is not None:
            return summary.windows.get(model)
        return super().learnt_window(model)

    # -- what the files say ------------------------------------------------------------

    def live_runs(self) -> set[str]:
        return journal.live_run_ids(self.journal_dir)

    def _payload_format(self) -> str:
        return "'dill'" if self._v1 else super()._payload_format()

    def _value_apart(self, digest: str, size: int) -> bytes | None:
        """A large value, from its file beside the store; a damaged one is missing, with a warning.

        The variables it holds are then reported as not restored, like a missing value, and
        never restored wrong; the file stays where it is for inspection."""
        try:
            return blobfiles.read(self.blob_dir, digest, size)
        except blobfiles.Damaged as exc:
            warn(
                f"The saved value file {exc.strerror}; the variables it holds are not "
                "restored. Run the cell with --restart to recompute them.",
                blobfiles.path_of(self.blob_dir, digest),
            )
            return None
        except blobfiles.Untrusted as exc:
            raise StoreError(
                f"The stored value {exc.strerror}; it is not loaded, because loading "
                "a value can run code. Use a store of your own (JUPYTER_AGENT_STORE)."
            ) from None

    def _in_flight(self) -> set[str]:
        return self._live_blob_hashes()

    def _collect(self, run_ids: list[str], keep: set[str]) -> None:
        """Value files nothing refers to (younger ones stay: their writer may not have journaled
        them yet), and the deleted runs' folded journals and state files, so a stale answer
        cannot show them."""
        blobfiles.collect(self.blob_dir, keep)
        self._drop_folded(set(run_ids))
        statefile.drop(self.journal_dir, set(run_ids))

    def sizes(self) -> dict[str, int]:
        """Bytes on disk of the DuckDB file, of the journals and of the blob files."""
        db = self.path.stat().st_size if self.path.exists() else 0
        jn = (
            sum(p.stat().st_size for p in self.journal_dir.glob("*"))
            if self.journal_dir.is_dir()
            else 0
        )
        bf = (
            sum(p.stat().st_size for p in self.blob_dir.glob("*/*"))
            if self.blob_dir.is_dir()
            else 0
        )
        return {"duckdb": db, "journals": jn, "blobs": bf}

    # -- a long history's tail (Capability.HISTORY_TAIL) --------------------------------

    def history_tail(
        self, chain: list[tuple[str, int | None]], limit: int
    ) -> tuple[list[CheckpointRow], dict]:
        """The last ``limit`` checkpoints (metadata only) of the history along ``chain``'s
        (run_id, up-to-step) segments, oldest first, and totals over all of it.

        What a timeline shows of a long run without reading its every row. Totals:
        ``checkpoints``, ``tokens``, ``prompt_tokens``, ``completion_tokens``,
        ``cached_tokens``, ``cache_write_tokens``, ``cost_usd`` (None: nothing priced),
        ``saved_tokens`` (of resumes), ``size``, and ``plan``: the latest plan, or None.
        """
        segments = (
            "SELECT UNNEST(?) AS seg_run, UNNEST(?) AS upto, UNNEST(?) AS pos",
            [[r for r, _ in chain], [MAX_STEP if u is None else u for _, u in chain],
             list(range(len(chain)))],
        )  # fmt: skip
        history = (
            f"WITH seg AS ({segments[0]}), h AS (SELECT c.*, seg.pos FROM checkpoints c "
            "JOIN seg ON c.run_id = seg.seg_run AND c.step <= seg.upto) "
        )
        plan = self.dialect.json_value("info", "plan")

        def total(*keys: str, where: str = "", amount: bool = False) -> str:
            """The sum of a number in ``info``, parsed only in rows whose text names it."""
            read = self.dialect.json_amount if amount else self.dialect.json_number
            number = read("info", *keys)
            return f"sum({number}) FILTER (WHERE info LIKE '%\"{keys[-1]}\"%'{where})"

        with self._reads() as q:
            rows = q.all(
                f"{history} SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM h "
                "ORDER BY pos DESC, step DESC LIMIT ?",
                [*segments[1], max(limit, 0)],
            )
            totals = first(
                q,
                f"{history} SELECT count(*), sum(tokens), {total('usage', 'prompt_tokens')}, "
                f"{total('usage', 'completion_tokens')}, "
                f"{total('saved_tokens', where=' AND kind = ' + repr('resume'))}, sum(size), "
                f"arg_max({plan}, pos * 4294967296 + step) FILTER (WHERE info LIKE '%\"plan\"%' "
                f"AND CAST({plan} AS VARCHAR) NOT IN ('null', '\"\"', '[]', '{{}}')), "
                f"{total('usage', 'cached_tokens')}, {total('usage', 'cache_write_tokens')}, "
                f"{total('cost_usd', amount=True)} FROM h",
                segments[1],
            ) or (0, 0, 0, 0, 0, 0, None, 0, 0, None)
        keys = ("checkpoints", "tokens", "prompt_tokens", "completion_tokens", "saved_tokens")
        out: dict = {k: int(v or 0) for k, v in zip((*keys, "size"), totals[:6], strict=True)}
        out["plan"] = json.loads(totals[6]) if totals[6] is not None else None
        out["cached_tokens"], out["cache_write_tokens"] = int(totals[7] or 0), int(totals[8] or 0)
        out["cost_usd"] = None if totals[9] is None else float(totals[9])
        return [checkpoint_from_row(r) for r in reversed(rows)], out
