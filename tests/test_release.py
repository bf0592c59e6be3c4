"""What a release ships: its name, version, licence, changelog and documentation site.

The slow half (building the sdist and the wheel, installing the wheel in a
fresh virtualenv, building the site) is scripts/check-release, run by
scripts/test; these are the quick checks that keep its inputs consistent.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import jupyter_agent

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
#: Taken on PyPI by another project, which installs a jupyter_agent package too.
TAKEN = {"jupyter-agent"}


def test_the_distribution_name_is_ours_and_the_commands_stay() -> None:
    name = PROJECT["name"]
    assert re.sub(r"[-_.]+", "-", name).lower() not in TAKEN
    assert PROJECT["scripts"] == {"jupyter-agent": "jupyter_agent.cli:main"}
    assert PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["jupyter_agent"]
    readme = (ROOT / "README.md").read_text()
    assert f"pip install {name}\n" in readme
    # The contributors' two commands stay.
    assert "pip install -e . && jupyter lab notebooks/quickstart.ipynb" in readme
    assert "\nscripts/test\n" in readme


def test_the_version_has_one_source() -> None:
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "jupyter_agent/__init__.py"
    assert re.fullmatch(r"\d+\.\d+\.\d+", jupyter_agent.__version__)
    # The lab extension is listed with its own package.json's version: the same one.
    package = json.loads((ROOT / "labextension" / "package.json").read_text())
    assert package["version"] == jupyter_agent.__version__
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"\n## {jupyter_agent.__version__}\n" in changelog


def test_the_licence_is_bsd_3_clause_and_shipped() -> None:
    assert PROJECT["license"] == "BSD-3-Clause"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License\n")
    assert "Neither the name of the copyright holder nor the names of its" in text
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]  # PEP 639


def test_every_docs_page_is_reached_from_the_site_index() -> None:
    """Sphinx -W fails on a page left out too; this says which, without building."""
    index = (ROOT / "docs" / "index.md").read_text()
    listed: list[str] = []
    for toctree in re.findall(r"```\{toctree\}\n(.*?)```", index, re.DOTALL):
        listed += [ln.strip() for ln in toctree.splitlines() if ln.strip() and ln[0] != ":"]
    pages = sorted(p.stem for p in (ROOT / "docs").glob("*.md") if p.stem != "index")
    assert sorted(listed) == pages
    assert "CHANGELOG.md" in (ROOT / "docs" / "changelog.md").read_text()


def test_ci_checks_the_release() -> None:
    script = (ROOT / "scripts" / "test").read_text()
    assert "scripts/check-release" in script
    check = (ROOT / "scripts" / "check-release").read_text()
    for step in ("-m build", "twine check --strict", "-m venv", "labextension list"):
        assert step in check
    assert "server extension list" in check and "sphinx -W" in check
    extras = {re.split(r"[<>=\[ ]", r)[0] for r in PROJECT["optional-dependencies"]["test"]}
    assert {"build", "twine", "sphinx", "myst-parser", "pydata-sphinx-theme"} <= extras
