"""Shared fixtures: a scripted model endpoint, a private store, real kernels."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_agent.testing import ScriptedServer

from .kernels import Kernel
from .pg import pg_server, pg_url  # noqa: F401  (fixtures)

API_KEY = "sk-test-0123456789abcdef"

#: The store backends; ``@BOTH_BACKENDS`` runs a test once on each (see ``store_spec``).
BACKENDS = ["duckdb", "postgres"]
BOTH_BACKENDS = pytest.mark.parametrize("backend", BACKENDS)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "agents.duckdb"


@pytest.fixture
def backend() -> str:
    """The store backend of a test's kernels: DuckDB unless the test is ``@BOTH_BACKENDS``."""
    return "duckdb"


@pytest.fixture
def store_spec(backend: str, store_path: Path, request: pytest.FixtureRequest) -> str:
    """What the kernels' ``JUPYTER_AGENT_STORE`` says: a DuckDB file, or a fresh database."""
    if backend == "postgres":
        return request.getfixturevalue("pg_url")
    return str(store_path)


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    with ScriptedServer([]) as server:
        yield server


@pytest.fixture
def ip(store_path: Path, scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The test process's own IPython shell with the extension loaded, on a private store."""
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    monkeypatch.setenv("JUPYTER_AGENT_STORE", str(store_path))
    monkeypatch.setenv("OPENAI_BASE_URL", scripted.url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    shell = start_ipython() or get_ipython()
    shell.run_line_magic("load_ext", "jupyter_agent")
    shell.run_line_magic("config", "AgentMagics.retry_backoff = 0.01")
    return shell


@pytest.fixture
def agent_env(store_spec: str, scripted: ScriptedServer) -> dict[str, str]:
    """Environment for kernels: a private store and the scripted endpoint."""
    return {
        "JUPYTER_AGENT_STORE": store_spec,
        "OPENAI_BASE_URL": scripted.url,
        "OPENAI_API_KEY": API_KEY,
    }


@pytest.fixture
def kernel_factory(agent_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Kernel]]:
    """Start real kernels with the agent extension loaded; all are stopped at teardown."""
    kernels: list[Kernel] = []

    def start(**extra_env: str) -> Kernel:
        kernel = Kernel({**agent_env, **extra_env}, cwd=tmp_path)
        kernels.append(kernel)
        result = kernel.run("%load_ext jupyter_agent\n%config AgentMagics.retry_backoff = 0.05")
        assert result.status == "ok", result.text
        return kernel

    yield start
    for kernel in kernels:
        kernel.shutdown()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the long fault-injection soak of tests/faults (same as JUPYTER_AGENT_SOAK=1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--soak", default=False):
        import os

        os.environ["JUPYTER_AGENT_SOAK"] = "1"


def eventually(check: Callable[[], object], timeout: float = 10.0) -> bool:
    """Whether ``check()`` becomes true within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
