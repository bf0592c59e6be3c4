"""Two points of agents' histories compared, as ``jupyter agent diff``, ``%agent diff`` and
the timeline's "compare with…" show it.

The comparison is :func:`jupyter_agent.core.diff.diff_states`; the states are
folded at their points by :mod:`.points`. Values are read for a diff only after
:meth:`Store.check_trusted` (unpickling runs code, so only the user's own store
is read); an untrusted store is compared by hashes and recorded summaries alone.
"""

from __future__ import annotations

import pprint
from typing import Any

from ..core.diff import FileChange, StateDiff, Value, ValueText, VarChange, diff_states
from ..core.files import describe
from ..errors import StoreError
from ..namespace.serialize import deserialize
from ..namespace.tracking import value_of
from ..store.api import Store
from ..vocab import clipped, size_text
from .points import Folded, point, state_at
from .timeline import notebook_name

TEXT_LINES = 200  # lines of a value's text compared
SUMMARY_LIMIT = 48  # characters of each side's summary on a change line: both fit beside it


def compare(store: Store, a: Folded, b: Folded, *, values: bool = True) -> StateDiff:
    """What differs from ``a`` to ``b``; ``values``: read small values for a unified diff."""
    return diff_states(
        a.state,
        b.state,
        steps=(a.message_steps, b.message_steps),
        info=(a.var_info, b.var_info),
        value_text=value_reader(store) if values else None,
    )


def compare_points(
    store: Store, a: str, b: str, notebook: str | None = None
) -> tuple[Folded, Folded, StateDiff]:
    """Both points named (``RUN@N``, ``NAME``…; see :mod:`.points`), and their diff."""
    left, right = point(store, a, notebook), point(store, b, notebook)
    return left, right, compare(store, left, right)


def other_point(store: Store, base: Folded, text: str, notebook: str | None = None) -> Folded:
    """The point "compare with…" names beside ``base``: a bare number is a checkpoint of
    ``base``'s run, anything else a point as in :mod:`.points`."""
    text = text.strip()
    if text.isdigit():
        return state_at(store, base.run, int(text))
    return point(store, text, notebook)


def value_reader(store: Store) -> ValueText | None:
    """A value's text by name and hash, from the store's blobs; None if the store is not
    this user's (its blobs are then never unpickled)."""
    try:
        store.check_trusted()
    except StoreError:
        return None

    def text(name: str, digest: str) -> str | None:
        data = store.blobs([digest]).get(digest)
        if data is None:
            return None
        try:
            shown = pprint.pformat(value_of(deserialize(data), name), width=88)
        except Exception:  # a class no longer importable, a broken __repr__: no diff
            return None
        return "\n".join(shown.splitlines()[:TEXT_LINES])

    return text


# -- rendering --------------------------------------------------------------------------


def side(f: Folded) -> dict[str, Any]:
    """One side of a diff, as ``--json`` and the timeline give it."""
    return {
        "run": f.run.run_id,
        "agent": f.run.agent,
        "notebook": f.run.notebook,
        "checkpoint": f.step,
        "kind": f.state.kind,
        "status": f.state.status,
        "messages": len(f.state.messages),
    }


def as_dict(a: Folded, b: Folded, diff: StateDiff) -> dict[str, Any]:
    """The stable shape scripts read: ``{a, b, messages, variables, files}``."""
    return {
        "a": {**side(a), "common": diff.common},
        "b": {**side(b), "common": diff.common},
        **diff.as_dict(),
    }


def text(a: Folded, b: Folded, diff: StateDiff) -> str:
    """The diff as a terminal or a cell shows it."""
    out = [_heading("a", a), _heading("b", b)]
    if diff.same:
        out.append("No differences.")
        return "\n".join(out)
    if diff.messages:
        out.append(f"Messages (after {diff.common} in common):")
        for m in diff.messages:
            at = "" if m.checkpoint is None else str(m.checkpoint)
            out.append(f"  {m.side} {at:>4}  {m.role:<9} {m.text}")
    if diff.variables:
        out.append("Variables:")
        out.extend(line for v in diff.variables for line in _variable(v))
    if diff.files:
        out.append("Files:")
        out.extend(_file(f) for f in diff.files)
    return "\n".join(out)


def _heading(name: str, f: Folded) -> str:
    return (
        f"{name}: {f.run.agent}@{f.step} (run {f.run.run_id}, "
        f"{notebook_name(f.run.notebook)}, {f.state.kind}, {f.state.status})"
    )


def _shown(v: Value) -> str:
    size = "" if v.size is None else f" ({size_text(v.size)})"
    return f"{v.type} {v.summary}{size}"


def _variable(v: VarChange) -> list[str]:
    if v.a is None and v.b is not None:
        return [f"  + {v.name}: {_shown(v.b)}"]
    if v.b is None and v.a is not None:
        return [f"  - {v.name}: {_shown(v.a)}"]
    assert v.a is not None and v.b is not None
    old, new = clipped(v.a.summary, SUMMARY_LIMIT), clipped(v.b.summary, SUMMARY_LIMIT)
    if v.a.type == v.b.type:
        line = f"  ~ {v.name}: {v.a.type} {old} -> {new}"
    else:
        line = f"  ~ {v.name}: {v.a.type} {old} -> {v.b.type} {new}"
    return [line, *(f"      {d}" for d in v.diff)]


def _file(f: FileChange) -> str:
    """A file that differs, each version as a replay shows it (:func:`describe`)."""
    if f.a is None and f.b is not None:
        return f"  + {f.path} ({describe(f.b)})"
    if f.b is None and f.a is not None:
        return f"  - {f.path} ({describe(f.a)})"
    return f"  ~ {f.path} ({describe(f.a)} -> {describe(f.b)})"
