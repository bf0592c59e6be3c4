"""Per-run write-ahead journals: the fast, crash-safe half of the store.

A DuckDB file can be opened by one process at a time, and while it is open no
other process can even read it. Holding it for the whole life of an agent would
lock every other kernel and the server out; opening it for every checkpoint
costs tens of milliseconds. So each running agent appends its checkpoints to a
journal file of its own (append + fdatasync, well under a millisecond). The
owning kernel folds it into DuckDB when the execution ends, and any reader folds
it once its owner has died; while it lives, readers show its records without
storing them (see :mod:`jupyter_agent.store.duckdb.fold`). Large values
are not journaled: the journal holds a reference to a file written beforehand
(see :mod:`jupyter_agent.store.duckdb.blobfiles`).

A journal is owned by the process that holds an exclusive ``flock`` on it. A
reader probes with a *shared* lock: it fails only while the owner lives, so a
journal that nobody owns — left behind by a dead process — is recognised as
such even while another reader is folding it (readers hold shared locks too,
and must never make a dead run look alive). A child forked by the owner closes
its copy of the descriptor, so a forked worker outliving a crashed kernel does
not keep the run looking alive.

Records are framed with their length and a CRC32. A killed writer leaves at
most one incomplete frame at the end (a *torn tail*: never acknowledged, safely
dropped). A complete frame whose CRC does not match is *damage* (a bad disk, a
stray write): readers skip it, recover the frames after it, and report it, so
acknowledged checkpoints are never silently thrown away. A write that fails
midway (disk full, file size limit) is cut back off, so the journal stays
well-formed for the next append.

Records are JSON metadata plus an opaque byte payload: reading a journal never
unpickles anything.

One writer per agent is a lock file beside the journals (see
:mod:`jupyter_agent.store.duckdb.locks`).

Fault injection for tests (``$JUPYTER_AGENT_CRASH``, see
:mod:`jupyter_agent.store.faults`) can kill the writer before, halfway through
(a torn frame) or after each append.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import stat
import struct
import uuid
import weakref
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ..faults import crash, crash_due
from ..rows import Record

MAGIC = b"JAJ1"
_HEADER = struct.Struct("<4sII")  # magic, body length, crc32(body)
_JSON_LEN = struct.Struct("<I")
SUFFIX = ".jnl"
#: Suffix a journal with damaged frames is kept under once folded (see :func:`decode`).
DAMAGED_SUFFIX = ".damaged"
#: A finished journal once folded into DuckDB: kept a while for readers that cannot open
#: DuckDB meanwhile (see :mod:`jupyter_agent.store.duckdb.stale`), then deleted.
FOLDED_SUFFIX = ".folded"
MAX_BODY = 2**32 - 1


def _meta(record: Record) -> bytes:
    """The record's table and row as JSON: orjson, a tenth of json's time on every append;
    json for what orjson refuses (an integer past 64 bits, a lone surrogate), and for a
    float that is not a number, which orjson would write as null."""
    meta = {"t": record.table, "r": record.row}
    for value in record.row.values():
        if type(value) is float and not math.isfinite(value):
            break
    else:
        try:
            return orjson.dumps(meta)
        except TypeError:
            pass
    return json.dumps(meta, separators=(",", ":")).encode()


def encode(record: Record) -> bytes:
    meta = _meta(record)
    body = _JSON_LEN.pack(len(meta)) + meta + record.payload
    if len(body) > MAX_BODY:
        raise ValueError(f"a journal record is limited to 4 GiB (this one is {len(body)} bytes)")
    return _HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body


@dataclass
class Decoded:
    """What :func:`decode` found in a journal."""

    records: list[Record] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # where each record starts
    end: int = 0  # where the last readable frame ends
    clean_end: int = 0  # where the unbroken run of readable frames from the start ends
    damaged: list[tuple[int, int]] = field(default_factory=list)  # (start, end) of skipped bytes
    torn: bool = False  # an incomplete last frame (a write cut short)


def _frame_at(data: bytes, pos: int) -> tuple[str, int, Record | None]:
    """Classify the bytes at ``pos``: ("ok", end, record), ("short", ...) or ("bad", ...)."""
    if pos + _HEADER.size > len(data):
        return "short", len(data), None
    magic, length, crc = _HEADER.unpack_from(data, pos)
    if magic != MAGIC:
        return "bad", pos + 1, None
    start, end = pos + _HEADER.size, pos + _HEADER.size + length
    if end > len(data):
        return "short", len(data), None
    body = memoryview(data)[start:end]  # no copy: payloads can be hundreds of MB
    if zlib.crc32(body) != crc or length < _JSON_LEN.size:
        return "bad", pos + 1, None
    try:
        (meta_len,) = _JSON_LEN.unpack_from(body, 0)
        meta = json.loads(bytes(body[_JSON_LEN.size : _JSON_LEN.size + meta_len]))
        record = Record(meta["t"], meta["r"], bytes(body[_JSON_LEN.size + meta_len :]))
    except (ValueError, KeyError, TypeError, struct.error):
        return "bad", pos + 1, None
    return "ok", end, record


def decode(data: bytes, pos: int = 0, *, recover: bool = True) -> Decoded:
    """Decode the frames from ``pos``, skipping damaged ones when ``recover`` is set.

    An incomplete frame with nothing readable after it is a torn tail. Anything
    else unreadable is damage: with ``recover`` the scan resynchronises on the
    next intact frame, so one bad frame does not take the rest of the run with it.
    """
    out = Decoded(end=pos, clean_end=pos)
    clean = True
    while pos < len(data):
        kind, nxt, record = _frame_at(data, pos)
        if kind == "ok":
            assert record is not None
            out.records.append(record)
            out.offsets.append(pos)
            pos = out.end = nxt
            if clean:
                out.clean_end = pos
            continue
        # Unreadable at pos: find the next intact frame, if any.
        resync = _next_frame(data, pos + 1) if recover else None
        if resync is None:
            out.torn = _is_torn_tail(data, pos)
            if not out.torn:
                out.damaged.append((pos, len(data)))
            break
        out.damaged.append((pos, resync))
        clean = False
        pos = resync
    return out


def _is_torn_tail(data: bytes, pos: int) -> bool:
    """A tail that is a cut-off frame, or zeros (size extended, data never written)."""
    tail = data[pos:]
    if not tail.strip(b"\0"):
        return True
    if len(tail) < _HEADER.size:
        return MAGIC.startswith(tail[: len(MAGIC)])
    magic, length, _ = _HEADER.unpack_from(data, pos)
    return magic == MAGIC and pos + _HEADER.size + length > len(data)


def _next_frame(data: bytes, pos: int) -> int | None:
    while True:
        pos = data.find(MAGIC, pos)
        if pos < 0:
            return None
        if _frame_at(data, pos)[0] == "ok":
            return pos
        pos += 1


def decode_all(data: bytes, pos: int = 0) -> tuple[list[Record], int]:
    """Decode complete records from ``pos``; return them and where valid data ends.

    Decoding stops at the first incomplete or damaged frame: a torn tail left by
    a killed writer (or a record still being written) is never misread.
    """
    found = decode(data, pos, recover=False)
    return found.records, found.clean_end


# -- writing ----------------------------------------------------------------------------

_open_writers: weakref.WeakSet[JournalWriter] = weakref.WeakSet()


def _close_in_forked_child() -> None:
    for writer in list(_open_writers):
        writer._forget()


os.register_at_fork(after_in_child=_close_in_forked_child)


class JournalWriter:
    """An append-only journal owned by this process for the life of one run execution."""

    def __init__(self, directory: Path, run_id: str, *, sync: bool = True) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{run_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp = directory / (name + ".tmp")
        self.path = directory / (name + SUFFIX)
        self.sync = sync
        self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        self._size = 0
        self._unsynced = False
        # Lock before the file gets its visible name, so no merger can mistake
        # a journal that is being born for one left behind by a dead process.
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, self.path)
        _open_writers.add(self)

    def append(self, record: Record, *, durable: bool = True) -> int:
        """Write one record, durably unless ``durable`` is False; return its size in bytes.

        A record written with ``durable=False`` survives the process being
        killed (it is in the page cache) and is made durable by the next
        durable append or by :meth:`close`: one sync for two records written
        back to back, the first of which nothing acts on before the second.

        On failure the journal is cut back to its last whole record, so a full
        disk leaves no half frame that would hide the records written after it.
        """
        frame = encode(record)
        due = crash_due(record.label)
        if due == "before":
            crash()
        start = self._size
        try:
            view = memoryview(frame)
            if due == "torn":
                view = view[: max(1, len(frame) // 2)]
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if due == "torn":
                os.fdatasync(self._fd)
                crash()
            if self.sync and durable:
                os.fdatasync(self._fd)
            self._unsynced = self.sync and not durable
        except BaseException:
            with contextlib.suppress(OSError):  # else the reader drops the torn tail
                os.ftruncate(self._fd, start)
            raise
        self._size = start + len(frame)
        if due == "after":
            crash()
        return len(frame)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            _open_writers.discard(self)
            try:
                if self._unsynced:
                    os.fdatasync(fd)
            finally:
                os.close(fd)  # also releases the flock

    def _forget(self) -> None:
        """In a forked child: drop the inherited descriptor without touching the parent's lock."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)


