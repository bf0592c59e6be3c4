"""Which store a setting names: a DuckDB file path, or a ``postgresql://`` URL.

Everything that opens the store (the magics, the server extension, the CLI)
goes through :func:`open_store`, so one setting, ``JUPYTER_AGENT_STORE`` or
``c.AgentMagics.store``, selects the backend everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .store import Store, StoreError

if TYPE_CHECKING:
    from .store_pg import PgStore

URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(spec: str | os.PathLike | None) -> bool:
    """Whether ``spec`` names a PostgreSQL database rather than a DuckDB file."""
    return spec is not None and str(spec).startswith(URL_SCHEMES)


def open_store(
    spec: str | os.PathLike | None = None, *, busy_timeout: float = 30.0
) -> Store | PgStore:
    """The store ``spec`` names; without one, ``JUPYTER_AGENT_STORE``'s, else the default file."""
    if not spec:
        spec = os.environ.get("JUPYTER_AGENT_STORE") or None
    if is_url(spec):
        try:
            from .store_pg import PgStore
        except ImportError as exc:
            raise StoreError(
                f"The agent store is a PostgreSQL URL, but its driver is not installed ({exc}). "
                "Install it with: pip install 'jupyter-agent[postgres]'."
            ) from exc
        return PgStore(str(spec), busy_timeout=busy_timeout)
    path = Path(spec).expanduser().absolute() if spec else None
    return Store(path, busy_timeout=busy_timeout)
