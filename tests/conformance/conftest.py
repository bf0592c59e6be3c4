"""Every store backend behind one fixture: the conformance suite runs against each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from jupyter_agent.store.open import open_store

from ..conftest import BACKENDS


@pytest.fixture(params=BACKENDS)
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What ``JUPYTER_AGENT_STORE`` would say for a fresh store of each backend."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return str(tmp_path / "store" / "agents.duckdb")


@pytest.fixture
def open_(spec: str) -> Callable:
    """Open the store anew, as another process or a later kernel would."""
    return lambda: open_store(spec)
