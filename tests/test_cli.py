"""``jupyter agent`` as a subprocess, against stores that real kernels wrote."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import nbformat
import pytest

from jupyter_agent.store.api import CheckpointRow, RunRow
from jupyter_agent.store.duckdb.store import DuckDBStore
from jupyter_agent.store.schema import SCHEMA_VERSION
from jupyter_agent.testing import ScriptedServer

from .test_durable_kernel import counting_script, tool

REPO = Path(__file__).resolve().parents[1]


def cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, command: list[str] | None = None
) -> subprocess.CompletedProcess:
    """Run the command line; ``command`` replaces ``python -m jupyter_agent``."""
    return subprocess.run(
        [*(command or [sys.executable, "-m", "jupyter_agent"]), *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )


def jupyter_agent_on_path(tmp_path: Path) -> dict[str, str]:
    """PATH with a ``jupyter-agent`` executable, as pip makes from [project.scripts]."""
    text = (REPO / "pyproject.toml").read_text()
    entry = re.search(r'^jupyter-agent = "([\w.]+):(\w+)"$', text, re.M)
    assert entry, "[project.scripts] must define jupyter-agent"
    module, fn = entry.groups()
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "jupyter-agent"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom {module} import {fn}\nsys.exit({fn}())\n"
    )
    script.chmod(0o755)
    jupyter = Path(sys.executable).with_name("jupyter")
    assert jupyter.exists(), "the jupyter command is part of jupyter_core"
    return {"PATH": f"{bindir}{os.pathsep}{jupyter.parent}{os.pathsep}{os.environ['PATH']}"}


def notebook(path: Path, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


def outputs_text(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    texts = []
    for cell in nb.cells:
        parts = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif out.get("output_type") == "display_data":  # an agent cell's output
                parts.append(out["data"].get("text/plain", "") + "\n")
            elif out.get("output_type") == "error":
                parts.append(f"{out['ename']}: {out['evalue']}")
        texts.append("".join(parts))
    return texts


SETUP = "%load_ext jupyter_agent\n%config AgentMagics.retry_backoff = 0.05"
AGENT = "%%agent --model scripted\nBuild a, b and c step by step."


def test_resume_completes_an_agent_whose_kernel_was_killed(
    kernel_factory, scripted: ScriptedServer, agent_env, tmp_path
):
    log = tmp_path / "effects.log"
    nb_path = notebook(tmp_path / "nb.ipynb", [SETUP, AGENT, "print(a, b, c)"])
    agent_cell = nbformat.read(nb_path, as_version=4).cells[1]
    scripted.set_script(counting_script(log, slow_step=1))
    # As in JupyterLab: the kernel knows the notebook from __session__, the cell by its id.
    k1 = kernel_factory()
    k1.run(f"__session__ = {str(nb_path)!r}")
    k1.start(AGENT, cell_id=agent_cell.id)
    # SIGKILL while the second tool call sleeps: turns 0 and 1 are answered.
    for _ in range(400):
        if log.exists() and "step1" in log.read_text():
            break
        time.sleep(0.05)
    k1.kill()
    assert scripted.turns_requested() == [0, 1]

    env = {**agent_env, **jupyter_agent_on_path(tmp_path)}
    listed = json.loads(cli("list", "--json", env=env).stdout)["agents"]
    assert [(a["notebook"], a["status"]) for a in listed] == [(str(nb_path), "interrupted")]

    scripted.set_script(counting_script(log))
    done = cli("agent", "resume", "nb.ipynb", env=env, cwd=tmp_path, command=["jupyter"])
    assert done.returncode == 0, done.stderr
    # The same run continued: no completed model call was requested again.
    assert scripted.turns_requested() == [0, 1, 2, 3]
    texts = outputs_text(nb_path)
    assert "↻ resuming after step" in texts[1] and "Finished: c == 3." in texts[1]
    assert texts[2] == "1 2 3\n"
    listed = json.loads(cli("list", "--json", env=env).stdout)["agents"]
    assert [(a["agent"], a["status"], a["steps"], a["runs"]) for a in listed] == [
        (f"cell-{agent_cell.id}", "done", 4, 1)
    ]

    # Finished now: resuming again restores it without calling the model.
    again = cli("resume", str(nb_path), env=env)
    assert again.returncode == 0, again.stderr
    assert scripted.turns_requested() == [0, 1, 2, 3]
    assert "restored from the store without calling the model" in outputs_text(nb_path)[1]


def test_resume_stops_at_a_failing_cell_and_still_writes_the_notebook(agent_env, tmp_path):
    nb_path = notebook(tmp_path / "fails.ipynb", ["print('before')", "1 / 0", "print('after')"])
    result = cli("resume", str(nb_path), env=agent_env)
    assert result.returncode == 1
    assert "ZeroDivisionError" in result.stderr
    assert outputs_text(nb_path) == ["before\n", "ZeroDivisionError: division by zero", ""]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp file left


@pytest.fixture
def populated(kernel_factory, agent_env, tmp_path) -> dict:
    """A store with agent ``sales`` (two runs) and ``costs`` (one), written by a real kernel."""
    secret = "hunter2-hunter2-hunter2"
    script = [tool("x = 1"), {"content": f"The password was {secret}."}]
    with ScriptedServer(script) as server:
        k = kernel_factory(OPENAI_BASE_URL=server.url)
        k.run(f"__session__ = {str(tmp_path / 'a.ipynb')!r}")
        for line in ("--name sales", "--name sales --restart", "--name costs"):
            server.reset_log()
            result = k.run(f"%%agent --model scripted {line}\nSet x.")
            assert result.status == "ok", result.text
        k.shutdown()
    return {"env": agent_env, "notebook": str(tmp_path / "a.ipynb"), "secret": secret}


def test_list_show_export_and_store_info(populated, store_path):
    env, nb = populated["env"], populated["notebook"]
    listed = json.loads(cli("list", "--json", env=env).stdout)["agents"]
    assert [(a["notebook"], a["agent"], a["status"], a["steps"], a["runs"]) for a in listed] == [
        (nb, "sales", "done", 2, 2),
        (nb, "costs", "done", 2, 1),
    ]
    table = cli("list", nb, env=env).stdout
    assert re.search(r"sales\s+done after 2 steps\s+2\s+2\s", table), table

    shown = cli("show", "sal", "--json", env=env)  # a unique prefix
    assert shown.returncode == 0, shown.stderr
    kinds = [c["kind"] for c in json.loads(shown.stdout)["checkpoints"]]
    assert kinds == ["start", "model", "tool_call", "tool_result", "model"]
    assert "[  4] model" in cli("show", "sales", "--notebook", nb, env=env).stdout

    # The CLI's own environment holds a secret the kernel did not know: it is redacted too.
    secret_env = {**env, "DB_PASSWORD": populated["secret"]}
    exported = cli("export", "sales", "--format", "json", env=secret_env)
    assert exported.returncode == 0, exported.stderr
    data = json.loads(exported.stdout)
    assert populated["secret"] not in exported.stdout
    assert data["messages"][-1]["content"] == "The password was [REDACTED]."
    assert data["steps"] == 2 and len(data["checkpoints"]) == 5
    md = cli("export", "costs", "--format", "md", env=secret_env).stdout
    assert "# Agent costs" in md and "```python\nx = 1\n```" in md

    info = json.loads(cli("store", "info", "--json", env=env).stdout)
    assert info["path"] == str(store_path) and info["schema_version"] == SCHEMA_VERSION
    assert info["runs"] == 3 and info["checkpoints"] == 15
    assert info["size_duckdb"] == store_path.stat().st_size > 0


def test_no_command_unpickles_so_none_needs_a_trusted_store(populated, store_path):
    env = populated["env"]
    mode = store_path.stat().st_mode
    store_path.chmod(mode | stat.S_IWOTH)  # a store others could have planted code in
    try:
        exported = cli("export", "sales", "--format", "json", env=env)  # histories are JSON
        assert exported.returncode == 0, exported.stderr
        assert json.loads(exported.stdout)["messages"]
        assert cli("list", env=env).returncode == 0
        assert cli("show", "sales", env=env).returncode == 0
    finally:
        store_path.chmod(mode)


def test_delete_and_prune(populated):
    env = populated["env"]
    refused = cli("delete", "sales", env=env)  # no terminal to ask, no --yes
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert len(json.loads(cli("list", "--json", env=env).stdout)["agents"]) == 2

    pruned = cli("prune", "--keep-latest", "--yes", "--json", env=env)
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["deleted_runs"] == 1
    listed = json.loads(cli("list", "--json", env=env).stdout)["agents"]
    assert [(a["agent"], a["runs"], a["status"]) for a in listed] == [
        ("sales", 1, "done"),
        ("costs", 1, "done"),
    ]

    deleted = cli("delete", "costs", "--yes", env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert [a["agent"] for a in json.loads(cli("list", "--json", env=env).stdout)["agents"]] == [
        "sales"
    ]
    assert cli("delete", "costs", "--yes", env=env).returncode == 1  # gone: not found


def test_usage_errors_and_missing_things(agent_env, tmp_path):
    assert cli("frobnicate", env=agent_env).returncode == 2
    assert cli("prune", env=agent_env).returncode == 2  # the policy must be said
    assert cli("export", "x", "--format", "pdf", env=agent_env).returncode == 2
    missing = cli("show", "nobody", env=agent_env)
    assert missing.returncode == 1 and "No agent 'nobody'" in missing.stderr
    assert cli("resume", str(tmp_path / "none.ipynb"), env=agent_env).returncode == 1
    # Reading an empty store creates nothing.
    other = tmp_path / "elsewhere" / "agents.duckdb"
    empty = cli("--store", str(other), "list", "--json", env=agent_env)
    assert empty.returncode == 0 and json.loads(empty.stdout) == {"jobs": [], "agents": []}
    assert not other.parent.exists()


@pytest.mark.skipif(not shutil.which("jupyter"), reason="needs the jupyter command")
def test_help_lists_every_command_and_the_exit_codes(agent_env, tmp_path):
    env = {**agent_env, **jupyter_agent_on_path(tmp_path)}
    shown = cli("agent", "--help", env=env, command=["jupyter"])
    assert shown.returncode == 0
    for word in ("list", "show", "delete", "prune", "export", "store", "resume", "Exit codes"):
        assert word in shown.stdout


class CountingStore:
    """A store that counts the calls made on it, by verb."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


