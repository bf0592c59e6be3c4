"""Which notebook a headless kernel's agents belong to, and the warnings where nothing says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer

from .test_cli import SETUP, notebook, outputs_text

NOTICE = "This kernel was not told its notebook"
UNNAMED = "editing the prompt starts a new agent"


def run_nbclient(path: Path, env: dict[str, str]) -> None:
    """Execute as nbclient, nbval and papermill do: no notebook path, no cell ids."""
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=120, resources={"metadata": {"path": str(path.parent)}}).execute(
        env={**os.environ, **env}
    )
    nbformat.write(nb, path)


def agents(store_path: Path) -> list[tuple[str, str]]:
    return sorted({(os.path.basename(r.notebook), r.agent) for r in Store(store_path).runs()})


def test_two_notebooks_of_one_folder_do_not_share_an_agent_name(agent_env, store_path, tmp_path):
    a = notebook(tmp_path / "a.ipynb", [SETUP, "%%agent --model scripted --name sales\nNorth."])
    b = notebook(tmp_path / "b.ipynb", [SETUP, "%%agent --model scripted --name sales\nSouth."])
    # Same agent cell, told apart by the cells run before it.
    c = notebook(
        tmp_path / "c.ipynb", [SETUP, "x = 1", "%%agent --model scripted --name sales\nSouth."]
    )
    with ScriptedServer([{"content": "counted"}]) as server:
        env = {**agent_env, "OPENAI_BASE_URL": server.url}
        for path in (a, b, c):
            server.reset_log()
            run_nbclient(path, env)
            assert len(server.requests) == 1, path  # its own model call, not another's answer
            assert NOTICE not in outputs_text(path)[1]
    assert agents(store_path) == [("a.ipynb", "sales"), ("b.ipynb", "sales"), ("c.ipynb", "sales")]


def test_jupyter_execute_finds_its_notebook_and_its_cell_ids(agent_env, store_path, tmp_path):
    path = notebook(tmp_path / "plain.ipynb", [SETUP, "%%agent --model offline\nAdd."])
    cell_id = nbformat.read(path, as_version=4).cells[1].id
    jupyter = Path(sys.executable).with_name("jupyter")
    done = subprocess.run(
        [str(jupyter), "execute", "--inplace", "plain.ipynb"],
        cwd=tmp_path,
        env={**os.environ, **agent_env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    text = outputs_text(path)[1]
    assert NOTICE not in text and UNNAMED not in text, text
    # The identity JupyterLab gives the same cell: shared with it, resumable there.
    assert agents(store_path) == [("plain.ipynb", f"cell-{cell_id}")]


def test_indistinguishable_notebooks_are_told_once_per_kernel(agent_env, store_path, tmp_path):
    cells = [
        SETUP,
        "%%agent --model offline --name sales\nAdd.",
        "%%agent --model offline -n t\nT.",
    ]
    first = notebook(tmp_path / "one.ipynb", cells)
    notebook(tmp_path / "two.ipynb", cells)
    run_nbclient(first, agent_env)
    texts = outputs_text(first)
    assert texts[1].count(NOTICE) == 1 and "JUPYTER_AGENT_NOTEBOOK=" in texts[1]
    assert str(tmp_path / "(no notebook)") in texts[1]
    assert NOTICE not in texts[2]  # once per kernel
    assert agents(store_path) == [("(no notebook)", "sales"), ("(no notebook)", "t")]


def test_an_unnamed_agent_without_cell_ids_is_warned_about_prompt_edits(kernel_factory, tmp_path):
    k = kernel_factory()
    k.run(f"__session__ = {str(tmp_path / 'x.ipynb')!r}")
    first = k.run("%%agent --model offline\nAdd.")
    assert first.status == "ok", first.text
    assert first.text.count(UNNAMED) == 1 and NOTICE not in first.text
    assert UNNAMED not in k.run("%%agent --model offline\nAdd.").text  # said once
    with_id = k.run("%%agent --model offline\nOther.", cell_id="c1")
    assert UNNAMED not in with_id.text
    named = k.run("%%agent --model offline --name n\nOther.")
    assert UNNAMED not in named.text
