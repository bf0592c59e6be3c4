"""Which store a notebook's agents live in, as the notebook records it.

A notebook names its store by the store's id (``Store.store_id``: random,
made once by whoever created the store, never a path or a credential), so
that running it against another store, which would start every finished agent
afresh and repeat its model and tool calls, is noticed instead of done
silently. The id is kept in two places of the ``.ipynb``:

* the notebook's metadata, ``metadata.jupyter_agent.store``, written by
  ``jupyter agent resume`` (which owns the file while it runs it);
* the metadata of an agent cell's timeline output, written by the kernel
  (a kernel cannot change the metadata of a notebook a frontend holds open,
  but every frontend saves what an output carries).

The notebook's metadata wins; else the last agent output that names a store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The key of this package's notebook (and output) metadata.
METADATA_KEY = "jupyter_agent"


def output_metadata(store_id: str) -> dict[str, Any]:
    """The metadata an agent cell's output carries to record its store."""
    return {METADATA_KEY: {"store": store_id}}


def recorded_store(nb: Mapping[str, Any]) -> str | None:
    """The store id a notebook (as nbformat JSON) records, if any (see the module doc)."""
    own = _store_of(nb.get("metadata"))
    if own is not None:
        return own
    found = None
    cells = nb.get("cells")
    for cell in cells if isinstance(cells, list) else []:
        outputs = cell.get("outputs") if isinstance(cell, Mapping) else None
        for output in outputs if isinstance(outputs, list) else []:
            if isinstance(output, Mapping):
                found = _store_of(output.get("metadata")) or found
    return found


def record_store(nb: Any, store_id: str) -> None:
    """Record ``store_id`` in the notebook's own metadata (an nbformat node or dict)."""
    meta = nb.setdefault("metadata", {})
    own = meta.get(METADATA_KEY)
    if not isinstance(own, dict):
        own = meta[METADATA_KEY] = {}
    own["store"] = store_id


def other_store(recorded: str | None, current: str | None, where: str) -> str | None:
    """Why a notebook recording ``recorded`` is not at home in the store ``current`` at
    ``where`` (None: it is, or it records none), as the middle of a sentence."""
    if recorded is None or recorded == current:
        return None
    this = f"the store at {where} is {current}" if current else f"{where} has no store id yet"
    return f"keeps its agents in the store {recorded}, and {this}"


def _store_of(metadata: Any) -> str | None:
    own = metadata.get(METADATA_KEY) if isinstance(metadata, Mapping) else None
    value = own.get("store") if isinstance(own, Mapping) else None
    return value if isinstance(value, str) and value else None
