"""The notebooks under notebooks/ stay clean, and the quickstart command opens them.

Opening a notebook in JupyterLab must not rewrite it (its kernelspec is what
JupyterLab writes for the default kernel), and what is saved in it must not
carry details of the machine it was run on: paths, home directories, host
names, times.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: Exactly what JupyterLab writes for the default python3 kernel of ipykernel.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
#: A POSIX path of two or more parts, or a Windows one (backslashes as JSON escapes them).
ABSOLUTE_PATH = re.compile(r"(?:^|[\s'\"(=:])(/[\w.~-]+){2,}|\b[A-Za-z]:\\\\[\w.-]+\\\\")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}")
#: The distribution's name on PyPI (the import package is jupyter_agent).
DISTRIBUTION = "jupyter-agent-cells"


def machine_details(text: str) -> list[str]:
    """What in ``text`` belongs to the machine it was made on."""
    found = [m.group(0).strip() for m in ABSOLUTE_PATH.finditer(text)]
    found += TIMESTAMP.findall(text)
    found += [s for s in ("(no notebook)", str(Path.home()), sys.prefix) if s in text]
    host = socket.gethostname()
    if len(host) > 3 and re.search(rf"\b{re.escape(host)}\b", text):
        found.append(host)
    return found


def saved(notebook: Path) -> tuple[dict, str]:
    nb = json.loads(notebook.read_text())
    kept = {"metadata": nb["metadata"], "cells": []}
    for cell in nb["cells"]:
        kept["cells"].append({"metadata": cell["metadata"], "outputs": cell.get("outputs", [])})
    return nb, json.dumps(kept, ensure_ascii=False)


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_metadata_is_what_jupyterlab_writes(notebook: Path) -> None:
    nb, _ = saved(notebook)
    assert nb["metadata"]["kernelspec"] == KERNELSPEC
    language = nb["metadata"]["language_info"]
    assert language["name"] == "python" and "version" not in language
    assert set(nb["metadata"]) <= {"kernelspec", "language_info"}  # e.g. no widget state
    for cell in nb["cells"]:
        assert "execution" not in cell["metadata"], cell["source"]  # timings of a run


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_saved_outputs_and_metadata_carry_no_machine_details(notebook: Path) -> None:
    _, text = saved(notebook)
    assert machine_details(text) == []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_nbval_directions_are_cell_tags_not_comments_in_the_code(notebook: Path) -> None:
    """A reader sees the notebook's code only: what nbval should ignore is a tag."""
    nb, _ = saved(notebook)
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        assert "NBVAL_" not in source.upper().replace("-", "_"), source
        tags = cell["metadata"].get("tags", [])
        assert set(cell["metadata"]) <= {"tags"} and all(t.startswith("nbval-") for t in tags)


def test_the_scan_finds_machine_details() -> None:
    """The scan above cannot pass by finding nothing."""
    text = json.dumps(
        [
            f"warning from {sys.prefix}/lib/python3/site-packages/x.py",
            "'notebook': '(no notebook)'",
            f"saved at 2026-11-26 10:50:23 in {Path.home()}",
            "C:\\Users\\me\\data.csv",
        ]
    )
    found = machine_details(text)
    assert any(sys.prefix in f for f in found) and "(no notebook)" in found
    assert "2026-11-26 10:50" in found and str(Path.home()) in found
    assert any(f.startswith("C:") for f in found)
    assert machine_details('open("data/sales.csv"), 3/4, and/or') == []


def test_quickstart_command_has_jupyterlab() -> None:
    """`pip install -e . && jupyter lab …` needs JupyterLab as a runtime dependency."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {Requirement(r).name for r in project["dependencies"]}
    assert {"jupyterlab", "notebook"} <= runtime  # Notebook 7 is supported, so installed
    extras = project["optional-dependencies"]
    assert not {"jupyterlab", "notebook"} & {Requirement(r).name for r in extras["test"]}


def test_installed_distribution_brings_jupyter_lab() -> None:
    """What pip installed from this source tree requires JupyterLab, without an extra."""
    name = DISTRIBUTION
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{name} is not installed (this checkout may be on the path only)")
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    if os.path.realpath(direct.get("url", "").removeprefix("file://")) != str(ROOT):
        pytest.skip(f"{name} is installed from {direct.get('url')}, not from {ROOT}")
    requires = [Requirement(r) for r in dist.requires or []]
    assert any(r.name == "jupyterlab" and r.marker is None for r in requires), requires
    scripts = metadata.distribution("jupyterlab").entry_points.select(group="console_scripts")
    assert "jupyter-lab" in scripts.names
