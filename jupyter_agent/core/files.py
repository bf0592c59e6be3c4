"""The files of a run's state, read: which differ between two points, and how one is shown.

A run's state holds the files its code wrote (:attr:`RunState.files`: relative
path -> :data:`~jupyter_agent.core.state.FileRecord`). Comparing two points of
one run, of a fork and its parent, or of two agents is comparing two of these
dicts; the diff, the replay and the rewind message all show a file the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..vocab import size_text
from .state import FileRecord

#: Hex digits of a file's hash shown to users (enough to tell versions apart).
SHOWN_HASH = 12


@dataclass(frozen=True)
class FilesDiff:
    """Paths, sorted, added, removed or with other content from one point to another."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def diff_files(before: dict[str, FileRecord], after: dict[str, FileRecord]) -> FilesDiff:
    """What differs between two :attr:`RunState.files` dicts, as paths."""
    return FilesDiff(
        added=sorted(after.keys() - before.keys()),
        removed=sorted(before.keys() - after.keys()),
        changed=sorted(p for p in before.keys() & after.keys() if before[p] != after[p]),
    )


def describe(record: FileRecord | None) -> str:
    """One file version in a few words: its hash and size, why it is not versioned, or removed."""
    if record is None:
        return "removed"
    size = size_text(int(record.get("size") or 0))
    if "sha256" in record:
        return f"sha256 {str(record['sha256'])[:SHOWN_HASH]}, {size}"
    return f"not versioned ({record.get('unversioned')}), {size}"
