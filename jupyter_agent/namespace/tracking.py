"""Incremental checkpoints of the notebook variables an agent's code creates or changes.

After each ``python`` tool call every user name in the namespace is
fingerprinted cheaply (:mod:`.fingerprint`) and compared with its fingerprint
after the previous step (:class:`Tracker`), so a value is seen as changed
however it changed: rebound, mutated in place, through an alias (``b = a;
b.append(1)``), by a function (``random.shuffle(items)``, a helper mutating a
global) or through ``globals()``. A step that ran no code in the kernel (a
malformed or rejected call, an MCP tool) is not fingerprinted at all.

Changed values are serialized with dill (:mod:`.serialize`) together with
their *alias group*: all names whose values share a referenced object go into
one dump, so ``a is b``, and two lists holding the same dict, still hold after
a restore. A group blob is a :class:`_Group` (name -> value); a value alone is
stored bare. A value whose bytes did not change is not stored again, and equal
values share a blob.

A value that cannot be serialized (a generator, a socket, an open connection)
is reported by name with the reason and skipped; it never stops the agent.
File objects — also inside other values — are refused (see :mod:`.serialize`).
A *closed* file (what ``with open(...) as f`` leaves behind) is not state and
is skipped silently. A value larger than :data:`MAX_VALUE_BYTES` serialized,
which a journal frame could not hold, is reported and skipped too. Values whose bytes
contain a secret are never written.

A changed value of :data:`SAVE_LATER_BYTES` or more (a large array, frame or
buffer, by its size in memory) is serialized on a thread (:class:`Saving`)
while the agent asks the model for its next step; the step's ``tool_result``
checkpoint is written once it is done, before any other checkpoint and before
any code runs in the namespace again (see :mod:`jupyter_agent.loop`).
"""

from __future__ import annotations

import ast
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..core.redaction import contains_secret
from ..vocab import clipped
from .fingerprint import Print, alias_groups, fingerprints, is_user_name
from .serialize import deserialize, digest, serialize

_REPR_LIMIT = 80
#: Largest serialized value checkpointed; bigger ones are reported, not stored.
MAX_VALUE_BYTES = 1 << 30
#: A changed value this large in memory is serialized off the step (see :class:`Saving`).
SAVE_LATER_BYTES = 8 << 20
#: Seconds a :class:`Saving` waits for its :meth:`~Saving.go` before it starts anyway.
START_WITHIN = 0.5


def touched_names(code: str) -> set[str]:
    """Names ``code`` may bind, delete or mutate (a superset is fine, a subset is not)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names.update(node.names)
        elif isinstance(node, (ast.Attribute, ast.Subscript)):
            base = node.value
            while isinstance(base, (ast.Attribute, ast.Subscript)):
                base = base.value
            if isinstance(base, ast.Name):
                names.add(base.id)
    return names


def short_repr(value: Any) -> str:
    try:
        if isinstance(value, (str, bytes, bytearray)) and len(value) > _REPR_LIMIT:
            value = value[:_REPR_LIMIT]  # repr of a 64 MiB bytes would take seconds
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not break a checkpoint
        text = f"<unrepresentable: {type(exc).__name__}>"
    text = " ".join(text.split())
    return clipped(text, _REPR_LIMIT)


def type_name(value: Any) -> str:
    cls = type(value)
    module = cls.__module__
    return (
        cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"
    )


def overview(namespace: dict[str, Any], names: list[str]) -> dict[str, str]:
    """Name → "type: short repr" of the run's saved variables, for the summarizer."""
    out = {}
    for name in sorted(names)[:60]:
        if name in namespace:
            value = namespace[name]
            out[name] = f"{type_name(value)}: {short_repr(value)}"
    return out


# -- snapshots -----------------------------------------------------------------------


@dataclass
class Snapshot:
    """What changed in the namespace during one step."""

    vars: dict[str, str | None] = field(default_factory=dict)  # name -> hash, None = deleted
    blobs: dict[str, bytes] = field(default_factory=dict)  # hash -> dill bytes, new ones only
    unsaved: dict[str, str] = field(default_factory=dict)  # name -> reason
    info: dict[str, dict] = field(default_factory=dict)  # name -> {type, repr, size}
    #: Alias groups of large changed values, not serialized yet (see :class:`Saving`).
    later: list[list[str]] = field(default_factory=list)


class _Group(dict):
    """Values of names that share objects, serialized in one dump to keep their identity."""


def value_of(loaded: Any, name: str) -> Any:
    """``name``'s value in a deserialized blob: the blob, or its entry if it holds a group."""
    return loaded[name] if isinstance(loaded, _Group) else loaded


