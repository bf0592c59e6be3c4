"""``jupyter agent resume`` on notebooks it cannot run: one line with the reason, never a traceback."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat

from jupyter_agent.store.duckdb.store import DuckDBStore
from jupyter_agent.testing import ScriptedServer

from .test_cli import AGENT, SETUP, cli, notebook, outputs_text
from .test_durable_kernel import counting_script, tool


def one_line_refusal(result, *words: str) -> None:
    """Exit code 1 and a single ``jupyter agent:`` line on stderr that says ``words``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("jupyter agent: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


def damaged(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Notebooks a resume cannot run, each with a word its refusal must say."""
    good = notebook(tmp_path / "good.ipynb", ["print(1)"]).read_text()
    cases: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes | str, word: str) -> None:
        path = tmp_path / f"{name}.ipynb"
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        cases[name] = (path, word)

    put("truncated", good[: len(good) // 2], "not a notebook")
    put("empty", b"", "not a notebook")
    put("no_cells", '{"nbformat": 4, "nbformat_minor": 5, "metadata": {}}', "not a notebook")
    put("bad_utf8", good.encode().replace(b"print", b"pr\xff\xfent"), "not a notebook")
    put("unknown_kernel", good.replace('"python3"', '"no-such-kernel-xyz"'), "no-such-kernel-xyz")
    folder = tmp_path / "folder.ipynb"
    folder.mkdir()
    cases["directory"] = (folder, "is a directory")
    return cases


def test_a_damaged_notebook_is_refused_in_one_line(agent_env, tmp_path):
    for name, (path, word) in damaged(tmp_path).items():
        before = path.read_bytes() if path.is_file() else None
        result = cli("resume", str(path), env=agent_env)
        one_line_refusal(result, path.name, word)
        if before is not None:
            assert path.read_bytes() == before, name  # nothing written over it


def test_a_timeout_is_one_line_and_keeps_the_outputs(agent_env, tmp_path):
    nb_path = notebook(tmp_path / "slow.ipynb", ["print('before')", "import time; time.sleep(30)"])
    started = time.monotonic()
    result = cli("resume", str(nb_path), "--timeout", "2", env=agent_env)
    assert time.monotonic() - started < 25
    one_line_refusal(result, "Cell 2 timed out after 2 s", "written")
    assert nbformat.read(nb_path, as_version=4).cells[0].outputs[0]["text"] == "before\n"


def test_an_agent_running_elsewhere_is_named(
    kernel_factory, scripted: ScriptedServer, agent_env, tmp_path
):
    release = tmp_path / "release"
    nb_path = notebook(tmp_path / "nb.ipynb", [SETUP, AGENT])
    agent_cell = nbformat.read(nb_path, as_version=4).cells[1]
    wait = f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.1)"
    scripted.set_script([tool(wait), {"content": "Released."}])
    k1 = kernel_factory()
    k1.run(f"__session__ = {str(nb_path)!r}")
    running = k1.start(AGENT, cell_id=agent_cell.id)
    k1.wait_for(running, "time.sleep(0.1)")
    try:
        result = cli("resume", str(nb_path), env=agent_env)
    finally:
        release.touch()
    one_line_refusal(result, "Cell 2 failed", f"cell-{agent_cell.id}", "running in another kernel")
    assert "------" not in result.stderr
    assert k1.wait(running).status == "ok"


def test_a_timeout_must_be_above_zero(agent_env, tmp_path):
    nb_path = notebook(tmp_path / "nb.ipynb", ["print(1)"])
    for value in ("-1", "0", "soon"):
        refused = cli("resume", str(nb_path), "--timeout", value, env=agent_env)
        assert refused.returncode == 2 and "--timeout" in refused.stderr, refused.stderr
    assert nbformat.read(nb_path, as_version=4).cells[0].outputs == []  # nothing ran


def recorded(nb_path: Path) -> str | None:
    """The store id the notebook records in its own metadata."""
    return nbformat.read(nb_path, as_version=4).metadata.get("jupyter_agent", {}).get("store")


def another_store(path: Path) -> DuckDBStore:
    """A store of its own (its id made as it is created), holding no agent of the notebook."""
    other = DuckDBStore(path)
    other.remember_window("some-model", 4096)  # any write creates it
    assert other.store_id()
    return other


def test_a_resume_against_another_store_runs_nothing_unless_told(
    scripted: ScriptedServer, agent_env, store_path, tmp_path
):
    log = tmp_path / "effects.log"
    nb_path = notebook(tmp_path / "nb.ipynb", [SETUP, AGENT])
    scripted.set_script(counting_script(log))
    first = cli("resume", str(nb_path), env=agent_env)
    assert first.returncode == 0, first.stderr
    home = DuckDBStore(store_path).store_id()
    assert home and recorded(nb_path) == home  # the notebook knows its store
    assert log.read_text().count("step") == 3 and len(scripted.requests) == 4

    # As cron runs it: another store, or one that does not exist. Nothing is run.
    other = another_store(tmp_path / "other" / "agents.duckdb")
    missing = tmp_path / "missing" / "agents.duckdb"
    before = nb_path.read_bytes()
    for store in (str(other.path), str(missing)):
        refused = cli("resume", str(nb_path), "--store", store, env=agent_env)
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert refused.returncode == 3, refused.stderr
        assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert f"keeps its agents in the store {home}" in lines[0], lines[0]
        assert "--new-store" in lines[0], lines[0]
    assert len(scripted.requests) == 4 and log.read_text().count("step") == 3
    assert nb_path.read_bytes() == before and not missing.exists()
    assert other.runs() == []

    # The notebook's own store: its finished agent restores, no model call.
    same = cli("resume", str(nb_path), env=agent_env)
    assert same.returncode == 0, same.stderr
    assert len(scripted.requests) == 4
    assert "restored from the store without calling the model" in outputs_text(nb_path)[1]

    # Told to: the agent starts afresh in the other store, which the notebook then records.
    scripted.set_script(counting_script(log))
    moved = cli("resume", str(nb_path), "--store", str(other.path), "--new-store", env=agent_env)
    assert moved.returncode == 0, moved.stderr
    assert len(scripted.requests) == 8 and log.read_text().count("step") == 6
    assert recorded(nb_path) == other.store_id() != home


def test_a_notebook_that_records_no_store_is_refused_by_an_empty_one(
    scripted: ScriptedServer, agent_env, tmp_path
):
    """Saved before notebooks recorded their store: its agent cells' outputs show they ran."""
    nb_path = notebook(tmp_path / "nb.ipynb", [SETUP, AGENT])
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="■ done\n")]
    nbformat.write(nb, nb_path)
    refused = cli("resume", str(nb_path), env=agent_env)
    assert refused.returncode == 3, refused.stderr
    assert (
        "agent cells ran before" in refused.stderr and "holds none of its agents" in refused.stderr
    )
    assert scripted.requests == []


