"""Which backend a store target names, and opening it.

Apart from :mod:`jupyter_agent.store.api`, so the interface imports no backend:
a backend's module is imported here only when a target selects it (and the
PostgreSQL driver never for a DuckDB file).
"""

from __future__ import annotations

import os

from ..errors import StoreError
from .api import Store


def configured_target(explicit: str | None = None) -> str:
    """The store a session means: ``explicit``, else ``$JUPYTER_AGENT_STORE``, else the
    default DuckDB file; one string per store, so a process can keep one handle each."""
    if explicit:
        return explicit
    if env := os.environ.get("JUPYTER_AGENT_STORE"):
        return env
    from .duckdb.paths import default_store_path

    return str(default_store_path())


def open_store(target: str | os.PathLike | None = None, *, busy_timeout: float = 30.0) -> Store:
    """The store at ``target``: a ``postgresql://`` URL, ``duckdb://PATH`` or a file path.

    None means ``$JUPYTER_AGENT_STORE``, else the default DuckDB file. A URL
    selects :class:`jupyter_agent.store.postgres.store.PostgresStore` (imported only then).
    """
    if target is None:
        target = os.environ.get("JUPYTER_AGENT_STORE") or None
    text = os.fspath(target) if target is not None else None
    if text is not None and text.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres.store import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"A PostgreSQL store needs the PostgreSQL backend ({exc}). Install "
                "jupyter-agent with its postgres extra, or use a DuckDB file."
            ) from exc
        return PostgresStore(text, busy_timeout=busy_timeout)
    from .duckdb.store import DuckDBStore

    if text is not None and text.startswith("duckdb://"):
        text = text[len("duckdb://") :]
    return DuckDBStore(text, busy_timeout=busy_timeout)