def _dump(value: Any, secrets: list[str]) -> tuple[bytes | None, str | None]:
    """The value's dill bytes, or why they cannot be stored."""
    try:
        data = serialize(value)
    except Exception as exc:
        return None, f"{type_name(value)} cannot be saved ({type(exc).__name__}: {exc})"
    if len(data) > MAX_VALUE_BYTES:
        return None, (
            f"{type_name(value)} is too large to checkpoint ({len(data) / 2**20:.0f} MiB "
            f"serialized; the limit is {MAX_VALUE_BYTES / 2**20:.0f} MiB)"
        )
    if contains_secret(data, secrets):
        return None, "holds a secret (an API key or token); not stored"
    return data, None


def _save(
    snap: Snapshot, namespace: dict[str, Any], names: list[str], known: dict[str, str], data: bytes
) -> None:
    h = digest(data)
    for name in names:
        if known.get(name) == h:
            continue
        value = namespace[name]
        snap.vars[name] = h
        snap.blobs[h] = data
        snap.info[name] = {"type": type_name(value), "repr": short_repr(value), "size": len(data)}


def _store(
    namespace: dict[str, Any],
    prints: dict[str, Print],
    dirty: Iterable[str],
    known: dict[str, str],
    secrets: list[str],
    later_from: int | None = None,
) -> Snapshot:
    """The snapshot of the ``dirty`` names; alias groups from ``later_from`` bytes are left
    in :attr:`Snapshot.later` for :func:`save_groups` to serialize."""
    snap = Snapshot()
    for name in sorted(known):
        if name not in prints:  # deleted, or now only a closed file
            snap.vars[name] = None
    groups = alias_groups(dirty, prints)
    if later_from is not None:
        snap.later = [
            g for g in groups if sum(size_in_memory(namespace[n]) for n in g) >= later_from
        ]
        groups = [g for g in groups if g not in snap.later]
    save_groups(snap, namespace, groups, known, secrets)
    return snap


def save_groups(
    snap: Snapshot,
    namespace: dict[str, Any],
    groups: list[list[str]],
    known: dict[str, str],
    secrets: list[str],
) -> Snapshot:
    """Serialize each alias group into ``snap``: together, or each value alone if the
    group cannot be stored whole (each unsaved one reported by name)."""
    for group in groups:
        if len(group) > 1:
            data, _ = _dump(_Group((n, namespace[n]) for n in group), secrets)
            if data is not None:
                _save(snap, namespace, group, known, data)
                continue
        for name in group:
            data, why = _dump(namespace[name], secrets)
            if data is None:
                snap.unsaved[name] = why or ""
            else:
                _save(snap, namespace, [name], known, data)
    return snap


def size_in_memory(value: Any) -> int:
    """Bytes a large value holds, known without walking it (0 for other values)."""
    if isinstance(value, bytes | bytearray | str):
        return len(value)
    np, pd = sys.modules.get("numpy"), sys.modules.get("pandas")
    if np is not None and isinstance(value, np.ndarray):
        return int(value.nbytes)
    if pd is not None and isinstance(value, pd.DataFrame | pd.Series):
        try:
            return int(value.memory_usage(index=False, deep=False).sum())
        except Exception:
            return 0
    return 0


class Saving:
    """The large values of one step, serialized on a thread while the agent goes on.

    Nothing may run code in the namespace until :meth:`result` returned (the
    agent makes sure of it): the thread reads the values as the step left them.
    ``prepare`` gets each new blob on the thread (the store writes a large
    value's file there); ``done`` is called when the thread ends. One of the
    kernel's threads (see :mod:`jupyter_agent.loop`, Concurrency).
    """

    def __init__(
        self,
        namespace: dict[str, Any],
        groups: list[list[str]],
        known: dict[str, str],
        secrets: list[str],
        prepare: Callable[[str, bytes], None] = lambda digest, data: None,
        done: Callable[[], None] = lambda: None,
    ) -> None:
        values = {n: namespace[n] for g in groups for n in g}  # as bound now
        known = dict(known)  # as saved before this step (the agent's state moves on)
        self._snap = Snapshot()
        self._error: BaseException | None = None

        self._go = threading.Event()
        self._now = False  # result() is waiting: no grace for a request

        def work() -> None:
            try:
                # Its copies hold the GIL for tens of ms: let the model request go out
                # first (go() comes as httpx is about to write it to the socket).
                if self._go.wait(START_WITHIN) and not self._now:
                    time.sleep(0.01)
                save_groups(self._snap, values, groups, known, secrets)
                for digest, data in self._snap.blobs.items():
                    prepare(digest, data)  # e.g. write the value's file
            except BaseException as exc:  # given to the agent's thread by result()
                self._error = exc
            finally:
                done()  # e.g. let other agents' code into the namespace again

        self._thread = threading.Thread(target=work, name="jupyter-agent-save", daemon=True)
        self._thread.start()

    def go(self) -> None:
        """Start serializing now (the model request is out), not :data:`START_WITHIN` later."""
        self._go.set()

    def result(self) -> Snapshot:
        """Wait for the values; their hashes, bytes and what could not be saved."""
        self._now = True
        self._go.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._snap