def test_a_kernel_warns_once_when_the_notebook_names_another_store(
    kernel_factory, scripted: ScriptedServer, store_path, tmp_path
):
    nb_path = notebook(tmp_path / "nb.ipynb", [AGENT])
    nb = nbformat.read(nb_path, as_version=4)
    nb.metadata["jupyter_agent"] = {"store": "0123456789abcdef0123456789abcdef"}
    nbformat.write(nb, nb_path)
    scripted.set_script([tool("a = 1"), {"content": "Done."}])
    kernel = kernel_factory()
    kernel.run(f"__session__ = {str(nb_path)!r}")
    first = kernel.run(AGENT, cell_id=nb.cells[0].id)
    assert first.status == "ok", first.text
    assert "⚠ This notebook keeps its agents in the store 0123456789abcdef" in first.text
    # The cell's timeline output records this kernel's store, for the notebook to keep.
    home = DuckDBStore(store_path).store_id()
    stores = [o.get("metadata", {}).get("jupyter_agent", {}).get("store") for o in first.outputs]
    assert home and home in stores, first.outputs
    again = kernel.run(AGENT, cell_id=nb.cells[0].id)
    assert "keeps its agents in the store" not in again.text  # once per notebook


def test_the_kernels_clean_up_that_a_cancel_waits_for_is_nbclients():
    """A cancelled run's watcher and nbclient's shutdown of the kernel take turns through
    ``_async_cleanup_kernel``, which nbclient does not promise to keep: if it is renamed
    or no longer awaited where the kernel is set up, this fails instead of the guard
    quietly applying to nothing."""
    import inspect

    from nbclient import NotebookClient

    assert inspect.iscoroutinefunction(NotebookClient._async_cleanup_kernel)
    assert "self._async_cleanup_kernel()" in inspect.getsource(NotebookClient.async_setup_kernel)
