"""A small MCP server for the tests, written with the SDK's FastMCP (``MCPServer`` in mcp 2).

``python tests/mcp_server.py LOG [--http PORT]``: every call appends
``<tool> start`` and ``<tool> done`` lines to LOG, so tests can count how often
each call ran and whether it finished; while a file ``LOG.slow`` exists, calls
sleep 30 s in between (long enough to kill the kernel mid-call). The server
logs ``stopped`` when it shuts down.
"""

from __future__ import annotations

import argparse
import os
import time

try:
    from mcp.server.mcpserver import MCPServer as FastMCP
except ImportError:  # mcp 1
    from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations

parser = argparse.ArgumentParser()
parser.add_argument("log")
parser.add_argument("--http", type=int, default=0)
options = parser.parse_args()
app = FastMCP("reports")


def logged(line: str) -> None:
    with open(options.log, "a") as f:
        f.write(line + "\n")


def work(tool: str) -> None:
    logged(f"{tool} start")
    if os.path.exists(options.log + ".slow"):
        time.sleep(30)
    logged(f"{tool} done")


@app.tool()
def send_report(text: str) -> str:
    """Send a report to the team (not idempotent: each call sends one)."""
    work("send_report")
    return f"sent: {text}"


@app.tool(annotations=ToolAnnotations(idempotentHint=True))
def lookup(key: str) -> str:
    """Look a key up (idempotent)."""
    work("lookup")
    return f"{key} = {len(key)}"


@app.tool()
def fail(reason: str) -> str:
    """Always fails."""
    raise ValueError(reason)


if __name__ == "__main__":
    if options.http:
        app.run("streamable-http", host="127.0.0.1", port=options.http)
    else:
        app.run()
    logged("stopped")
