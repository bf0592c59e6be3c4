"""An agent's python calls as cells: ``jupyter agent export --format ipynb|py`` (a subprocess).

The exported notebook runs top to bottom in a fresh kernel (nbclient) and
makes the same values the agent made; bad arguments get one line.
"""

from __future__ import annotations

import pickle

import nbformat
import pytest
from nbclient import NotebookClient

from .test_cli import cli

pytest.importorskip("pandas")

CELL = "%%agent --model scripted --name builder\nBuild the table."
CODES = [
    "import numpy as np\nimport pandas as pd\nxs = np.arange(6)\nprint('made xs')",
    "df = pd.DataFrame({'x': xs, 'y': xs ** 2})\ndf",
    "total = int(df['y'].sum())\nlabels = [f'row{i}' for i in xs]\ntotal",
]
SCRIPT = [
    *({"tool_calls": [{"name": "python", "arguments": {"code": c}}]} for c in CODES),
    {"content": "Built df, total and labels."},
]
DUMP = "import pickle\nwith open({path!r}, 'wb') as f:\n    pickle.dump({{'xs': xs, 'df': df, 'total': total, 'labels': labels}}, f)"


def load(path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f)


def test_exported_notebook_reproduces_the_agents_values(
    kernel_factory, scripted, agent_env, tmp_path
):
    nb_path = tmp_path / "analysis.ipynb"
    scripted.set_script(SCRIPT)
    k = kernel_factory(JUPYTER_AGENT_NOTEBOOK=str(nb_path))
    ran = k.run(CELL, cell_id="cell-export")
    assert ran.status == "ok" and "Built df" in ran.text, ran.text
    agent_values = tmp_path / "agent.pkl"
    assert k.run(DUMP.format(path=str(agent_values))).status == "ok"

    # %agent cells: the cells go to the frontend, for below the agent's cell.
    sent = k.run("%agent cells builder")
    assert sent.status == "ok", sent.text
    (opened,) = [c for c in sent.comms if c["target_name"] == "jupyter_agent.cells"]
    data = opened["data"]
    assert data["cell_id"] == "cell-export" and data["replace"] is False
    assert [c["source"] for c in data["cells"]] == CODES
    assert "text/html" in data["cells"][1]["outputs"][0]["data"]
    assert "3 python calls of agent builder" in sent.stdout
    replaced = k.run("%agent cells builder --replace")
    assert [c["data"]["replace"] for c in replaced.comms] == [True]

    out = tmp_path / "builder.ipynb"
    done = cli(
        "export",
        str(nb_path),
        "--format",
        "ipynb",
        "--agent",
        "builder",
        "-o",
        str(out),
        env=agent_env,
    )
    assert done.returncode == 0, done.stderr
    nb = nbformat.read(out, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.source for c in code] == CODES
    # With the outputs they had: printed text, and the DataFrame's HTML as its value.
    assert code[0].outputs[0]["text"] == "made xs\n"
    assert "text/html" in code[1].outputs[0]["data"]
    assert code[2].outputs[0]["data"]["text/plain"] == "55"

    fresh_values = tmp_path / "fresh.pkl"
    nb.cells.append(nbformat.v4.new_code_cell(DUMP.format(path=str(fresh_values))))
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    agent, fresh = load(agent_values), load(fresh_values)
    assert (agent["xs"] == fresh["xs"]).all()
    assert agent["df"].equals(fresh["df"])
    assert (agent["total"], agent["labels"]) == (fresh["total"], fresh["labels"])

    script = cli("export", str(nb_path), "--format", "py", env=agent_env)
    assert script.returncode == 0, script.stderr
    assert all(c in script.stdout for c in CODES)
    assert script.stdout.count("# %%\n") == len(CODES)
    namespace: dict = {}
    exec(compile(script.stdout, "export.py", "exec"), namespace)
    assert namespace["total"] == agent["total"]


def test_bad_export_arguments_get_one_line(kernel_factory, scripted, agent_env, tmp_path):
    nb_path = tmp_path / "analysis.ipynb"
    scripted.set_script(SCRIPT)
    k = kernel_factory(JUPYTER_AGENT_NOTEBOOK=str(nb_path))
    assert k.run(CELL, cell_id="cell-export").status == "ok"
    cases = [
        (["export", str(tmp_path / "other.ipynb"), "--format", "ipynb"], 1, "No agents in"),
        (["export", str(nb_path), "--format", "py", "--agent", "nobody"], 1, "No agent 'nobody'"),
        (["export", "builder", "--format", "md", "--agent", "builder"], 2, "--agent"),
        (
            ["export", str(nb_path), "--format", "ipynb", "-o", str(tmp_path / "no" / "x.ipynb")],
            1,
            "Cannot write",
        ),
    ]
    for args, code, words in cases:
        done = cli(*args, env=agent_env)
        assert done.returncode == code, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (args, done.stderr)


def test_agent_cells_in_terminal_ipython_prints_a_script(ip, scripted, capsys):
    scripted.set_script([SCRIPT[0], {"content": "Made xs."}])
    ip.run_cell_magic("agent", "--model scripted -n terminal", "Make xs.")
    capsys.readouterr()
    ip.run_line_magic("agent", "cells terminal")
    out = capsys.readouterr().out
    assert f"# %%\n{CODES[0]}\n" in out, out
