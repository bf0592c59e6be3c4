"""The schema's version: one rule for every backend.

Each backend stores :data:`SCHEMA_VERSION` with its tables (its own DDL and
its own upgrade of older tables). A store written by a newer release is refused
untouched, by :func:`checked_version`, whichever backend holds it.
"""

from __future__ import annotations

import uuid

from ..errors import StoreError

#: 2: checkpoint payloads are JSON, tagged by ``payload_format`` (1 pickled them with dill).
#: 3: on a team store, learnt context windows are each member's, and ``meta`` the admin's
#: (a single-user DuckDB file is unchanged but for the number).
#: 4: on a team store, the owner is part of every key (runs, checkpoints): a member who
#: knows another's run id writes only rows of his own run of that id.
SCHEMA_VERSION = 4

#: The ``meta`` key of the store's id: made once by whoever creates the store (a key
#: added to ``meta``, so no new schema), recorded in notebooks (see ``Store.store_id``).
STORE_ID = "store_id"


def new_store_id() -> str:
    """A store id: random, so it says nothing about where the store is or who may use it."""
    return uuid.uuid4().hex


def parse_version(value: str, newest: int) -> int:
    """A stored schema version; an unreadable one counts as newer, so it is never overwritten."""
    try:
        return int(value)
    except ValueError:
        return newest + 1


def checked_version(where: str, stored: str | None) -> int | None:
    """The schema version ``stored`` at ``where`` (None: no store yet), refused if newer.

    A store written by a newer release is left exactly as it is: this release
    neither reads it (its rows may mean something else) nor upgrades it.
    """
    if stored is None:
        return None
    version = parse_version(stored, SCHEMA_VERSION)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"The agent store {where} was written by a newer jupyter-agent (schema "
            f"{stored}, this one reads {SCHEMA_VERSION}). Upgrade jupyter-agent; the store "
            "was not modified."
        )
    return version
