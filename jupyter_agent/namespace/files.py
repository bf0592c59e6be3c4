"""Files beside the notebook as part of a run's state: what a call wrote, and putting it back.

An agent's code writes files (``out.csv``, a plot, a model) next to the
notebook; rewinding or forking a run must bring them back as they were, as it
does its variables. So each code call of a run is framed by two cheap scans of
the notebook's folder (path, size, mtime: no file is read), and only the
files whose entry changed are read, hashed and kept in the store's blobs, by
content, as large values are (:class:`Hashing`; many bytes of them while the
model is asked, as large values are: see
:meth:`~jupyter_agent.loop.checkpoints.Recorder.tool_result`). They are recorded
with the checkpoint of the call that wrote them (:attr:`Delta.files`).

What is never watched: ``.git``, ``__pycache__``, ``.ipynb_checkpoints``,
``node_modules``, virtualenvs (a folder holding ``pyvenv.cfg``), the store's
own files, the notebook itself, and the user's :attr:`FilePolicy.ignore`
patterns. A scan looks at :attr:`FilePolicy.scan_limit` files at most (in
name order), so a huge folder costs a bounded time per call; past it files are
not watched, and the cell says so once. A run versions :attr:`FilePolicy.cap`
bytes of content: each version it keeps counts (a resumed run counts from the
versions its state holds); a file past the cap is listed as not versioned, with
the reason, never skipped silently.

A rewind (:func:`put_back`) never overwrites what the user changed: a file
whose content on disk is neither the agent's last record of it nor the
target's is kept, and said so, like a variable the user changed
(:mod:`.baseline`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import FilePolicy
from ..core.state import FileRecord

#: Folders never watched, by name (a virtualenv is told by its ``pyvenv.cfg``).
IGNORED_DIRS = frozenset({".git", "__pycache__", ".ipynb_checkpoints", "node_modules"})

#: What a scan sees of a file: (size, mtime in ns, inode).
Stat = tuple[int, int, int]


@dataclass(frozen=True)
class Folder:
    """The folder a run watches, and what in it is not the run's: the notebook, the store."""

    root: str
    policy: FilePolicy
    #: Absolute paths never watched (the notebook); and name prefixes in their folders
    #: (the DuckDB store's file, its journal, blobs and write-ahead log).
    skip: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def of(cls, notebook: str, store_location: str, policy: FilePolicy) -> Folder:
        """The folder of ``notebook``; a store that is a local file is left out of it."""
        root = os.path.dirname(os.path.abspath(notebook))
        local = store_location and "://" not in store_location
        prefixes = (os.path.abspath(store_location),) if local else ()
        return cls(root, policy, frozenset({os.path.abspath(notebook)}), prefixes)

    def ignored(self, rel: str) -> bool:
        """Whether a path relative to the root matches one of the user's patterns."""
        patterns = self.policy.ignore
        if not patterns:
            return False
        parts = rel.split("/")
        return any(
            fnmatch.fnmatch(rel, p) or any(fnmatch.fnmatch(part, p) for part in parts)
            for p in patterns
        )

    def _skipped(self, path: str) -> bool:
        return path in self.skip or path.startswith(self.prefixes)

    def scan(self) -> tuple[dict[str, Stat], bool]:
        """Every watched file's :data:`Stat` by relative path, and whether the limit cut it short.

        In :func:`walk_order`: a folder's files by name, then its folders by name.
        """
        seen: dict[str, Stat] = {}
        limit = self.policy.scan_limit
        stack = [(self.root, "")]
        while stack:
            top, prefix = stack.pop()
            try:
                with os.scandir(top) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                continue
            if prefix and any(e.name == "pyvenv.cfg" for e in entries):
                continue  # a virtualenv
            dirs = []
            for entry in entries:
                rel = prefix + entry.name
                if self._skipped(entry.path) or self.ignored(rel):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name not in IGNORED_DIRS:
                            dirs.append((entry.path, rel + "/"))
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                if len(seen) >= limit:
                    return seen, True
                seen[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
            stack.extend(reversed(dirs))
        return seen, False

    def path(self, rel: str) -> str | None:
        """The absolute path of a recorded relative one; None if it would leave the folder."""
        path = os.path.normpath(os.path.join(self.root, rel))
        return path if path.startswith(self.root + os.sep) else None


def walk_order(rel: str) -> tuple:
    """Where :meth:`Folder.scan` meets a path: a folder's files (by name), then its folders."""
    parts = rel.split("/")
    return (*((1, d) for d in parts[:-1]), (0, parts[-1]))


@dataclass
class Changes:
    """What one call did to the folder: files written (by relative path) and removed."""

    written: dict[str, Stat] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.written or self.removed)


