"""Which notebook and which cell an agent belongs to.

Frontends tell the kernel different things (see docs/identity.md):

* JupyterLab 4 / Notebook 7: the notebook path in ``__session__`` /
  ``JPY_SESSION_NAME`` and the nbformat cell id in the execute request's
  metadata (``cellId``).
* VS Code: the path in ``__vsc_ipynb_file__``; its cell ids are per-session
  URIs, so they are not used.
* nbclient, nbval, papermill, ``jupyter execute``, nbconvert: neither. The
  notebook is then found on disk: the ``.ipynb`` file (named on the runner's
  command line, or in the kernel's working directory) that holds the running
  agent cell and every cell run before it; papermill's output notebook is
  named on its command line.
* terminal IPython: neither.

``JUPYTER_AGENT_NOTEBOOK`` overrides the notebook. ``--name`` names an agent
and identifies it wherever no stable cell id exists; without either, the agent
is identified by its prompt text. Where nothing identifies the notebook, the
first agent cell of a kernel says so once, since every notebook run from that
folder then shares its agents.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..core import notebook_store
from ..core.notebook_store import recorded_store
from ..errors import IdentityError
from ..vocab import ENV_NOTEBOOK, NAME_PATTERN, cell_agent_name

FALLBACK_SOURCE = "working directory"
#: Where a notebook found on disk came from; such a notebook may also give cell ids.
FOUND_SOURCES = ("papermill's output path", "the notebook file holding this cell")
#: Looking for the notebook on disk reads at most this many files of at most this size.
SCAN_FILES = 100
SCAN_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class AgentIdentity:
    notebook: str  # absolute notebook path (or a stand-in when the frontend sends none)
    agent: str  # the agent's name within the notebook
    cell_id: str | None  # the nbformat cell id, when the frontend sent one
    how: str  # how the agent was identified, shown to the user
    notice: str | None = None  # a warning the cell prints first (see resolve)


def validate_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise IdentityError(
            f"Invalid agent name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit."
        )
    return name


#: The notebook found on disk by this kernel; a headless runner's kernel serves one notebook.
_found: tuple[str, str] | None = None
#: Notices already given in this kernel: the fallback notebook, unnamed agents.
_told: set[str] = set()


def _given_path(user_ns: dict[str, Any]) -> tuple[str, str] | None:
    """The notebook path a frontend or the user stated, if any."""
    candidates = [
        (ENV_NOTEBOOK, os.environ.get(ENV_NOTEBOOK)),
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
    return None


def notebook_path(
    user_ns: dict[str, Any], prompt: str | None = None, history: list[str] | None = None
) -> tuple[str, str]:
    """The notebook's path and where it came from.

    With the running agent cell's ``prompt`` (and the cells run so far), a
    kernel whose frontend names no notebook looks for it on disk.
    """
    global _found
    given = _given_path(user_ns)
    if given:
        return given
    if _found is None:
        _found = find_notebook(prompt, history or [])
    if _found is not None:
        return _found
    return os.path.join(os.getcwd(), "(no notebook)"), FALLBACK_SOURCE


# -- finding the notebook of a headless run ---------------------------------------------


def _runner_command() -> tuple[list[str], str]:
    """The command line and working directory of the process that started this kernel.

    nbclient, papermill, ``jupyter execute`` and nbconvert start kernels as
    child processes and tell them nothing else about the notebook (Linux only).
    """
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        return argv, os.readlink(f"/proc/{ppid}/cwd")
    except OSError:
        return [], os.getcwd()


def _local(arg: str, cwd: str) -> str | None:
    if "://" in arg or arg.startswith("-") or not arg.endswith(".ipynb"):
        return None
    return os.path.abspath(os.path.join(cwd, os.path.expanduser(arg)))


def _read(path: str) -> Any:
    """The notebook file at ``path`` as JSON (None: missing, too large, not JSON)."""
    try:
        if os.path.getsize(path) > SCAN_BYTES:
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _code_cells(path: str) -> list[dict] | None:
    try:
        nb = _read(path)
        cells = nb.get("cells") if isinstance(nb, dict) else None
        if not isinstance(cells, list):
            return None
        out = []
        for cell in cells:
            if isinstance(cell, dict) and cell.get("cell_type") == "code":
                source = cell.get("source", "")
                source = "".join(source) if isinstance(source, list) else str(source)
                out.append({"source": source, "id": cell.get("id")})
        return out
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _agent_body(source: str) -> str | None:
    """The task of an ``%%agent`` cell, as the magic receives it (stripped)."""
    first, _, body = source.lstrip().partition("\n")
    return body.strip() if first.startswith("%%agent") else None


def agent_cells(path: str, prompt: str) -> list[str | None]:
    """The cell ids of the ``%%agent`` cells of ``path`` whose task is ``prompt``."""
    cells = _code_cells(path) or []
    return [c["id"] for c in cells if _agent_body(c["source"]) == prompt.strip()]


def find_notebook(prompt: str | None, history: list[str]) -> tuple[str, str] | None:
    """The notebook a headless runner is executing, when the files on disk tell.

    papermill names its output notebook on the command line. Otherwise the
    candidates are the ``.ipynb`` files on the runner's command line and in the
    kernel's working directory; the one holding the running agent cell and
    every cell run before it is the notebook. Two that both match are not
    guessed between.
    """
    argv, runner_cwd = _runner_command()
    local = [p for p in (_local(a, runner_cwd) for a in argv) if p]
    if any(os.path.basename(a).startswith("papermill") for a in argv[:2]) and len(local) >= 2:
        return local[1], FOUND_SOURCES[0]
    if prompt is None or not prompt.strip():
        return None
    candidates = list(dict.fromkeys(local))
    with contextlib.suppress(OSError):
        here = sorted(e.path for e in os.scandir(os.getcwd()) if e.name.endswith(".ipynb"))
        candidates += [p for p in here if p not in candidates]
    ran = [h.strip() for h in history if h.strip()]
    exact, loose = [], []
    for path in candidates[:SCAN_FILES]:
        cells = [c["source"].strip() for c in _code_cells(path) or [] if c["source"].strip()]
        at = [i for i, c in enumerate(cells) if _agent_body(c) == prompt.strip()]
        if not at:
            continue
        # Runners execute every cell in order: what ran is exactly what precedes this one.
        if any(cells[:i] == ran[:-1] for i in at):
            exact.append(path)
        if set(ran) <= set(cells):
            loose.append(path)
    for matches in (exact, loose):
        if len(matches) == 1:
            return matches[0], FOUND_SOURCES[1]
    return None


def _history(shell: Any) -> list[str]:
    """The cells this kernel ran so far, as typed (the running one included)."""
    manager = getattr(shell, "history_manager", None)
    raw = getattr(manager, "input_hist_raw", None)
    return [h for h in raw if isinstance(h, str)] if isinstance(raw, list) else []


# -- the cell ----------------------------------------------------------------------------


def _request_metadata(shell: Any) -> dict[str, Any]:
    """The metadata of the execute request being served (empty outside a kernel)."""
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return {}
    try:
        parent = kernel.get_parent()
    except Exception:
        parent = getattr(kernel, "_parent_header", None)
    metadata = (parent or {}).get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def runner_ignores_display_updates() -> bool:
    """Whether this kernel was started by nbval, which keeps a display as first shown.

    nbval compares a cell's outputs as its own client saw them, and that client
    drops ``update_display_data``; JupyterLab, Notebook 7, VS Code, nbclient,
    papermill and nbconvert apply the updates. Known from the command line of the
    process that started the kernel, as the notebook on disk is (see above).
    """
    argv, _ = _runner_command()
    return any(a.startswith("--nbval") for a in argv)


def current_cell_id(shell: Any) -> str | None:
    """The nbformat id of the executing cell, as JupyterLab and Notebook 7 send it."""
    cell_id = _request_metadata(shell).get("cellId")
    if not isinstance(cell_id, str) or not cell_id or "://" in cell_id or ":" in cell_id:
        return None  # absent, or a VS Code URI that changes every session
    return cell_id


def _once(key: str, text: str) -> str | None:
    if key in _told:
        return None
    _told.add(key)
    return text


def other_store(notebook: str, current: Callable[[], str | None], where: str) -> str | None:
    """A warning when the notebook, as saved, records another store than this kernel's.

    Checked once per notebook in a kernel (the file is read then). ``current``
    gives this kernel's store id (None: no store yet); ``where`` names the store.
    The cell prints it and runs: its agents start afresh in this store.
    """
    key = f"store:{notebook}"
    if key in _told:
        return None
    _told.add(key)
    nb = _read(notebook)
    recorded = recorded_store(nb) if isinstance(nb, dict) else None
    why = notebook_store.other_store(recorded, current(), where) if recorded is not None else None
    if why is None:
        return None
    return (
        f"⚠ This notebook {why}: its agents start afresh here, repeating their model and "
        "tool calls. To continue them, set JUPYTER_AGENT_STORE to the notebook's store and "
        "restart the kernel."
    )


def resolve(shell: Any, name: str | None, prompt: str) -> AgentIdentity:
    """Identify the agent of a running ``%%agent`` cell.

    ``notice`` is set when the identity is weak: the first agent cell of a
    kernel that knows no notebook, and an agent known only by its prompt text.
    The cell prints it before running.
    """
    notebook, source = notebook_path(shell.user_ns, prompt, _history(shell))
    cell_id = current_cell_id(shell)
    if cell_id is None and source in FOUND_SOURCES:
        ids = agent_cells(notebook, prompt)  # the file's cell ids, as JupyterLab would send
        if len(ids) == 1 and isinstance(ids[0], str) and ids[0]:
            cell_id = ids[0]
    if name:
        identity = AgentIdentity(
            notebook, validate_name(name), cell_id, f"--name, notebook from {source}"
        )
    elif cell_id:
        identity = AgentIdentity(
            notebook, cell_agent_name(cell_id), cell_id, f"cell id, notebook from {source}"
        )
    else:
        digest = hashlib.sha256(prompt.strip().encode()).hexdigest()[:10]
        identity = AgentIdentity(
            notebook, f"prompt-{digest}", None, f"prompt text (no cell id), notebook from {source}"
        )
    # After validation: a refused cell uses up no notice.
    notices = []
    if source == FALLBACK_SOURCE:
        notices.append(
            _once(
                "notebook",
                f"⚠ This kernel was not told its notebook, so its agents are stored as "
                f"{notebook}, shared with every notebook run headless from that folder; set "
                f"{ENV_NOTEBOOK}=/path/to/this.ipynb to keep them apart.",
            )
        )
    if identity.cell_id is None and not name:
        notices.append(
            _once(
                f"prompt:{notebook}:{identity.agent}",
                "⚠ This frontend sends no cell id, so this agent is known by its prompt: "
                "editing the prompt starts a new agent. Add --name NAME to keep it.",
            )
        )
    text = "\n".join(n for n in notices if n)
    return replace(identity, notice=text) if text else identity
