"""Incremental checkpoints of the notebook variables an agent's code creates or changes.

After each ``python`` tool call every user name in the namespace is
fingerprinted cheaply and compared with its fingerprint after the previous step
(:class:`Tracker`), so a value is seen as changed however it changed: rebound,
mutated in place, through an alias (``b = a; b.append(1)``), by a function
(``random.shuffle(items)``, a helper mutating a global) or through
``globals()``. Fingerprints are a buffer hash (xxh3) for numpy arrays and
pandas objects, a structural hash for containers, and a hash of the dill bytes
for anything else; they include the identity of containers, so a value that
now shares an object with another one counts as changed too. A large numpy
object array whose items are all immutable atoms (a pandas string column) is
fingerprinted by the addresses of its items, not their text: the previous
step's fingerprint holds those items alive (a copy of the address array), so
an address cannot be reused by another object and equal addresses mean equal
items. A step that ran no code in the kernel (a malformed or rejected call, an
MCP tool) is not fingerprinted at all.

Changed values are serialized with dill together with their *alias group*: all
names whose values share a referenced object go into one dump, so ``a is b``,
and two lists holding the same dict, still hold after a restore. A group blob
is a :class:`_Group` (name -> value); a value alone is stored bare. A value
whose bytes did not change is not stored again, and equal values share a blob.

A value that cannot be serialized (a generator, a socket, an open connection)
is reported by name with the reason and skipped; it never stops the agent.
File objects — also inside other values — are refused: dill would restore one
by reopening its path with the same mode, and for a file written with ``"w"``
(every ``with open(path, "w") as f``) that empties the file the agent wrote.
A *closed* file (what ``with open(...) as f`` leaves behind) is not state and
is skipped silently. Blobs written before this rule are restored with the file
objects refused for the same reason. So is a value larger than
:data:`MAX_VALUE_BYTES` serialized, which a journal frame could not hold.
Values whose bytes contain a secret are never written.

A changed value of :data:`SAVE_LATER_BYTES` or more (a large array, frame or
buffer, by its size in memory) is serialized on a thread (:class:`Saving`)
while the agent asks the model for its next step; the step's ``tool_result``
checkpoint is written once it is done, before any other checkpoint and before
any code runs in the namespace again (see :mod:`jupyter_agent.loop.execution`).
"""

from __future__ import annotations

import ast
import collections
import ctypes
import gc
import io
import pickle
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import dill
import xxhash

from ..core.redaction import contains_secret

#: Names IPython and the kernel put in the namespace; never agent state.
_IGNORED = {"In", "Out", "get_ipython", "exit", "quit", "open"}
_REPR_LIMIT = 80
#: Largest serialized value checkpointed; bigger ones are reported, not stored.
MAX_VALUE_BYTES = 1 << 30
#: A changed value this large in memory is serialized off the step (see :class:`Saving`).
SAVE_LATER_BYTES = 8 << 20
#: Seconds a :class:`Saving` waits for its :meth:`~Saving.go` before it starts anyway.
START_WITHIN = 0.5


def is_user_name(name: str) -> bool:
    return not name.startswith("_") and name not in _IGNORED


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
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 1] + "…"


def type_name(value: Any) -> str:
    cls = type(value)
    module = cls.__module__
    return (
        cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"
    )


#: File objects dill restores by reopening a path (in-memory BytesIO/StringIO are fine).
_FILE_TYPES = (io.FileIO, io.BufferedReader, io.BufferedWriter, io.BufferedRandom, io.TextIOWrapper)


def _refuse_file(pickler: Any, obj: Any) -> None:
    raise pickle.PicklingError(
        f"file object {getattr(obj, 'name', '?')!r} is not saved: restoring it would reopen "
        "the file (and empty it if it was opened for writing)"
    )


class _Dispatch(dict):
    """dill's dispatch table, read live (types registered later count), minus file objects."""

    def get(self, key: Any, default: Any = None) -> Any:
        if key in _FILE_TYPES:
            return _refuse_file
        return dill.Pickler.dispatch.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in _FILE_TYPES or key in dill.Pickler.dispatch


class _Pickler(dill.Pickler):  # type: ignore[misc]
    # A dispatch entry costs nothing per object, unlike a reducer_override hook.
    dispatch = _Dispatch()


class _Unpickler(dill.Unpickler):  # type: ignore[misc]
    def find_class(self, module: str, name: str) -> Any:
        if name == "_create_filehandle" and module in ("dill._dill", "dill.dill"):
            raise pickle.UnpicklingError(
                "it holds a file object, which is not restored: reopening the file could empty it"
            )
        return super().find_class(module, name)


def serialize(value: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=5, recurse=True).dump(value)
    return buffer.getvalue()


def deserialize(data: bytes) -> Any:
    return _Unpickler(io.BytesIO(data)).load()


