"""The tools of one execution, and the checks of the tool options of a cell.

The one module that knows every kind of tool: ``python`` (:mod:`.python`), the
notebook's functions (:mod:`.user`) and MCP servers' tools (:mod:`.mcp`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from typing import Any

from ..errors import ToolError
from . import mcp as mcp_tools
from . import user as user_tools
from .base import Tool
from .python import TOOLS, python_tool
from .rich import RICH_OUTPUT_BYTES


class Toolbox:
    """The tools of one execution: ``python``, the run's user tools and MCP tools.

    Opened when the execution starts (functions are looked up in the namespace
    then, MCP servers started) and closed when it ends (servers stopped).
    """

    def __init__(self, tools: list[Tool], closers: list[Callable[[], None]] | None = None) -> None:
        self.tools = {t.name: t for t in tools}
        self._closers = closers or []

    @classmethod
    def open(
        cls,
        shell: Any,
        names: list[str],
        servers: list[str],
        config: dict,
        cancel: threading.Event | None = None,
        rich_bytes: int = RICH_OUTPUT_BYTES,
    ) -> Toolbox:
        """Resolve ``names`` in the namespace and start ``servers``; :class:`ToolError` if not."""
        functions = [replace(t, in_kernel=True) for t in user_tools.resolve(shell.user_ns, names)]
        box = cls([python_tool(shell, rich_bytes), *functions])
        if servers:
            try:
                for server in mcp_tools.start(servers, config, cancel):
                    box._closers.append(server.close)
                    box.tools.update((t.name, t) for t in server.tools)
            except BaseException:
                box.close()
                raise
        return box

    def get(self, name: str | None) -> Tool | None:
        return self.tools.get(name or "")

    def names(self) -> list[str]:
        """Every tool the model may call, ``update_plan`` included."""
        return [*(t["function"]["name"] for t in TOOLS), *(n for n in self.tools if n != "python")]

    def schemas(self) -> list[dict]:
        """What the model is offered: the built-in tools, then the user's and servers'."""
        extra = [t.schema for n, t in self.tools.items() if n != "python"]
        return [*TOOLS, *extra]

    def close(self) -> None:
        for close in reversed(self._closers):
            with suppress(Exception):
                close()
        self._closers.clear()


def check_approve(
    approve: tuple[str, ...], known: list[str], servers: tuple[str, ...] = ()
) -> None:
    """``--approve`` names must be tools; ``SERVER__…`` names wait for the server's list."""
    for name in approve:
        if name in known or any(name.startswith(f"{s}__") for s in servers):
            continue
        raise ToolError(f"--approve: unknown tool {name!r}; the tools are: {', '.join(known)}.")
