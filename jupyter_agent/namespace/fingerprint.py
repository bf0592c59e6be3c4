"""Fingerprints of namespace values: what says a value changed, and which values share objects.

A fingerprint is cheap next to serializing: a buffer hash (xxh3) for numpy
arrays and pandas objects, a structural hash for containers, and a hash of the
dill bytes for anything else. It includes the identity of containers, so a
value that now shares an object with another one counts as changed too, and it
collects the identities of the objects a value holds, from which
:func:`alias_groups` finds the names that must be saved together.

A large numpy object array whose items are all immutable atoms (a pandas
string column) is fingerprinted by the addresses of its items, not their text:
the previous step's fingerprint holds those items alive (a copy of the address
array, :attr:`Print.kept`), so an address cannot be reused by another object
and equal addresses mean equal items.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import sys
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import xxhash

from .serialize import FILE_TYPES, digest, serialize

#: Names IPython and the kernel put in the namespace; never agent state.
_IGNORED = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def is_user_name(name: str) -> bool:
    return not name.startswith("_") and name not in _IGNORED


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
    return isinstance(value, FILE_TYPES) and value.closed


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
        self._np: Any = sys.modules.get("numpy")
        self._pd: Any = sys.modules.get("pandas")

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