def digest(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


# -- fingerprints --------------------------------------------------------------------

#: Immutable values hashed by their repr (exact and distinct across these types).
_ATOMS = frozenset({type(None), bool, int, float, complex, str, bytes, type(Ellipsis)})
#: Handled as before: a module, function or class changes only when it is rebound.
_BY_IDENTITY = (
    types.ModuleType,
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
)
#: dict subclasses fingerprinted as dicts (with their type and default factory).
_DICTS = (collections.OrderedDict, collections.defaultdict, collections.Counter)
#: Objects followed for alias detection inside values hashed by their dill bytes.
_REFERENTS_LIMIT = 10_000
#: Object arrays from this many items on are fingerprinted by their items' addresses.
ADDRESS_ITEMS = 4096


@dataclass
class Print:
    """A value's fingerprint: ``key`` changes when the value does; ``ids`` are the
    identities of the objects it holds, to find values that share one."""

    key: str | None  # None: cannot be fingerprinted, always treated as changed
    ids: set[int] = field(default_factory=set)
    #: Address hash -> a copy of an object array of atoms: keeps its items alive
    #: until the next fingerprint, so equal addresses then mean the same items.
    kept: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _closed_file(value: Any) -> bool:
    return isinstance(value, _FILE_TYPES) and value.closed


def _only_closed_files(value: Any) -> bool:
    """A closed file, or a non-empty container of closed files: not state."""
    if _closed_file(value):
        return True
    if type(value) is dict:
        value = value.values()
    elif type(value) not in (list, tuple, set, frozenset):
        return False
    return bool(value) and all(_closed_file(v) for v in value)


class _Walker:
    """Builds one value's fingerprint in a single pass over its object graph."""

    def __init__(self, kept: dict[str, Any] | None = None) -> None:
        self.parts: list[str] = []
        self.ids: set[int] = set()
        self.kept: dict[str, Any] = {}
        self._previous = kept or {}
        self._seen: set[int] = set()
        self._np = sys.modules.get("numpy")
        self._pd = sys.modules.get("pandas")

    def walk(self, obj: Any) -> None:
        t = type(obj)
        if t in _ATOMS:
            self.parts.append(repr(obj))
            return
        i = id(obj)
        if i in self._seen:
            self.parts.append(f"@{i}")
            return
        if isinstance(obj, _BY_IDENTITY):
            code = getattr(obj, "__code__", None)
            self.parts.append(f"{t.__name__} {i} {id(code)} {id(getattr(obj, '__defaults__', 0))}")
            return
        self._seen.add(i)
        self.ids.add(i)
        if t is list or t is tuple or t is set or t is frozenset:
            self.parts.append(f"{t.__name__} {i}")
            self._items(obj)
        elif t is dict:
            self.parts.append(f"dict {i}")
            self._mapping(obj)
        elif t is collections.deque:
            self.parts.append(f"deque {i} {obj.maxlen}")
            self._items(obj)
        elif t in _DICTS:
            factory = getattr(obj, "default_factory", None)
            self.parts.append(f"{t.__name__} {i} {id(factory)}")
            self._mapping(obj)
        elif t is bytearray:
            self.parts.append(f"bytearray {i} {xxhash.xxh3_128_hexdigest(obj)}")
        elif self._np is not None and t is self._np.ndarray:
            self._array(obj, f"ndarray {i}")
        elif self._pd is not None and self._pandas(obj, i):
            pass
        else:
            self._fallback(obj, i)

    # Contents only: also for containers made here (``tolist()``), whose identity is new each time.
    def _items(self, items: Any) -> None:
        self.parts.append(str(len(items)))
        if set(map(type, items)) <= _ATOMS:
            self.parts.append(repr(items))
        else:
            for item in items:
                self.walk(item)

    def _mapping(self, mapping: Any) -> None:
        self.parts.append(str(len(mapping)))
        if set(map(type, mapping.values())) <= _ATOMS and set(map(type, mapping)) <= _ATOMS:
            self.parts.append(repr(dict(mapping)))
        else:
            for k, v in mapping.items():
                self.walk(k)
                self.walk(v)

    def _array(self, arr: Any, label: str) -> None:
        np = self._np
        base = arr
        while isinstance(base.base, np.ndarray):
            base = base.base
            self.ids.add(id(base))  # views share their base: one alias group
        self.parts.append(f"{label} {arr.dtype!r} {arr.shape} {arr.strides}")
        if arr.dtype.hasobject:
            if arr.dtype != object or arr.size < ADDRESS_ITEMS or not self._addresses(arr):
                self._items(arr.ravel().tolist())
            return
        flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        self.parts.append(xxhash.xxh3_128_hexdigest(flat))

    def _addresses(self, arr: Any) -> bool:
        """Fingerprint an object array of atoms by its items' addresses (see the module doc).

        The items' types are checked only when the addresses are not the previous
        fingerprint's: the same live objects have the same (immutable) types."""
        flat = self._np.ascontiguousarray(arr).reshape(-1)
        h = xxhash.xxh3_128_hexdigest((ctypes.c_char * flat.nbytes).from_address(flat.ctypes.data))
        copy = self._previous.get(h)
        if copy is None:
            if not set(map(type, flat.tolist())) <= _ATOMS:
                return False
            copy = flat.copy()
        self.kept[h] = copy
        self.parts.append(f"addresses {h}")
        return True

    def _pandas(self, obj: Any, i: int) -> bool:
        pd = self._pd
        if isinstance(obj, pd.Index):
            self._index(obj, i)
        elif type(obj) is pd.Series:
            self.parts.append(f"series {i} {obj.dtype!r}")
            self.walk(obj.name)
            self._index(obj.index, None)
            self._column(obj)
            self._mapping(obj.attrs)
        elif type(obj) is pd.DataFrame:
            self.parts.append(f"frame {i} {obj.shape}")
            self._index(obj.columns, None)
            self._index(obj.index, None)
            for _, column in obj.items():
                self._column(column)
            self._mapping(obj.attrs)
        else:
            return False
        return True

    def _index(self, index: Any, i: int | None) -> None:
        if isinstance(index, self._pd.RangeIndex):
            self.parts.append(repr(index))
            return
        self.parts.append(f"index {i} {index.dtype!r}")
        self._items(list(index.names))
        # Arrays pandas makes on access are new objects each time: hash them, not their id.
        self._array(self._np.asarray(index), "values")

    def _column(self, column: Any) -> None:
        self.parts.append(f"column {column.dtype!r}")
        self._array(self._np.asarray(column.array), "values")

    def _fallback(self, obj: Any, i: int) -> None:
        try:
            self.parts.append(f"dill {digest(serialize(obj))}")
        except Exception:
            self.parts.append(f"unpicklable {i}")
        self._referents(obj)

    def _referents(self, obj: Any) -> None:
        """Identities of the objects ``obj`` holds, so a shared one puts values in one group."""
        stack = gc.get_referents(obj)
        while stack and len(self.ids) < _REFERENTS_LIMIT:
            item = stack.pop()
            i = id(item)
            if type(item) in _ATOMS or isinstance(item, _BY_IDENTITY) or i in self.ids:
                continue
            self.ids.add(i)
            stack.extend(gc.get_referents(item))


def fingerprint(value: Any, kept: dict[str, Any] | None = None) -> Print:
    """``kept``: the address arrays the previous fingerprints hold alive (:attr:`Print.kept`)."""
    walker = _Walker(kept)
    try:
        walker.walk(value)
    except Exception:  # RecursionError on a deep structure, a broken __array__ …
        return Print(None, walker.ids)
    key = xxhash.xxh3_128_hexdigest("\x1f".join(walker.parts).encode("utf-8", "surrogatepass"))
    return Print(key, walker.ids, walker.kept)


def fingerprints(
    namespace: dict[str, Any],
    names: Iterable[str] | None = None,
    previous: dict[str, Print] | None = None,
) -> dict[str, Print]:
    """Fingerprints of the user names (all of them, or ``names``) that hold state;
    ``previous`` are the fingerprints still held, whose kept items are alive."""
    kept = {h: a for p in (previous or {}).values() for h, a in p.kept.items()}
    names = list(namespace) if names is None else [n for n in names if n in namespace]
    return {
        name: fingerprint(namespace[name], kept)
        for name in names
        if is_user_name(name) and not _only_closed_files(namespace[name])
    }


def alias_groups(names: Iterable[str], prints: dict[str, Print]) -> list[list[str]]:
    """``names`` with every name sharing an object with them, in groups saved together."""
    done: set[str] = set()
    groups: list[list[str]] = []
    for name in sorted(names):
        if name in done or name not in prints:
            continue
        group, shared = {name}, set(prints[name].ids)
        grew = True
        while grew:
            grew = False
            for other, p in prints.items():
                if other not in group and p.ids and not shared.isdisjoint(p.ids):
                    group.add(other)
                    shared |= p.ids
                    grew = True
        done |= group
        groups.append(sorted(group))
    return groups


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
    value's file there); ``done`` is called when the thread ends.
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
    """

    def __init__(self) -> None:
        self._prints: dict[str, Print] | None = None
        self._recheck: set[str] = set()

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
            value = groups[h] if h in groups else deserialize(data)
            if isinstance(value, _Group):
                groups[h] = value
                value = value[name]
        except Exception as exc:
            failed[name] = f"cannot be restored ({type(exc).__name__}: {exc})"
            continue
        namespace[name] = value
        restored.append(name)
    return restored, failed
