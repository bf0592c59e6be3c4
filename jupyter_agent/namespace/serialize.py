"""Values as bytes: the dill pickler the namespace is saved with, and the digest of its bytes.

dill's pickler is the standard one plus everything a notebook defines
(functions, classes, lambdas), by value where they live in ``__main__``. Two
refusals are added here, for the same reason: a file object would be restored
by reopening its path with the same mode, which for a file written with
``"w"`` empties the file the agent wrote. The pickler refuses file objects
(also inside other values), and the unpickler refuses blobs written before
that rule that hold one.

Classes are pickled by reference, by module path: a class of this package
whose module moved is looked up where it lives now (:data:`MOVED`), so values
saved by an earlier release still load.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import dill
import xxhash

#: File objects dill restores by reopening a path (in-memory BytesIO/StringIO are fine).
FILE_TYPES = (io.FileIO, io.BufferedReader, io.BufferedWriter, io.BufferedRandom, io.TextIOWrapper)
#: (module, name) of this package's classes found in saved values -> the module they live in now.
MOVED = {("jupyter_agent.namespace", "_Group"): "jupyter_agent.namespace.tracking"}


def _refuse_file(pickler: Any, obj: Any) -> None:
    raise pickle.PicklingError(
        f"file object {getattr(obj, 'name', '?')!r} is not saved: restoring it would reopen "
        "the file (and empty it if it was opened for writing)"
    )


class _Dispatch(dict):
    """dill's dispatch table, read live (types registered later count), minus file objects."""

    def get(self, key: Any, default: Any = None) -> Any:
        if key in FILE_TYPES:
            return _refuse_file
        return dill.Pickler.dispatch.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in FILE_TYPES or key in dill.Pickler.dispatch


class _Pickler(dill.Pickler):
    # A dispatch entry costs nothing per object, unlike a reducer_override hook.
    dispatch = _Dispatch()


class _Unpickler(dill.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name == "_create_filehandle" and module in ("dill._dill", "dill.dill"):
            raise pickle.UnpicklingError(
                "it holds a file object, which is not restored: reopening the file could empty it"
            )
        return super().find_class(MOVED.get((module, name), module), name)


def serialize(value: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=5, recurse=True).dump(value)
    return buffer.getvalue()


def deserialize(data: bytes) -> Any:
    return _Unpickler(io.BytesIO(data)).load()


def digest(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)
