"""Every module imports on its own, in a fresh interpreter (no import cycles hide behind
the order the package happens to load them in)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import jupyter_agent
from jupyter_agent.testing import ScriptedServer
from tests.kernels import Kernel

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
DEFERRED = (
    "openai",
    "httpx",
    "duckdb",
    "pydantic",
    "ipywidgets",
    "anywidget",
    "jupyter_agent.model.chat",
)


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


#: Never imported before a new agent's first model request: the SDKs, the HTTP library
#: and the models they bring, the timeline widget (built once the request is out).
NOT_BEFORE_FIRST_REQUEST = (
    "openai",
    "anthropic",
    "httpx",
    "httpx2",
    "pydantic",
    "anywidget",
    "ipywidgets",
    "duckdb",
    "jupyter_agent.kernel.widget",
)
#: What the kernel had imported when it first connected to the endpoint (an audit hook).
AT_FIRST_CONNECT = """
import sys as _sys
_first = []
def _at_connect(event, args):
    if event == "socket.connect" and not _first and tuple(args[1])[1:2] == (PORT,):
        _first.append(sorted(_sys.modules))
_sys.addaudithook(_at_connect)
"""


def test_a_new_agents_first_request_waits_for_no_sdk_and_no_widget(
    agent_env: dict[str, str], scripted: ScriptedServer, tmp_path: Path
) -> None:
    """``%load_ext`` and a new agent's cell back to back, as a user's first two cells."""
    scripted.set_script([{"content": "One, two, three."}])
    kernel = Kernel(agent_env, cwd=tmp_path)
    try:
        assert kernel.run(AT_FIRST_CONNECT.replace("PORT", str(scripted.port))).status == "ok"
        load = kernel.start("%load_ext jupyter_agent")
        cell = kernel.start("%%agent --model scripted\nCount to three.", cell_id="first")
        assert kernel.wait(load).status == "ok"
        done = kernel.wait(cell)
        assert done.status == "ok" and "One, two, three." in done.text, done.text
        loaded = json.loads(kernel.run("import json; print(json.dumps(_first[0]))").stdout)
    finally:
        kernel.shutdown()
    # DuckDB too: a new agent learns it has no run from the files beside the store (and
    # DuckDB's connect would import ipywidgets in a kernel, for its progress bar).
    assert [m for m in NOT_BEFORE_FIRST_REQUEST if m in loaded] == []
    assert "application/vnd.jupyter.widget-view+json" in json.dumps(done.outputs)  # then built