class Watch:
    """One execution's view of the folder: a scan before each code call, one after."""

    def __init__(self, folder: Folder, held: dict[str, FileRecord]) -> None:
        self.folder = folder
        #: The versions the run keeps (by hash), and their bytes: counted once towards the cap.
        self.kept = {
            str(r["sha256"]): int(r.get("size") or 0) for r in held.values() if "sha256" in r
        }
        self.used = sum(self.kept.values())
        self._before: dict[str, Stat] | None = None
        self._upto: tuple | None = None
        #: The scan was cut short by the limit; said once per execution.
        self.truncated = False

    def before(self) -> None:
        """Scan as a code call begins: what changes after this is the call's."""
        self._before, cut = self.folder.scan()
        # Where a scan cut short stopped: a file after it is not watched, even when
        # a removal brings it within the limit.
        self._upto = max(map(walk_order, self._before), default=None) if cut else None
        self.truncated = self.truncated or cut

    def after(self) -> Changes | None:
        """The files the call wrote or removed since :meth:`before`; None: nothing was scanned."""
        before, self._before = self._before, None
        if before is None:
            return None
        now, cut = self.folder.scan()
        gone = before.keys() - now.keys()
        if cut:  # past the limit now is not gone: only what is not on disk is
            gone = {p for p in gone if not os.path.lexists(os.path.join(self.folder.root, p))}
        upto = self._upto
        written = {
            p: s
            for p, s in now.items()
            if before.get(p) != s and (p in before or upto is None or walk_order(p) <= upto)
        }
        changes = Changes(written, sorted(gone))
        self.truncated = self.truncated or cut
        return changes

    def hash(self, changes: Changes, prepare: Callable[[str, bytes], None]) -> Hashing:
        """Start reading and hashing the written files on a thread; the cap is counted here."""
        return Hashing(self, changes, prepare)


@dataclass
class Saved:
    """A call's files as recorded: records (None: removed), the blobs of versions new to the
    run (the others are in the store already), and the files not versioned, with why."""

    records: dict[str, FileRecord | None] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    unversioned: dict[str, str] = field(default_factory=dict)


class Hashing:
    """Reads, hashes and prepares a call's written files on a thread (``jupyter-agent-files``).

    Nothing runs code before :meth:`result` returned (the recorder writes the
    call's checkpoint first), so the files are read as the call left them,
    unless the user changes them meanwhile: then the user's version is recorded.
    """

    def __init__(self, watch: Watch, changes: Changes, prepare: Callable[[str, bytes], None]):
        self._saved = Saved(records={p: None for p in changes.removed})
        self._error: BaseException | None = None

        def work() -> None:
            try:
                for rel, (size, _, _) in sorted(changes.written.items()):
                    self._keep(watch, rel, size, prepare)
            except BaseException as exc:  # given to the agent's thread by result()
                self._error = exc

        self._thread = threading.Thread(target=work, name="jupyter-agent-files", daemon=True)
        self._thread.start()

    def _keep(self, watch: Watch, rel: str, size: int, prepare: Callable[[str, bytes], None]):
        saved, cap = self._saved, watch.folder.policy.cap
        why = f"over the run's cap of {cap:,} bytes for files"
        if size <= cap:
            try:
                data = Path(watch.folder.root, rel).read_bytes()
            except OSError as exc:
                data, why = None, f"unreadable: {exc.strerror or exc}"
            if data is not None:
                size, digest = len(data), hashlib.sha256(data).hexdigest()
                new = digest not in watch.kept
                if not new or watch.used + size <= cap:
                    saved.records[rel] = {"sha256": digest, "size": size}
                    if new:
                        watch.kept[digest] = size
                        watch.used += size
                        saved.blobs[digest] = data
                        prepare(digest, data)
                    return
        saved.records[rel] = {"unversioned": why, "size": size}
        saved.unversioned[rel] = why

    def result(self) -> Saved:
        """Wait for the files; their records, bytes and what could not be versioned."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._saved


def sha256_of(path: str) -> str | None:
    """The content hash of a file on disk; None if there is none (or it cannot be read)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


@dataclass
class PutBack:
    """What a rewind did to the files: put back, removed, kept (path -> why)."""

    restored: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)


def put_back(
    folder: Folder,
    target: dict[str, FileRecord],
    last: dict[str, FileRecord],
    load: Callable[[list[str]], dict[str, bytes]],
) -> PutBack:
    """Make the files on disk what ``target`` records, where the user did not change them.

    ``last``: the agent's latest record of each file it wrote (in the run or
    the agent's latest run). A file on disk whose content is neither that record
    nor the target is the user's: kept, as is one the folder's policy ignores now.
    Files ``last`` has and ``target`` has not (written after the checkpoint) are removed.
    """
    done = PutBack()
    wanted: dict[str, str] = {}
    for rel in sorted(target.keys() | last.keys()):
        path = folder.path(rel)
        if path is None:
            continue
        if folder.ignored(rel):  # the user's now, as for a scan
            done.kept[rel] = "in files_ignore"
            continue
        want = target.get(rel)
        if want is not None and "sha256" not in want:
            done.kept[rel] = f"not versioned ({want.get('unversioned')})"
            continue
        have = sha256_of(path) if os.path.lexists(path) else None
        goal = want["sha256"] if want else None
        if have == goal:
            continue
        known = last.get(rel) or {}
        if have is not None and have != known.get("sha256"):
            why = known.get("unversioned")
            done.kept[rel] = f"not versioned ({why})" if why else "changed since the agent wrote it"
            continue
        if goal is None:
            os.remove(path)
            done.removed.append(rel)
        else:
            wanted[rel] = goal
    blobs = load(sorted(set(wanted.values()))) if wanted else {}
    for rel, digest in wanted.items():
        data = blobs.get(digest)
        path = folder.path(rel)
        if data is None or path is None:
            done.kept[rel] = "its content is no longer in the store"
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(path).write_bytes(data)
        done.restored.append(rel)
    return done
