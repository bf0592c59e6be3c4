"""Per-run write-ahead journals: the fast, crash-safe half of the store.

A DuckDB file can be opened by one process at a time, and while it is open no
other process can even read it. Holding it for the whole life of an agent would
lock every other kernel and the server out; opening it for every checkpoint
costs tens of milliseconds. So each running agent appends its checkpoints to a
journal file of its own (append + fdatasync, well under a millisecond), and the
journal is folded into DuckDB when the run stops or whenever anybody reads.

A journal is owned by the process that holds an exclusive ``flock`` on it: a
journal that nobody can lock belongs to a live run, one that can be locked was
left behind by a dead process and may be merged and deleted. Records are framed
with their length and a CRC32, so a torn tail written by a killed process is
detected and ignored instead of corrupting what came before.

Records are JSON metadata plus an opaque byte payload: reading a journal never
unpickles anything.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"JAJ1"
_HEADER = struct.Struct("<4sII")  # magic, body length, crc32(body)
_JSON_LEN = struct.Struct("<I")
SUFFIX = ".jnl"


@dataclass(frozen=True)
class Record:
    """One journal entry: a table row as JSON plus an optional binary column."""

    table: str
    row: dict
    payload: bytes = b""


def encode(record: Record) -> bytes:
    meta = json.dumps({"t": record.table, "r": record.row}, separators=(",", ":")).encode()
    body = _JSON_LEN.pack(len(meta)) + meta + record.payload
    return _HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body


def decode_all(data: bytes, pos: int = 0) -> tuple[list[Record], int]:
    """Decode complete records from ``pos``; return them and where valid data ends.

    Decoding stops at the first incomplete or damaged frame: a torn tail left by
    a killed writer (or a record still being written) is never misread.
    """
    records: list[Record] = []
    while pos + _HEADER.size <= len(data):
        magic, length, crc = _HEADER.unpack_from(data, pos)
        start, end = pos + _HEADER.size, pos + _HEADER.size + length
        if magic != MAGIC or end > len(data):
            break
        body = data[start:end]
        if zlib.crc32(body) != crc:
            break
        (meta_len,) = _JSON_LEN.unpack_from(body, 0)
        meta = json.loads(body[_JSON_LEN.size : _JSON_LEN.size + meta_len])
        records.append(Record(meta["t"], meta["r"], bytes(body[_JSON_LEN.size + meta_len :])))
        pos = end
    return records, pos


class JournalWriter:
    """An append-only journal owned by this process for the life of one run execution."""

    def __init__(self, directory: Path, run_id: str, *, sync: bool = True) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{run_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp = directory / (name + ".tmp")
        self.path = directory / (name + SUFFIX)
        self.sync = sync
        self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        # Lock before the file gets its visible name, so no merger can mistake
        # a journal that is being born for one left behind by a dead process.
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, self.path)

    def append(self, record: Record) -> int:
        """Write one record durably; return its size in bytes."""
        frame = encode(record)
        os.write(self._fd, frame)
        if self.sync:
            os.fdatasync(self._fd)
        return len(frame)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)  # also releases the flock


@dataclass
class JournalFile:
    """A journal found on disk, as seen by a reader."""

    path: Path
    data: bytes
    live: bool  # a running process still owns it
    lock_fd: int | None  # for a dead journal: an fd holding its lock, closed by the caller

    @property
    def run_id(self) -> str:
        return self.path.name.split(".", 1)[0]


def scan(directory: Path) -> Iterator[JournalFile]:
    """Yield every journal on disk; dead ones come locked, so only one reader folds them."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*" + SUFFIX)):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # merged and deleted by somebody else meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            live = False
        except BlockingIOError:
            live = True
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
        if live:
            os.close(fd)
        yield JournalFile(path, data, live, None if live else fd)


def live_run_ids(directory: Path) -> set[str]:
    """Run ids whose journals are still owned by a running process."""
    live: set[str] = set()
    if not directory.is_dir():
        return live
    for path in directory.glob("*" + SUFFIX):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            live.add(path.name.split(".", 1)[0])
        finally:
            os.close(fd)
    return live