def add_agents(store: DuckDBStore, notebook: str, names: list[str]) -> None:
    """Finished agents of one model call each, written row by row."""
    for name in names:
        run_id = uuid.uuid4().hex[:16]
        writer = store.writer(run_id)
        run = RunRow(run_id, notebook, name, None, "Task.", "h", "scripted", None, None, 1.0)
        writer.put_run(run)
        for step, (kind, status) in enumerate([("start", "running"), ("model", "done")]):
            cp = CheckpointRow(run.run_id, step, kind, status, kind, 2.0 + step, 1.0, 10, 10)
            writer.put_checkpoint(cp, b"{}")
        writer.close()


def test_list_reads_the_store_as_often_for_twenty_agents_as_for_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`jupyter agent list` reads the runs, their stats and the live runs once, whatever
    the number of agents (it used to read the store again for each agent)."""
    from jupyter_agent import cli

    def calls_to_list(names: list[str]) -> Counter[str]:
        store = DuckDBStore(tmp_path / f"{len(names)}" / "agents.duckdb")
        add_agents(store, str(tmp_path / "nb.ipynb"), names)
        counting = CountingStore(store)
        monkeypatch.setattr(cli, "open_store", lambda *args, **kwargs: counting)
        assert cli.main(["list", "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)["agents"]) == len(names)
        return counting.calls

    one = calls_to_list(["a0"])
    twenty = calls_to_list([f"a{i}" for i in range(20)])
    assert twenty == one
    assert one["runs"] == one["run_stats"] == 1 and one["session"] == 1
