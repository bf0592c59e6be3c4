"""The DuckDB store's writer: one run execution's records, appended to its journal.

Rows are redacted by :class:`jupyter_agent.store.writer.RunWriter`; here they
are framed into the execution's journal (see
:mod:`jupyter_agent.store.duckdb.journal`), and a large value is written to its
file beside the store first (see :mod:`jupyter_agent.store.duckdb.blobfiles`)
and journaled by reference. Closing folds the journal into DuckDB.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol

from ...errors import StoreError
from ..rows import Record
from ..writer import RunWriter
from . import blobfiles
from .journal import JournalWriter


class _Folds(Protocol):
    """What the writer needs of its store: where values go, and folding."""

    blob_dir: Path

    def flush(self) -> None: ...


class DuckDBRunWriter(RunWriter):
    """Appends one run execution's records to its journal, with secrets redacted."""

    def __init__(self, store: _Folds, jw: JournalWriter, secrets: list[str] | None = None) -> None:
        super().__init__(secrets)
        self.store = store
        self._journal = jw

    def prepare_blob(self, digest: str, data: bytes) -> None:
        """Write a large value's file now (thread-safe); :meth:`put_blob` then only journals it."""
        if len(data) >= blobfiles.MIN_BYTES and blobfiles.usable_name(digest):
            self._write_file(digest, data)

    def put_blob(self, digest: str, data: bytes) -> None:
        """Journal a value; a large one is written to its file first and journaled by reference."""
        if len(data) < blobfiles.MIN_BYTES or not blobfiles.usable_name(digest):
            # Durable with the checkpoint that refers to it, written next.
            self._append(Record("blobs", {"hash": digest, "size": len(data)}, data), durable=False)
            return
        self._write_file(digest, data)  # a file prepared already is only touched
        self.bytes_written += len(data)
        record = Record("blobs", {"hash": digest, "size": len(data), "file": True})
        self._append(record, durable=False)

    def _write_file(self, digest: str, data: bytes) -> None:
        try:
            blobfiles.write(self.store.blob_dir, digest, data)
        except OSError as exc:
            raise StoreError(
                f"Cannot write a value under {self.store.blob_dir}: {exc.strerror or exc}. "
                "The agent stopped at its last saved checkpoint; free space or fix "
                "permissions, then re-run the cell to resume."
            ) from exc

    def _append(self, record: Record, *, durable: bool = True) -> None:
        try:
            self.bytes_written += self._journal.append(record, durable=durable)
        except OSError as exc:
            raise StoreError(
                f"Cannot write a checkpoint to {self._journal.path}: {exc.strerror or exc}. "
                "The agent stopped at its last saved checkpoint; free space or fix "
                "permissions, then re-run the cell to resume."
            ) from exc
        except ValueError as exc:  # a record too large to frame
            raise StoreError(f"Cannot write a checkpoint: {exc}.") from exc

    def close(self, *, merge: bool = True) -> None:
        """Release the journal and fold it into DuckDB (best effort: a busy store merges later)."""
        self._journal.close()
        if merge:
            with contextlib.suppress(StoreError):
                self.store.flush()
