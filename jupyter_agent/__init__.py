"""Durable, resumable LLM agent cells for Jupyter.

``%load_ext jupyter_agent`` registers the ``%%agent`` cell magic and the
``%agent`` line magic. To load it in every kernel, add ``"jupyter_agent"`` to
``c.InteractiveShellApp.extensions`` in your IPython config.

``from jupyter_agent import tool``: ``@tool`` offers a notebook function to the
agents as a tool (see :mod:`jupyter_agent.tools.user`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_ipython_extension", "tool"]


def __getattr__(name: str) -> Any:
    if name == "tool":  # imported on first use: `import jupyter_agent` stays light
        from .tools.user import tool

        return tool
    raise AttributeError(f"module 'jupyter_agent' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    from .kernel.magics import AgentMagics
    from .model.http import warm_up

    ipython.register_magics(AgentMagics(shell=ipython))
    warm_up()


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "jupyter_agent.server"}]


def _jupyter_labextension_paths() -> list[dict]:
    return [{"src": "labextension", "dest": "jupyter-agent"}]
