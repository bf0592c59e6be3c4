"""``jupyter agent resume`` on notebooks it cannot run: one line with the reason, never a traceback."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat

from jupyter_agent.testing import ScriptedServer

from .test_cli import AGENT, SETUP, cli, notebook
from .test_durable_kernel import tool


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
