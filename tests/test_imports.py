"""Every module imports on its own, in a fresh interpreter (no import cycles hide behind
the order the package happens to load them in)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import jupyter_agent

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(jupyter_agent.__path__, "jupyter_agent.")
    if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_on_its_own(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]


#: Imported by the first agent cell (or the warm-up thread), never by `%load_ext` itself:
#: the openai SDK alone takes half a second, which the kernel would wait for.
DEFERRED = ("openai", "httpx", "duckdb", "pydantic", "jupyter_agent.model.chat")


def test_load_ext_defers_the_heavy_imports() -> None:
    code = (
        "import sys, jupyter_agent.kernel.magics, jupyter_agent.model.http\n"
        f"print([m for m in {DEFERRED!r} if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_the_default_store_path_is_found_without_duckdb() -> None:
    """The kernel resolves where its store lives before it opens it: no driver for that."""
    code = (
        "import sys\nfrom jupyter_agent.store.duckdb.paths import default_store_path\n"
        "default_store_path()\nprint('duckdb' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
