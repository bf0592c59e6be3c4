"""Durable, resumable LLM agent cells for Jupyter.

``%load_ext jupyter_agent`` registers the ``%%agent`` cell magic and the
``%agent`` line magic. To load it in every kernel, add ``"jupyter_agent"`` to
``c.InteractiveShellApp.extensions`` in your IPython config.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    from .magics import AgentMagics

    ipython.register_magics(AgentMagics(shell=ipython))


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "jupyter_agent.server"}]


def _jupyter_labextension_paths() -> list[dict]:
    return [{"src": "labextension", "dest": "jupyter-agent"}]
