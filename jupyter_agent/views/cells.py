"""An agent's python calls as notebook cells: the code it ran, with the outputs it had.

One reading of a run's whole history (its fork chain included), shared by the
restore of a finished cell (which shows the calls' rich outputs again),
``%agent cells`` and the lab extension (which insert the calls as code cells)
and ``jupyter agent export --format ipynb|py``. The code is what ran: an
approver's edit replaces the model's, a rejected or malformed call is left out.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..core import history
from ..core.redaction import redact
from ..core.state import call_code, decode_delta, fold
from ..errors import NotFound
from ..store.api import RunRow, Store

#: What the python tool sends the model when a call printed nothing.
_NO_OUTPUT = "(no output)"


@dataclass
class PythonCall:
    """One python call of a run, as a cell: its code and what it showed."""

    code: str
    #: What the call printed (its stdout, stderr, traceback), without its value's text.
    printed: str = ""
    #: Its displays and value as nbformat outputs (see :mod:`jupyter_agent.tools.rich`).
    outputs: list[dict] = field(default_factory=list)
    error: bool = False


def python_calls(store: Store, run: RunRow) -> list[PythonCall]:
    """The python calls of ``run``'s whole history that ran, oldest first."""
    pairs = store.payloads(history.segments(run, store.run, whole=True))
    outputs: dict[str, list[dict]] = {}
    errors: dict[str, bool] = {}
    decisions: dict[str, dict] = {}
    for cp, payload in pairs:
        delta = decode_delta(payload)
        if delta.decision:
            decisions[str(delta.decision.get("call_id"))] = delta.decision
        if cp.kind == "tool_result" and delta.tool_call_id:
            outputs[delta.tool_call_id] = delta.outputs or []
            errors[delta.tool_call_id] = bool(cp.info.get("error"))
    messages = fold(pairs).messages
    texts = {m.get("tool_call_id"): m.get("content") for m in messages if m.get("role") == "tool"}
    calls = []
    for msg in messages:
        if msg.get("role") != "assistant":
            continue
        for call in msg.get("tool_calls") or []:
            call_id = call.get("id")
            code = _code(call, decisions.get(call_id))
            if code is None or call_id not in outputs:
                continue
            shown = outputs[call_id]
            calls.append(
                PythonCall(code, _printed(texts.get(call_id), shown), shown, errors[call_id])
            )
    return calls


def redacted(call: PythonCall, secrets: list[str]) -> PythonCall:
    """The call with ``secrets`` replaced everywhere (e.g. the reader's own environment's)."""
    return PythonCall(
        redact(call.code, secrets),
        redact(call.printed, secrets),
        redact(call.outputs, secrets),
        call.error,
    )


def agent_cells(store: Store, notebook: str, agent: str, secrets: list[str]) -> dict[str, Any]:
    """The code cells of an agent's latest run, for a frontend to insert below its cell.

    ``{"agent", "cell_id", "run_id", "cells"}``; :class:`NotFound` without such an agent.
    """
    runs = store.runs(notebook=notebook, agent=agent) if store.exists() else []
    if not runs:
        raise NotFound(f"No agent named {agent!r} in this notebook.")
    run = runs[-1]
    calls = [redacted(c, secrets) for c in python_calls(store, run)]
    return {
        "agent": run.agent,
        "cell_id": run.cell_id,
        "run_id": run.run_id,
        "cells": [code_cell(c) for c in calls],
    }


def _code(call: dict, decision: dict | None) -> str | None:
    """The code a python call ran: an approver's edit, else the model's; None if it never ran."""
    fn = call.get("function") or {}
    if fn.get("name") != "python":
        return None
    if decision is not None and decision.get("action") == "reject":
        return None
    if decision is not None and isinstance(decision.get("code"), str):
        return str(decision["code"])
    return call_code(call)


def _printed(text: Any, outputs: list[dict]) -> str:
    """The model's text of a call without its last value's text/plain (shown as the value)."""
    text = text if isinstance(text, str) else ""
    if text == _NO_OUTPUT:
        return ""
    for out in outputs:
        if out.get("output_type") == "execute_result":
            value = str(out.get("data", {}).get("text/plain", "")) + "\n"
            if text.endswith(value):
                text = text[: -len(value)]
    return text


def cell_outputs(call: PythonCall, count: int | None = None) -> list[dict]:
    """The call's outputs as an nbformat code cell holds them (``count``: its execution count)."""
    outputs: list[dict] = []
    if call.printed:
        name = "stderr" if call.error else "stdout"
        outputs.append({"output_type": "stream", "name": name, "text": call.printed})
    for out in call.outputs:
        data, metadata = out.get("data", {}), out.get("metadata") or {}
        if out.get("output_type") == "execute_result":
            outputs.append(
                {
                    "output_type": "execute_result",
                    "execution_count": count,
                    "data": data,
                    "metadata": metadata,
                }
            )
        else:
            outputs.append({"output_type": "display_data", "data": data, "metadata": metadata})
    return outputs


def code_cell(call: PythonCall, count: int | None = None) -> dict:
    """One call as an nbformat v4 code cell, with its outputs."""
    return {
        "id": _cell_id(),
        "cell_type": "code",
        "execution_count": count,
        "metadata": {"jupyter_agent": {"python_call": True}},
        "outputs": cell_outputs(call, count),
        "source": call.code,
    }


def markdown_cell(text: str) -> dict:
    return {"id": _cell_id(), "cell_type": "markdown", "metadata": {}, "source": text}


def _cell_id() -> str:
    return uuid.uuid4().hex[:12]


def notebook(cells: list[dict]) -> dict:
    """An nbformat v4 notebook of ``cells``, for a Python 3 kernel."""
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def python_script(sections: list[tuple[str, list[PythonCall]]]) -> str:
    """The calls of each (heading, calls) section as one script, in percent-cell format."""
    lines = ["# Exported from jupyter-agent: the python calls of each agent, in order.", ""]
    for heading, calls in sections:
        lines += [f"# %% [markdown]\n# {heading}", ""]
        for call in calls:
            lines += ["# %%", call.code.rstrip(), ""]
    return "\n".join(lines)


def editable(kind: str, messages: list[dict]) -> dict | None:
    """What a "what if" fork from this checkpoint may edit, whole, for the fork dialog to prefill.

    A ``model`` checkpoint's reply, as JSON its ``--reply`` accepts (tool calls
    written shortly); a ``tool_result`` checkpoint's output text. None otherwise.
    """
    for m in messages:
        if kind == "model" and m.get("role") == "assistant":
            calls = [
                {"name": (c.get("function") or {}).get("name"), "arguments": _arguments(c)}
                for c in m.get("tool_calls") or []
            ]
            reply = {"content": m.get("content") or "", **({"tool_calls": calls} if calls else {})}
            return {"reply": json.dumps(reply, indent=1, ensure_ascii=False)}
        if kind == "tool_result" and m.get("role") == "tool" and isinstance(m.get("content"), str):
            return {"output": m["content"]}
    return None


def _arguments(call: dict) -> Any:
    text = (call.get("function") or {}).get("arguments") or "{}"
    try:
        return json.loads(text)
    except ValueError:
        return text
