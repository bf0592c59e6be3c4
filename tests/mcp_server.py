"""A small MCP server for the tests, written with the SDK's FastMCP (``MCPServer`` in mcp 2).

``python tests/mcp_server.py LOG [--slow SECONDS] [--http PORT]``: every call
appends ``<tool> start`` and ``<tool> done`` lines to LOG, so tests can count
how often each call ran and whether it finished; ``send_report`` sleeps
``--slow`` seconds in between (long enough to kill the kernel mid-call).
"""

from __future__ import annotations

import argparse
import time

try:
    from mcp.server.mcpserver import MCPServer as FastMCP
except ImportError:  # mcp 1
    from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations

parser = argparse.ArgumentParser()
parser.add_argument("log")
parser.add_argument("--slow", type=float, default=0.0)
parser.add_argument("--http", type=int, default=0)
options = parser.parse_args()
app = FastMCP("reports")


def logged(line: str) -> None:
    with open(options.log, "a") as f:
        f.write(line + "\n")


@app.tool()
def send_report(text: str) -> str:
    """Send a report to the team (not idempotent: each call sends one)."""
    logged("send_report start")
    time.sleep(options.slow)
    logged("send_report done")
    return f"sent: {text}"


@app.tool(annotations=ToolAnnotations(idempotentHint=True))
def lookup(key: str) -> str:
    """Look a key up (idempotent)."""
    logged("lookup start")
    time.sleep(options.slow)
    logged("lookup done")
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
