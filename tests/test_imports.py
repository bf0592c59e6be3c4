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
