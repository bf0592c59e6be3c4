"""What a run depends on, recorded by each execution, and what changed since the last one.

A run resumed after its tool cell was edited continues under other code; an
upgrade, another model or another endpoint changes it too. Each execution
records a fingerprint in its first checkpoint's info (``start``, ``resume``,
``fork``; no schema change): each ``@tool``'s name and source hash, the MCP
tools' schemas, the system prompt and the task, the model, API and endpoint
host, the jupyter-agent and Python versions, and the versions of the packages
the notebook has imported as names. A continuation compares its own with the
latest recorded one, which the run's folded state keeps
(``RunState.fingerprint``: no store read of its own), (:func:`changes`) and says the difference in one line
(:func:`change_line`); ``RunPolicy.strict`` refuses to continue on one.

Everything is computed from what is in memory (no file, no package metadata
read), so it costs the execution's start well under a millisecond per tool.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import platform
import sys
import types
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from .. import __version__
from ..core.state import RunState
from ..model.base import Endpoint
from ..store.api import RunRow
from ..tools.toolbox import Toolbox

_API = "chat.completions"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def source_hash(fn: Any) -> str:
    """A hash of a function's source (its code object's, where the source is not known)."""
    try:
        return _digest(inspect.getsource(fn))
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        return _digest(repr((code.co_code, code.co_consts)) if code else repr(fn))


def _packages(ns: dict) -> dict[str, str]:
    """Versions of the top-level packages the notebook's names come from (``pd`` → pandas)."""
    found: dict[str, str] = {}
    for value in list(ns.values()):
        if isinstance(value, types.ModuleType):
            name = value.__name__
        else:  # a function's, a class's, or an instance's class's module: no search
            name = getattr(value, "__module__", None) or type(value).__module__
        name = name if isinstance(name, str) else ""
        top = name.split(".", 1)[0]
        if not top or top.startswith("_") or top in found or top in sys.stdlib_module_names:
            continue
        version = getattr(sys.modules.get(top), "__version__", None)
        if isinstance(version, str):
            found[top] = version
    return dict(sorted(found.items()))


def fingerprint(
    ns: dict,
    toolbox: Toolbox,
    user_tools: Iterable[str],
    endpoint: Endpoint,
    system: str,
    task: str,
) -> dict[str, Any]:
    """What an execution depends on, as recorded (see the module)."""
    names = set(user_tools)
    tools = {n: source_hash(ns[n]) for n in sorted(names) if n in ns}
    mcp = {
        name: _digest(json.dumps(tool.schema, sort_keys=True, default=str))
        for name, tool in sorted(toolbox.tools.items())
        if name != "python" and name not in names
    }
    return {
        "tools": tools,
        "mcp": mcp,
        "system": _digest(system),
        "task": _digest(task),
        "model": endpoint.model,
        "api": _API,
        "endpoint": urlsplit(endpoint.base_url).netloc if endpoint.base_url else endpoint.label,
        "jupyter_agent": __version__,
        "python": platform.python_version(),
        "packages": _packages(ns),
    }


def changes(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprints, each in a few words, most telling first."""
    said: list[str] = []
    for kind in ("tools", "mcp"):
        label = "tool" if kind == "tools" else "MCP tool"
        before, now = old.get(kind) or {}, new.get(kind) or {}
        for name in sorted(set(before) | set(now)):
            if name not in now:
                said.append(f"{label} `{name}` removed")
            elif name not in before:
                said.append(f"{label} `{name}` added")
            elif before[name] != now[name]:
                said.append(f"{label} `{name}` changed")
    for key, label in (("system", "system prompt"), ("task", "task")):
        if old.get(key) and old.get(key) != new.get(key):
            said.append(f"{label} changed")
    for key, label in (
        ("model", "model"),
        ("api", "API"),
        ("endpoint", "endpoint"),
        ("jupyter_agent", "jupyter-agent"),
        ("python", "Python"),
    ):
        if old.get(key) and old.get(key) != new.get(key):
            said.append(f"{label} {old[key]} → {new.get(key)}")
    before, now = old.get("packages") or {}, new.get("packages") or {}
    for name in sorted(set(before) & set(now)):
        if before[name] != now[name]:
            said.append(f"{name} {before[name]} → {now[name]}")
    return said


def since_last(state: RunState, now: dict) -> str:
    """What changed since the run's latest recorded execution (its folded ``state``), in one line."""
    if not state.fingerprint:
        return ""
    step, last = state.fingerprint
    return change_line(changes(last, now), step)


def restored_change(state: RunState, run: RunRow, ns: dict, endpoint: Endpoint, system: str) -> str:
    """What changed since ``run``'s last execution, said as a finished run is restored.

    No execution starts, so no MCP server: their tools are taken as recorded.
    """
    now = fingerprint(ns, Toolbox([]), run.info.get("tools") or [], endpoint, system, run.prompt)
    now["mcp"] = ((state.fingerprint or [0, {}])[1]).get("mcp") or {}
    return since_last(state, now)


def change_line(said: list[str], since: int) -> str:
    """One line: ``tool `load_prices` changed since checkpoint 7; model gpt-4o → gpt-4.1``."""
    if not said:
        return ""
    first, *rest = said
    return "; ".join([f"{first} since checkpoint {since}", *rest])