# -- reading ----------------------------------------------------------------------------


@dataclass
class JournalFile:
    """A journal found on disk, as seen by a reader; close it when done."""

    path: Path
    fd: int
    live: bool  # a running process still owns it
    owner: int = -1  # uid of the file, checked before anything in it is trusted
    mode: int = 0

    @property
    def run_id(self) -> str:
        return self.path.name.split(".", 1)[0]

    def read(self, offset: int = 0) -> bytes:
        """The journal's bytes from ``offset`` on (only what a reader has not folded yet)."""
        size = os.fstat(self.fd).st_size
        data = os.pread(self.fd, max(size - offset, 0), offset) if size > offset else b""
        while True:  # a live journal may have grown meanwhile
            more = os.pread(self.fd, 1 << 20, offset + len(data))
            if not more:
                return data
            data += more

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class NotAJournal(OSError):
    """Something named like a journal that is not a regular file."""


def _probe(path: Path) -> tuple[int, bool, os.stat_result] | None:
    """Open ``path``; return (fd, live, stat). A dead journal's fd keeps a shared lock.

    Symlinks are not followed and anything but a regular file is refused with
    :class:`NotAJournal`, so nothing planted beside the journals is read as one.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # merged and deleted by somebody else meanwhile
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotAJournal(errno.ELOOP, "a symbolic link, not a journal") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAJournal(errno.EISDIR, "not a regular file")
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return fd, False, st
    except BlockingIOError:
        return fd, True, st
    except BaseException:
        os.close(fd)
        raise


def scan(
    directory: Path,
    skipped: list[tuple[Path, OSError]] | None = None,
    *,
    suffix: str = SUFFIX,
) -> list[JournalFile]:
    """Every journal on disk (named ``*<suffix>``), opened; dead ones hold a shared lock until closed.

    Entries that cannot be opened as journals are left out, and listed in
    ``skipped`` with the reason, for the caller to report.
    """
    found: list[JournalFile] = []
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("*" + suffix)):
        try:
            probed = _probe(path)
        except OSError as exc:
            if skipped is not None:
                skipped.append((path, exc))
            continue
        if probed is not None:
            fd, live, st = probed
            found.append(JournalFile(path, fd, live, st.st_uid, st.st_mode))
    return found


def any_journal(directory: Path) -> bool:
    """Whether ``directory`` holds a journal: being written, folded or set aside as damaged.

    Agents' lock files live there too, and are created before any run is: they do not count.
    """
    return directory.is_dir() and any(directory.glob("*" + SUFFIX + "*"))


def live_run_ids(directory: Path) -> set[str]:
    """Run ids whose journals are still owned by a running process."""
    live: set[str] = set()
    if not directory.is_dir():
        return live
    for path in directory.glob("*" + SUFFIX):
        try:
            probed = _probe(path)
        except OSError:
            continue  # not a journal: reported by the readers that fold
        if probed is None:
            continue
        fd, is_live, _ = probed
        os.close(fd)
        if is_live:
            live.add(path.name.split(".", 1)[0])
    return live


# -- inspecting a journal ---------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m jupyter_agent.journal FILE...``: list records, never unpickling a payload."""
    import sys

    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m jupyter_agent.journal FILE...", file=sys.stderr)
        return 2
    for name in paths:
        try:
            st = os.lstat(name)
            with open(name, "rb") as f:
                found = decode(f.read())
        except OSError as exc:
            print(f"{name}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        mode = stat.filemode(st.st_mode)
        print(f"{name}: {st.st_size} bytes, owner uid {st.st_uid}, mode {mode}")
        for offset, record in zip(found.offsets, found.records, strict=True):
            row = json.dumps(record.row, sort_keys=True)
            print(f"  @{offset} {record.table} {row} + {len(record.payload)} payload bytes")
        for start, end in found.damaged:
            print(f"  bytes {start}-{end}: damaged")
        if found.torn:
            print("  an incomplete last record (a write cut short)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
