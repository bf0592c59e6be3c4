"""Agent names that come from cell ids, and names and tool names as they are printed.

A cell id is whatever a frontend sends; it becomes an agent name only under the
``--name`` rule, and whatever a store already holds (or a model calls its tool)
is printed with its control characters escaped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403  (jp_fetch, jp_serverapp, ...)

from jupyter_agent.testing import ScriptedServer
from jupyter_agent.vocab import NAME_PATTERN

from .test_cli import cli
from .test_server_api import (  # noqa: F401  (fixtures)
    Api,
    add_run,
    api,
    jp_server_config,
    never_unpickled,
    notebook,
    store,
    trap,
)

#: What a terminal or a markdown viewer would obey: C0 controls but newline, DEL, C1.
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
HOSTILE_TOOL = "\x1b]0;pwned\x07\x1b[2Jtool"
HOSTILE_IDS = ["\x1b]0;pwned\x07", "\x1b[2J", "nul\x00id", "cr\r\nlf", "../../..", "c" * 5000]


def assert_clean(text: str, where: str) -> None:
    found = RAW_CONTROL.search(text)
    assert found is None, f"{where} prints {found.group()!r}: {text[:300]!r}"


def test_cell_ids_become_names_under_the_name_rule(
    kernel_factory, scripted: ScriptedServer, agent_env, tmp_path
):
    scripted.set_script(
        [{"tool_calls": [{"name": HOSTILE_TOOL, "arguments": {}}]}, {"content": "Done."}]
    )
    k = kernel_factory()
    k.run(f"__session__ = {str(tmp_path / 'nb.ipynb')!r}")
    for i, cell_id in enumerate(HOSTILE_IDS):
        result = k.run(f"%%agent --model scripted\nTask {i}.", cell_id=cell_id)
        assert result.status == "ok", result.text
        assert_clean(result.text, f"the cell of id {cell_id[:20]!r}")
    listed = json.loads(cli("list", "--json", env=agent_env).stdout)["agents"]
    names = [a["agent"] for a in listed]
    assert len(set(names)) == len(HOSTILE_IDS), names
    assert all(NAME_PATTERN.match(n) for n in names), names
    # The same cell id is the same agent again: the name is derived the same way.
    again = k.run("%%agent --model scripted\nTask 0.", cell_id=HOSTILE_IDS[0])
    assert "restored from the store" in again.text, again.text
    # Cells with a well-formed id keep the name users know.
    k.run("%%agent --model scripted\nPlain.", cell_id="a1b2c3d4")
    assert "cell-a1b2c3d4" in cli("list", env=agent_env).stdout
    for name in names:
        shown = cli("show", name, env=agent_env)
        assert shown.returncode == 0, shown.stderr
        assert_clean(shown.stdout, "jupyter agent show")
        md = cli("export", name, "--format", "md", env=agent_env)
        assert md.returncode == 0, md.stderr
        assert_clean(md.stdout, "jupyter agent export --format md")
        assert "\\x1b]0;pwned\\x07\\x1b[2Jtool" in md.stdout  # escaped, still readable
    listing = k.run("%agent list")
    assert_clean(listing.text, "%agent list")


LEGACY = ["cell-\x1b]0;pwned\x07", "cell-cr\r\nlf", "cell-" + "c" * 5000, "bad name!"]


def test_names_a_store_already_holds_are_escaped_and_served(
    api: Api,  # noqa: F811  (the fixtures imported above)
    store,  # noqa: F811
    trap,  # noqa: F811
    jp_root_dir,
):
    nb = notebook(Path(jp_root_dir), "nb.ipynb")
    for name in LEGACY:
        add_run(store, nb, name, [("start", "running"), ("model", "done")], trap)
    env = {"JUPYTER_AGENT_STORE": str(store.path)}
    table = cli("list", env=env)
    assert table.returncode == 0, table.stderr
    assert_clean(table.stdout, "jupyter agent list")
    assert "cell-\\x1b]0;pwned\\x07" in table.stdout
    shown = cli("show", "cell-\x1b]0;", env=env)
    assert shown.returncode == 0, shown.stderr
    assert_clean(shown.stdout, "jupyter agent show")

    code, body = api.get("agents", notebook="nb.ipynb")
    assert code == 200 and sorted(a["name"] for a in body["agents"]) == sorted(LEGACY)
    for name in LEGACY:
        code, body = api.get("agents", name, notebook="nb.ipynb")
        assert code == 200 and body["name"] == name, body
        code, body = api.delete("agents", name, notebook="nb.ipynb")
        assert code == 200 and len(body["deleted"]) == 1, body
    assert api.get("agents", notebook="nb.ipynb")[1]["agents"] == []
    assert api.get("agents", "bad name!", notebook="nb.ipynb")[0] == 400  # no longer held


@pytest.mark.parametrize("cell_id", HOSTILE_IDS[:2])
def test_a_derived_name_is_stable_and_valid(cell_id: str) -> None:
    from jupyter_agent.vocab import cell_agent_name

    assert cell_agent_name(cell_id) == cell_agent_name(cell_id)
    assert NAME_PATTERN.match(cell_agent_name(cell_id))
    assert cell_agent_name("a1b2c3d4") == "cell-a1b2c3d4"
