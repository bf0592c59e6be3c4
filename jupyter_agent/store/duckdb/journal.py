"""Per-run write-ahead journals: the fast, crash-safe half of the store.

A DuckDB file can be opened by one process at a time, and while it is open no
other process can even read it. Holding it for the whole life of an agent would
lock every other kernel and the server out; opening it for every checkpoint
costs tens of milliseconds. So each running agent appends its checkpoints to a
journal file of its own (append + fdatasync, well under a millisecond). The
owning kernel folds it into DuckDB when the execution ends, and any reader folds
it once its owner has died; while it lives, readers show its records without
storing them (see :meth:`jupyter_agent.store.duckdb.store.DuckDBStore._merge`). Large values
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

One writer per agent: :func:`owner_lock` holds an exclusive ``flock`` on a
per-agent lock file (``*.lock``) naming the holder's pid. It is taken before
the agent's latest run is even read and held for the whole execution, so two
kernels can never both decide to start or resume the same agent. The kernel
drops it when the process dies, so a crashed kernel never blocks the next one;
forked children close their copy, like journals.

Fault injection for tests: ``JUPYTER_AGENT_CRASH=<when>:<what>[:<n>]`` makes
this process SIGKILL itself at the n-th (default first) matching point, where
``when`` is ``before``, ``torn`` (half the frame written) or ``after`` (frame
durable), and ``what`` is a prefix of the record label (``run``, ``blob``,
``checkpoint.<kind>``) or ``merge.live`` / ``merge.dead`` (folding a running or
a finished run's journal into DuckDB: ``before`` its commit, ``after`` it but
before a finished journal is deleted; a running one is folded only once it holds
more than ``DuckDBStore.LIVE_FOLD_BYTES`` unfolded). Unset, it costs one environment lookup
per record.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import stat
import struct
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
CRASH_ENV = "JUPYTER_AGENT_CRASH"


@dataclass(frozen=True)
class Record:
    """One journal entry: a table row as JSON plus an optional binary column."""

    table: str
    row: dict
    payload: bytes = b""

    @property
    def label(self) -> str:
        """What fault injection matches on: ``run``, ``blob`` or ``checkpoint.<kind>``."""
        if self.table == "checkpoints":
            return f"checkpoint.{self.row.get('kind', '')}"
        return self.table.removesuffix("s")


def encode(record: Record) -> bytes:
    meta = json.dumps({"t": record.table, "r": record.row}, separators=(",", ":")).encode()
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


# -- fault injection (tests only) -------------------------------------------------------

_crash_counts: dict[str, int] = {}


def crash_due(what: str) -> str | None:
    """``when`` if ``$JUPYTER_AGENT_CRASH`` names this occurrence of ``what``, else None."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return None
    when, _, rest = spec.partition(":")
    target, _, nth = rest.partition(":")
    if not target or not what.startswith(target):
        return None
    count = _crash_counts[spec] = _crash_counts.get(spec, 0) + 1
    return when if count == int(nth or 1) else None


def crash() -> None:
    """Die the way a kernel killed by the OOM killer or ``kill -9`` does."""
    os.kill(os.getpid(), signal.SIGKILL)


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


# -- one writer per agent ---------------------------------------------------------------

LOCK_SUFFIX = ".lock"


class LockHeld(Exception):
    """Another process (``pid``), or another thread of this one (``here``), holds the lock."""

    def __init__(self, pid: int | None, *, here: bool) -> None:
        super().__init__(pid)
        self.pid = pid
        self.here = here


@dataclass
class _Hold:
    fd: int
    thread: int
    depth: int = 1


_holds: dict[Path, _Hold] = {}
_holds_lock = threading.Lock()


def _drop_locks_in_child() -> None:
    """In a forked child: the parent holds the locks, not the child (nor its threads' state)."""
    global _holds_lock
    _holds_lock = threading.Lock()
    for hold in _holds.values():
        with contextlib.suppress(OSError):
            os.close(hold.fd)
    _holds.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


@contextlib.contextmanager
def owner_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock ``path`` (re-entrant within one thread) or raise :class:`LockHeld`.

    Non-blocking: the caller reports who holds it instead of waiting. The file
    is never deleted (unlinking a lock file lets two processes lock two files).
    """
    me = threading.get_ident()
    with _holds_lock:
        hold = _holds.get(path)
        if hold is None:
            _holds[path] = _Hold(_take(path), me)
        elif hold.thread == me:
            hold.depth += 1
        else:
            raise LockHeld(os.getpid(), here=True)
    try:
        yield
    finally:
        with _holds_lock:
            hold = _holds[path]
            hold.depth -= 1
            if hold.depth == 0:
                del _holds[path]
                os.close(hold.fd)  # releases the flock


def _take(path: Path) -> int:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(fd)
        os.close(fd)
        raise LockHeld(pid, here=False) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holder(fd: int) -> int | None:
    """The pid the holder wrote; it may be a moment late, so look for up to 0.2 s."""
    deadline = time.monotonic() + 0.2
    while True:
        with contextlib.suppress(OSError, ValueError):
            return int(os.pread(fd, 32, 0).decode().strip())
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


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
