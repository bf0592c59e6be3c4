"""What every backend's writer does before a record reaches its store: redaction.

A writer appends one run execution's records (see
:class:`jupyter_agent.store.api.RunWriterLike`). Turning a run or a checkpoint
into a row, with the writer's secrets redacted, happens here once; where the
row then goes is the backend's: a journal (:mod:`jupyter_agent.store.duckdb.writer`)
or the database (:mod:`jupyter_agent.store.postgres.writer`).

Redaction here is the last line of defence: prompts, summaries, tool code and
error texts in rows are scrubbed, and a checkpoint payload that still holds a
secret is re-encoded redacted. Blobs are screened earlier, by
:mod:`~jupyter_agent.namespace.tracking`, which skips values holding a secret.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod

from ..core.redaction import contains_secret, nothing_to_redact, redact, verbatim_in_json
from .api import CHECKPOINT_COLUMNS, RUN_COLUMNS, CheckpointRow, RunRow
from .rows import Record


class RunWriter(ABC):
    """Appends one run execution's records to its backend, with secrets redacted."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        self.secrets = list(secrets or [])
        #: A row's JSON can be searched whole for what redaction looks for (see
        #: :meth:`put_checkpoint`).
        self._whole = verbatim_in_json(self.secrets)
        #: Bytes handed to the store so far (rows, payloads and values).
        self.bytes_written = 0

    def put_run(self, run: RunRow) -> None:
        """Record the run's row; durable with the first checkpoint, written next."""
        row = redact({c: getattr(run, c) for c in RUN_COLUMNS}, self.secrets)
        row["info"] = json.dumps(row["info"])
        self._append(Record("runs", row), durable=False)

    def put_checkpoint(self, cp: CheckpointRow, payload: bytes, *, durable: bool = True) -> None:
        """Record a checkpoint and its JSON payload, both redacted; durable when this returns
        (or, with ``durable=False``, with the next checkpoint)."""
        row = {c: getattr(cp, c) for c in CHECKPOINT_COLUMNS}
        info = json.dumps(row["info"])
        # Redacted value by value only when the row, searched whole, holds a secret or a
        # credential's mark: most rows do not, and walking them costs 14 µs a checkpoint.
        texts = [info, *(v for v in row.values() if isinstance(v, str))]
        if not (self._whole and nothing_to_redact("\n".join(texts), self.secrets)):
            row = redact(row, self.secrets)
            info = json.dumps(row["info"])
        row["info"] = info
        row["payload_format"] = "json"
        if self.secrets and contains_secret(payload, self.secrets):
            from ..core.state import redact_payload

            payload = redact_payload(payload, self.secrets)
        self._append(Record("checkpoints", row, payload), durable=durable)

    @abstractmethod
    def prepare_blob(self, digest: str, data: bytes) -> None:
        """Do ahead, on any thread, what :meth:`put_blob` of this value would wait for."""

    @abstractmethod
    def put_blob(self, digest: str, data: bytes) -> None:
        """Record a namespace value under its content hash, durable with the checkpoint
        that refers to it (written next)."""

    @abstractmethod
    def _append(self, record: Record, *, durable: bool = True) -> None:
        """Hand one redacted record to the store."""

    @abstractmethod
    def close(self, *, merge: bool = True) -> None:
        """End the execution; its records become visible to every reader."""
