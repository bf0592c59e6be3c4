"""The PostgreSQL store's writer: one run execution's records, straight into the database.

Rows are redacted by :class:`jupyter_agent.store.writer.RunWriter`. Each record
commits on the writer's own connection; blobs wait for the checkpoint that
refers to them and go in its transaction, so a checkpoint is never stored
without its values. The run counts as live while the writer holds the run's
advisory lock (see :mod:`jupyter_agent.store.postgres.locks`).
"""

from __future__ import annotations

from typing import Any

import psycopg

from ...errors import AgentBusy, StoreError
from ..api import CHECKPOINT_COLUMNS, RUN_COLUMNS
from ..faults import crash, crash_due
from ..rows import Record, malformed
from ..writer import RunWriter
from .admin import SCHEMA, connect, problem
from .locks import Slot, locks_of, random_key


def _text(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL; DuckDB's could, so it is replaced, not refused."""
    return value.replace("\0", "\ufffd") if isinstance(value, str) else value


class PostgresRunWriter(RunWriter):
    """Writes one run execution's records to PostgreSQL as ``owner``, secrets redacted."""

    def __init__(
        self,
        url: str,
        busy_timeout: float,
        owner: str,
        run_id: str,
        secrets: list[str],
        *,
        sync: bool = True,
    ) -> None:
        super().__init__(secrets)
        self.url = url
        self.owner = owner
        self.run_id = run_id
        self._locks = locks_of(url, busy_timeout)
        self._con: psycopg.Connection | None = None
        try:
            self._con = connect(url, "writer", busy_timeout, create=True)
            if "synchronous_commit" not in url:
                # ``process`` durability: a commit need not wait for the server's disk (a
                # dead kernel loses nothing, a crashed server only the last moments'
                # checkpoints: the run resumes before them). ``sync`` waits for it. The
                # URL can set it for every commit instead.
                self._con.execute(f"SET synchronous_commit = {'on' if sync else 'off'}")
        except BaseException as exc:
            if self._con is not None:
                self._con.close()
            if isinstance(exc, psycopg.Error):
                raise problem(url, exc, "start writing checkpoints") from exc
            raise
        # The run's key: kept in the owner's row of the run, rotated at each take, never
        # derived from the run id, which travels in URLs, logs and exports.
        self._slot = Slot("runs", (("run_id", run_id), ("owner", owner)))
        try:
            key, holder = self._locks.acquire(self._slot, reentrant=False)
        except BaseException:
            self._con.close()
            raise
        if key is None:
            self._con.close()
            where = "in this process" if holder == "here" else f"elsewhere ({holder})"
            raise AgentBusy(f"Run {run_id} is already being written {where}.")
        self._key = key
        self._blobs: list[list] = []

    def prepare_blob(self, digest: str, data: bytes) -> None:
        """Nothing to do ahead: the value goes into the database with its record."""

    def put_blob(self, digest: str, data: bytes) -> None:
        """Hold a value for its checkpoint's transaction; the database keeps large ones too.

        (The DuckDB writer puts large values in files beside its store; a shared
        server has no such directory, and every host must read them.)
        """
        self._append(Record("blobs", {"hash": digest, "size": len(data)}, data))

    def _append(self, record: Record, *, durable: bool = True) -> None:
        # Each record commits; the commit waits for the disk as the URL asks, ``durable`` or not.
        if malformed(record) or record.table not in ("runs", "blobs", "checkpoints"):
            raise StoreError(
                f"Cannot write a {record.table} record with a missing or mistyped column "
                f"({sorted(record.row) if isinstance(record.row, dict) else record.row!r}); "
                "nothing was stored."
            )
        if self._con is None:
            raise StoreError(f"The writer of run {self.run_id} is closed.")
        row = {k: _text(v) for k, v in record.row.items()}
        # Fault injection, as the journal does (``$JUPYTER_AGENT_CRASH``): ``torn``
        # dies inside the checkpoint's transaction, before its commit.
        due = crash_due(record.label)
        if due == "before" or (due == "torn" and record.table != "checkpoints"):
            crash()
        if record.table == "blobs":
            self._blobs.append([row["hash"], self.owner, row["size"], record.payload])
            if due == "after":
                crash()
            return
        try:
            if record.table == "runs":
                key = self._key if row["run_id"] == self.run_id else random_key()
                self._insert_once(
                    "runs",
                    {**{c: row.get(c) for c in RUN_COLUMNS}, "owner": self.owner},
                    {"lock_key": key},
                    f"the row of run {row['run_id']}",
                )
            else:
                values = {c: row.get(c) for c in CHECKPOINT_COLUMNS}
                values.update(
                    owner=self.owner,
                    payload_format=row.get("payload_format") or "json",
                    payload=record.payload,
                )
                with self._con.transaction():
                    self._put_blobs()
                    self._insert_once(
                        "checkpoints",
                        values,
                        {},
                        f"checkpoint {row['step']} of run {row['run_id']}",
                    )
                    if due == "torn":
                        crash()
                self._blobs.clear()
        except psycopg.Error as exc:
            raise problem(self.url, exc, "store a checkpoint") from exc
        self.bytes_written += len(record.payload) + sum(len(str(v)) for v in row.values())
        if due == "after":
            crash()

    def _insert_once(
        self, table: str, row: dict[str, Any], extra: dict[str, Any], what: str
    ) -> None:
        """Insert a row of this writer's owner; the very same row stored already is no error.

        The owner is part of every key, so another member's rows never collide with
        these. A conflict is with a row of this owner's: the same row again (a replay
        after a crash or a lost reply) passes, while a different one is an error, never a
        silent skip, which would let the cell say "done" while its steps went unsaved.
        ``extra`` columns (a run's lock key) are not compared: they are the writer's own.
        """
        assert self._con is not None
        columns, values = [*row, *extra], [*row.values(), *extra.values()]
        added = self._con.execute(
            f"INSERT INTO {SCHEMA}.{table} ({', '.join(columns)}) "
            f"VALUES ({', '.join(['%s'] * len(values))}) ON CONFLICT DO NOTHING",
            values,
        )
        if added.rowcount:
            return
        key = [c for c in ("run_id", "step", "owner") if c in row]
        same = self._con.execute(
            f"SELECT 1 FROM {SCHEMA}.{table} WHERE {' AND '.join(f'{c} = %s' for c in key)} "
            f"AND ({', '.join(row)}) IS NOT DISTINCT FROM ({', '.join(['%s'] * len(row))})",
            [*(row[c] for c in key), *row.values()],
        ).fetchone()
        if same is None:
            raise StoreError(
                f"Could not store {what}: it is already stored, with other contents (a second "
                "writer of this run, or its id used twice). Nothing was overwritten; the run "
                "stopped at its last saved checkpoint. Run the cell again to resume it, or "
                "with --restart to start a new run."
            )

    def _put_blobs(self) -> None:
        assert self._con is not None
        if self._blobs:
            # Keyed by content hash and owner: a conflict is this owner's same value, stored.
            with self._con.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {SCHEMA}.blobs (hash, owner, size, data) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    self._blobs,
                )
            self.bytes_written += sum(b[2] for b in self._blobs)

    def close(self, *, merge: bool = True) -> None:
        """Store blobs no checkpoint took yet, and end the run's liveness."""
        con, self._con = self._con, None
        if con is None:
            return
        try:
            if self._blobs and not con.broken:
                self._con = con
                try:
                    with con.transaction():
                        self._put_blobs()
                except psycopg.Error as exc:
                    raise problem(self.url, exc, "store a saved value") from exc
                finally:
                    self._con = None
                    self._blobs.clear()
        finally:
            con.close()
            self._locks.release(self._slot)
