"""Rich results: what a python call displays, as MIME bundles, the way a cell shows it.

A call's last value goes through IPython's display formatter (a DataFrame's
HTML table, an image, any object's ``_repr_*_``) and the figures it left open
are displayed, live in the cell. The same bundles, as nbformat outputs, are
kept with the call's checkpoint so that a restored cell shows them again and
its code can become cells with the outputs it had. Only their ``text/plain``
form is ever sent to the model (see :func:`jupyter_agent.tools.python.run_python`).

What a checkpoint keeps is bounded (:func:`cap`): every output keeps its
``text/plain``; other MIME types are kept in order while they fit in the
setting's bytes, and what does not fit is dropped and said.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..config import RICH_OUTPUT_BYTES
from ..core.redaction import redact
from .base import clip

__all__ = [
    "RICH_OUTPUT_BYTES",
    "cap",
    "dropped",
    "figure_outputs",
    "publish",
    "shown",
    "value_output",
]

#: The MIME types a notebook shows as text; the fallback every output keeps.
PLAIN = "text/plain"


def value_output(shell: Any, value: Any) -> dict:
    """The last value of a call as a cell's ``execute_result`` (its bundle and metadata)."""
    formatter = getattr(shell, "display_formatter", None)
    data: dict = {}
    metadata: dict = {}
    if formatter is not None:
        try:
            data, metadata = formatter.format(value)
        except Exception:  # a broken _repr_*_ must not lose the call's text
            data, metadata = {}, {}
    if PLAIN not in data:
        data = {**data, PLAIN: repr(value)}
    return {"output_type": "execute_result", "data": data, "metadata": metadata}


def figure_outputs(shell: Any) -> list[dict]:
    """The matplotlib figures the code left open, as ``display_data``, then closed (as a cell does)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None or not plt.get_fignums():
        return []
    outputs = []
    for num in plt.get_fignums():
        out = value_output(shell, plt.figure(num))
        outputs.append({**out, "output_type": "display_data"})
    plt.close("all")
    return outputs


#: Each thread's list of what its code displays, while :func:`displays` collects.
_collecting = threading.local()
#: A widget's output needs its live model: it cannot be shown again from a checkpoint.
_WIDGET = "application/vnd.jupyter.widget-view+json"


@contextmanager
def displays(shell: Any, secrets: list[str]) -> Iterator[list[dict]]:
    """Collect what this thread's code shows with ``display()``; it is shown with ``secrets``
    redacted in its text, like everything else an agent shows."""
    pub = getattr(shell, "display_pub", None)
    if pub is not None and not getattr(pub, "_jupyter_agent_collects", False):
        original = pub.publish

        def publish(data: dict, metadata: dict | None = None, *args: Any, **kwargs: Any) -> Any:
            into = getattr(_collecting, "outputs", None)
            if into is not None:  # this thread runs an agent's code
                data = redact(data, _collecting.secrets) if _collecting.secrets else data
                if not kwargs.get("update") and _WIDGET not in data:
                    out = {"data": dict(data), "metadata": dict(metadata or {})}
                    into.append({"output_type": "display_data", **out})
            return original(data, metadata, *args, **kwargs)

        pub.publish = publish
        pub._jupyter_agent_collects = True
    previous = getattr(_collecting, "outputs", None), getattr(_collecting, "secrets", [])
    collected: list[dict] = []
    _collecting.outputs, _collecting.secrets = collected, secrets
    try:
        yield collected
    finally:
        _collecting.outputs, _collecting.secrets = previous


def publish(shell: Any, output: dict, secrets: list[str]) -> None:
    """Show one output live in the cell, its text redacted like everything an agent shows."""
    data = redact(output["data"], secrets) if secrets else output["data"]
    pub = getattr(shell, "display_pub", None)
    if pub is None:
        print(data.get(PLAIN, ""))
        return
    pub.publish(data=data, metadata=output.get("metadata") or {})


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(json.dumps(value, default=str))


def cap(outputs: list[dict], limit: int) -> tuple[list[dict], list[tuple[str, str]]]:
    """The outputs as a checkpoint keeps them, and (MIME type, why) for each one dropped.

    ``text/plain`` is always kept (clipped as the model's text is); the other
    types are kept in order while their total stays within ``limit`` bytes.
    A dropped one is noted in its output's metadata (:func:`dropped`), so a
    restored cell can say what it cannot show.
    """
    kept: list[dict] = []
    notes: list[tuple[str, str]] = []
    used = 0
    for out in outputs:
        data: dict = {}
        lost = []
        for mime, value in out.get("data", {}).items():
            if mime == PLAIN:
                continue
            size = _size(value)
            if used + size <= limit:
                data[mime] = value
                used += size
            else:
                why = f"{size:,} bytes, over the limit of {limit:,} (AgentMagics.rich_output_bytes)"
                lost.append((mime, why))
        data[PLAIN] = clip(str(out.get("data", {}).get(PLAIN, "")))
        metadata = dict(out.get("metadata") or {})
        if lost:
            metadata[_DROPPED] = [f"{mime} was not saved: {why}" for mime, why in lost]
            notes += lost
        kept.append({**out, "data": data, "metadata": metadata})
    return kept, notes


#: The metadata key of an output's notes on what :func:`cap` dropped.
_DROPPED = "jupyter_agent_dropped"


def dropped(output: dict) -> list[str]:
    """What :func:`cap` left out of a saved output, in words."""
    return list((output.get("metadata") or {}).get(_DROPPED) or [])


def is_plain(output: dict) -> bool:
    """Whether an output has a text form only (a value shown as printed text)."""
    return set(output.get("data") or {}) <= {PLAIN}


def shown(outputs: list[dict] | None) -> list[dict]:
    """The outputs a restored cell shows again: displays and rich values, not printed text."""
    return [
        o
        for o in outputs or []
        if o.get("output_type") == "display_data"
        or (o.get("output_type") == "execute_result" and not is_plain(o))
    ]
