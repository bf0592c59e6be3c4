"""Sphinx configuration of the documentation site: the Markdown pages of docs/.

Built with MyST and the PyData theme, as Jupyter projects are:
``python -m sphinx -W -b html docs docs/_build/html`` (scripts/check-release
builds it with warnings as errors, so a broken link or a page left out of
the table of contents fails CI).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_agent import __version__  # noqa: E402  (after the path is set)

project = "jupyter-agent"
author = "The jupyter-agent contributors"
copyright = "2026, The jupyter-agent contributors"
version = release = __version__

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
#: Links such as concepts.md#long-runs-a-bounded-context-a-bounded-bill-a-visible-plan.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

html_theme = "pydata_sphinx_theme"
html_title = f"jupyter-agent {__version__}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
