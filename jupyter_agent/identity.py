"""Which notebook and which cell an agent belongs to.

Frontends tell the kernel different things (see docs/identity.md):

* JupyterLab 4 / Notebook 7: the notebook path in ``__session__`` /
  ``JPY_SESSION_NAME`` and the nbformat cell id in the execute request's
  metadata (``cellId``).
* VS Code: the path in ``__vsc_ipynb_file__``; its cell ids are per-session
  URIs, so they are not used.
* nbclient, nbval, papermill, terminal IPython: neither.

``JUPYTER_AGENT_NOTEBOOK`` overrides the notebook. ``--name`` names an agent
and identifies it wherever no stable cell id exists; without either, the agent
is identified by its prompt text.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class IdentityError(ValueError):
    pass


@dataclass(frozen=True)
class AgentIdentity:
    notebook: str  # absolute notebook path (or a stand-in when the frontend sends none)
    agent: str  # the agent's name within the notebook
    cell_id: str | None  # the nbformat cell id, when the frontend sent one
    how: str  # how the agent was identified, shown to the user


def validate_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise IdentityError(
            f"Invalid agent name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit."
        )
    return name


def notebook_path(user_ns: dict[str, Any]) -> tuple[str, str]:
    """The notebook's path and where it came from."""
    candidates = [
        ("JUPYTER_AGENT_NOTEBOOK", os.environ.get("JUPYTER_AGENT_NOTEBOOK")),
        ("__vsc_ipynb_file__", user_ns.get("__vsc_ipynb_file__")),
        ("__session__", user_ns.get("__session__")),
        ("JPY_SESSION_NAME", os.environ.get("JPY_SESSION_NAME")),
    ]
    for source, value in candidates:
        if isinstance(value, str) and value.strip():
            path = value.strip()
            if not path.startswith(("/", "untitled")) and "://" not in path:
                path = os.path.abspath(path)
            return path, source
    return os.path.join(os.getcwd(), "(no notebook)"), "working directory"


def current_cell_id(shell: Any) -> str | None:
    """The nbformat id of the executing cell, as JupyterLab and Notebook 7 send it."""
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return None
    try:
        parent = kernel.get_parent()
    except Exception:
        parent = getattr(kernel, "_parent_header", None)
    metadata = (parent or {}).get("metadata") or {}
    cell_id = metadata.get("cellId")
    if not isinstance(cell_id, str) or not cell_id or "://" in cell_id or ":" in cell_id:
        return None  # absent, or a VS Code URI that changes every session
    return cell_id


def resolve(shell: Any, name: str | None, prompt: str) -> AgentIdentity:
    notebook, source = notebook_path(shell.user_ns)
    cell_id = current_cell_id(shell)
    if name:
        return AgentIdentity(
            notebook, validate_name(name), cell_id, f"--name, notebook from {source}"
        )
    if cell_id:
        return AgentIdentity(
            notebook, f"cell-{cell_id}", cell_id, f"cell id, notebook from {source}"
        )
    digest = hashlib.sha256(prompt.strip().encode()).hexdigest()[:10]
    return AgentIdentity(
        notebook, f"prompt-{digest}", None, f"prompt text (no cell id), notebook from {source}"
    )
