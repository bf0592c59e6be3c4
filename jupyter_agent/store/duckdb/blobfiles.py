"""Large namespace values, kept as content-addressed files beside the store.

Writing a 512 MiB value into DuckDB held the database file for tens of seconds,
and every other kernel, ``%agent list`` and the server waited that long. A value
of :data:`MIN_BYTES` or more is therefore written to ``<dir>/<hash[:2]>/<hash>``
and only a reference (hash and size) goes through the journal into DuckDB.

Invariants:

* A file is complete before anything refers to it: it is written to a temporary
  name, fsynced, renamed into place, and its directory fsynced, all before the
  journal record naming it is appended. A crash leaves at worst an unreferenced
  file (collected later), never a reference to a missing or partial one.
* Files are 0600 in 0700 directories. Readers refuse a file (or a directory) that
  another user owns or could write, as they do journals: values are unpickled.
* A file is read back only if its content still has the hash that names it: one
  flipped bit would otherwise restore a wrong value without a word. A file that
  fails the check is reported (:class:`Damaged`) and left in place for inspection.
* Files are never rewritten: one with the same hash and size is the same value,
  and writing it again only refreshes its modification time, which is what
  keeps :func:`collect` from deleting a file a kernel is about to refer to.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from ...namespace.serialize import digest as content_hash

#: Values at least this large are kept in files (smaller ones stay in the journal and DuckDB).
MIN_BYTES = 1 << 20
#: A file younger than this is never collected: its writer may not have journaled it yet.
GRACE_SECONDS = 600.0
_PIECE = 16 << 20
_NAME = re.compile(r"[0-9a-f]{16,128}")


class Untrusted(OSError):
    """A blob file or directory another user owns or could write."""


class Damaged(OSError):
    """A blob file whose content is no longer the value its name (a content hash) says."""


def usable_name(digest: str) -> bool:
    """Whether ``digest`` can name a file (a lowercase hex hash)."""
    return bool(_NAME.fullmatch(digest))


def path_of(directory: Path, digest: str) -> Path:
    return directory / digest[:2] / digest


def write(directory: Path, digest: str, data: bytes) -> None:
    """Store ``data`` as the file of ``digest``, durably, before the caller journals it."""
    sub = directory / digest[:2]
    for d in (directory, sub):
        d.mkdir(mode=0o700, exist_ok=True)
        exposure(os.lstat(d), d)
    target = sub / digest
    with contextlib.suppress(FileNotFoundError, Untrusted):
        st = os.lstat(target)
        exposure(st, target)
        if stat.S_ISREG(st.st_mode) and st.st_size == len(data):
            os.utime(target)  # in use again: not collectable for a while
            return
    tmp = sub / f".{digest}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        # In pieces, each flushed: a single fsync of hundreds of MiB at the end would
        # queue every other process's commit (and its hold on DuckDB) behind it.
        view = memoryview(data)
        while view:
            piece = view[:_PIECE]
            while piece:
                piece = piece[os.write(fd, piece) :]
            view = view[_PIECE:]
            os.fdatasync(fd)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, target)
    dfd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read(directory: Path, digest: str, size: int) -> bytes | None:
    """The value of ``digest``; None when its file is missing or not the size recorded.

    Raises :class:`Untrusted` for a file or directory another user owns or could write,
    and :class:`Damaged` for one whose content does not hash to its name.
    """
    if not usable_name(digest):
        return None
    target = path_of(directory, digest)
    for d in (directory, target.parent):
        try:
            exposure(os.lstat(d), d)
        except FileNotFoundError:
            return None
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Untrusted(errno.ELOOP, f"{target} is a symbolic link") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        exposure(st, target)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return None
        data = f.read()
    if content_hash(data) != digest:
        raise Damaged(errno.EIO, f"{target} does not match its content hash (it is damaged)")
    return data


def exposure(st: os.stat_result, path: Path) -> None:
    """Raise :class:`Untrusted` unless only this user owns and can write ``path``."""
    if st.st_uid != os.getuid():
        raise Untrusted(errno.EPERM, f"{path} belongs to another user (uid {st.st_uid})")
    if st.st_mode & 0o022:
        raise Untrusted(errno.EPERM, f"{path} is writable by other users")


def collect(directory: Path, keep: Iterable[str], *, now: float | None = None) -> int:
    """Delete blob files not in ``keep`` and older than :data:`GRACE_SECONDS`; return how many.

    Leftover temporary files of a writer that died are collected the same way.
    """
    if not directory.is_dir():
        return 0
    keep = set(keep)
    cutoff = (time.time() if now is None else now) - GRACE_SECONDS
    removed = 0
    for sub in directory.iterdir():
        if not sub.is_dir() or sub.is_symlink():
            continue
        for f in sub.iterdir():
            name = f.name
            digest = name if usable_name(name) else name[1:].split(".", 1)[0]
            if digest in keep and not name.endswith(".tmp"):
                continue
            with contextlib.suppress(OSError):
                st = os.lstat(f)
                if st.st_uid == os.getuid() and st.st_mtime < cutoff:
                    f.unlink()
                    removed += 1
    return removed