def snapshot(
    namespace: dict[str, Any],
    candidates: Iterable[str],
    known: dict[str, str],
    secrets: list[str],
) -> Snapshot:
    """Serialize the candidate names (and their alias groups among them) whose value changed
    since ``known`` (name -> hash). :class:`Tracker` finds the candidates by itself."""
    candidates = {n for n in candidates if is_user_name(n)}
    prints = fingerprints(namespace, candidates)
    gone = {n: h for n, h in known.items() if n in candidates}
    return _store(namespace, prints, prints, gone, secrets)


class Tracker:
    """Finds what each step changed by comparing fingerprints with the previous step's.

    Call :meth:`begin` before a step runs code: the first call records the namespace
    as it is, and marks every saved name for a check at the next snapshot (the user
    may have changed values between runs). Without a record (no :meth:`begin`) every
    name is taken as changed. Values are re-serialized only when changed, and
    written only when their bytes differ from the saved ones.

    ``baseline``: the run's fingerprint keys in this kernel
    (:class:`~.baseline.Baselines`), updated at each snapshot with the values the
    run's own step changed or checked; another agent's changes are not the run's.
    """

    def __init__(self, baseline: dict[str, str | None] | None = None) -> None:
        self._prints: dict[str, Print] | None = None
        self._recheck: set[str] = set()
        self._baseline = baseline

    def begin(self, namespace: dict[str, Any], known: Iterable[str] = ()) -> None:
        if self._prints is None:
            self._prints = fingerprints(namespace)
            self._recheck = set(known)

    def rebase(self, namespace: dict[str, Any]) -> None:
        """Take the namespace as it is now as the baseline: changes made since were
        another agent's (see :class:`jupyter_agent.namespace.lock.NamespaceLock`), not ours."""
        if self._prints is not None:
            self._prints = fingerprints(namespace, previous=self._prints)

    def changed(self, prints: dict[str, Print]) -> set[str]:
        previous = self._prints
        if previous is None:
            return set(prints)
        return {
            name
            for name, p in prints.items()
            if p.key is None or name not in previous or previous[name].key != p.key
        }

    def snapshot(
        self,
        namespace: dict[str, Any],
        known: dict[str, str],
        secrets: list[str],
        touched: Iterable[str] = (),
        ran: bool = True,
        later_from: int | None = None,
    ) -> Snapshot:
        """What changed since the last step. ``touched`` (names the step's code binds or
        uses) adds the ones this run has not saved yet, even if their value is as before.
        ``ran=False``: the step ran no code in the kernel, so it changed nothing; what
        changed otherwise meanwhile is found at the next step that runs code.
        ``later_from``: alias groups of that many bytes in memory are left in
        :attr:`Snapshot.later`, for a :class:`Saving` to serialize."""
        if not ran and self._prints is not None and not self._recheck:
            return Snapshot()
        prints = fingerprints(namespace, previous=self._prints)
        dirty = self.changed(prints) | (self._recheck & set(prints))
        dirty |= (set(touched) - set(known)) & set(prints)
        snap = _store(namespace, prints, dirty, known, secrets, later_from)
        self._prints, self._recheck = prints, set()
        if self._baseline is not None:
            for name in [n for n in self._baseline if n not in prints]:
                del self._baseline[name]
            self._baseline.update((name, prints[name].key) for name in dirty)
        return snap


def restore(
    namespace: dict[str, Any], vars: dict[str, str], load: Callable[[list[str]], dict[str, bytes]]
) -> tuple[list[str], dict[str, str]]:
    """Put saved variables back into ``namespace``; return (restored names, failures).

    A group blob is loaded once, so the names it holds share objects as they did."""
    blobs = load(sorted(set(vars.values())))
    groups: dict[str, _Group] = {}
    restored: list[str] = []
    failed: dict[str, str] = {}
    for name, h in sorted(vars.items()):
        data = blobs.get(h)
        if data is None:
            failed[name] = "is not restored: its saved value is missing from the store"
            continue
        try:
            loaded = groups[h] if h in groups else deserialize(data)
            if isinstance(loaded, _Group):
                groups[h] = loaded
            value = value_of(loaded, name)
        except Exception as exc:
            failed[name] = f"cannot be restored ({type(exc).__name__}: {exc})"
            continue
        namespace[name] = value
        restored.append(name)
    return restored, failed
