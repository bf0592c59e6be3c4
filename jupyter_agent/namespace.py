"""Incremental checkpoints of the notebook variables an agent's code creates or changes.

After each ``python`` tool call only the names the code could have touched are
looked at: names it binds, deletes, or uses as the base of an attribute,
subscript or method call (``df.x = ...``, ``rows.append(...)``), plus names new
in the namespace. Each is serialized with dill and hashed (xxh3-128); a value
whose hash did not change is not stored again, and equal values share one blob.

A value that cannot be serialized (a generator, a socket, an open connection)
is reported by name with the reason and skipped; it never stops the agent.
File objects — open or closed, also inside other values — are refused too:
dill would restore one by reopening its path with the same mode, and for a
file written with ``"w"`` (every ``with open(path, "w") as f``) that empties
the file the agent wrote. Blobs written before this rule are restored with the
file objects refused for the same reason. So is a value larger than :data:`MAX_VALUE_BYTES` serialized, which a
journal frame could not hold. Values whose bytes contain a secret are never
written.
"""

from __future__ import annotations

import ast
import io
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import dill
import xxhash

from .redaction import contains_secret

#: Names IPython and the kernel put in the namespace; never agent state.
_IGNORED = {"In", "Out", "get_ipython", "exit", "quit", "open"}
_REPR_LIMIT = 80
#: Largest serialized value checkpointed; bigger ones are reported, not stored.
MAX_VALUE_BYTES = 1 << 30


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


@dataclass
class Snapshot:
    """What changed in the namespace during one step."""

    vars: dict[str, str | None] = field(default_factory=dict)  # name -> hash, None = deleted
    blobs: dict[str, bytes] = field(default_factory=dict)  # hash -> dill bytes, new ones only
    unsaved: dict[str, str] = field(default_factory=dict)  # name -> reason
    info: dict[str, dict] = field(default_factory=dict)  # name -> {type, repr, size}


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


def snapshot(
    namespace: dict[str, Any],
    candidates: Iterable[str],
    known: dict[str, str],
    secrets: list[str],
) -> Snapshot:
    """Serialize the candidate names whose value changed since ``known`` (name -> hash)."""
    snap = Snapshot()
    for name in sorted(set(candidates)):
        if not is_user_name(name):
            continue
        if name not in namespace:
            if name in known:
                snap.vars[name] = None
            continue
        value = namespace[name]
        try:
            data = serialize(value)
        except Exception as exc:
            snap.unsaved[name] = f"{type_name(value)} cannot be saved ({type(exc).__name__}: {exc})"
            continue
        if len(data) > MAX_VALUE_BYTES:
            snap.unsaved[name] = (
                f"{type_name(value)} is too large to checkpoint ({len(data) / 2**20:.0f} MiB "
                f"serialized; the limit is {MAX_VALUE_BYTES / 2**20:.0f} MiB)"
            )
            continue
        if contains_secret(data, secrets):
            snap.unsaved[name] = "holds a secret (an API key or token); not stored"
            continue
        h = digest(data)
        if known.get(name) == h:
            continue
        snap.vars[name] = h
        snap.blobs[h] = data
        snap.info[name] = {"type": type_name(value), "repr": short_repr(value), "size": len(data)}
    return snap


def restore(
    namespace: dict[str, Any], vars: dict[str, str], load: Callable[[list[str]], dict[str, bytes]]
) -> tuple[list[str], dict[str, str]]:
    """Put saved variables back into ``namespace``; return (restored names, failures)."""
    blobs = load(sorted(set(vars.values())))
    restored: list[str] = []
    failed: dict[str, str] = {}
    for name, h in sorted(vars.items()):
        data = blobs.get(h)
        if data is None:
            failed[name] = "is not restored: its saved value is missing from the store"
            continue
        try:
            namespace[name] = deserialize(data)
            restored.append(name)
        except Exception as exc:
            failed[name] = f"cannot be restored ({type(exc).__name__}: {exc})"
    return restored, failed
