"""Serve a scripted (or the offline) model from the command line.

Handy for trying the agent against a fixed conversation, or pointing another
OpenAI client at it: ``python -m jupyter_agent.testing --script script.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from .server import ScriptedServer


def _load_script(path: str) -> list[dict[str, Any]]:
    """Accept either a bare JSON list or ``{"script": [...]}``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = data.get("script")
    if not isinstance(data, list):
        raise SystemExit(f"{path}: expected a JSON list of entries or {{'script': [...]}}")
    return data


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start the server and block until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m jupyter_agent.testing",
        description="OpenAI-compatible scripted chat server for tests and demos.",
    )
    parser.add_argument(
        "--script", help="JSON file with the script; without it, serve the offline demo model"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument(
        "--fault-delay", type=float, default=30.0, help="seconds a 'timeout' fault stalls"
    )
    parser.add_argument(
        "--context-window", type=int, default=None, help="refuse prompts longer (in tokens)"
    )
    parser.add_argument("--verbose", action="store_true", help="log each HTTP request")
    args = parser.parse_args(argv)

    if args.script:
        script: Any = _load_script(args.script)
    else:
        from ..model.offline import offline_reply

        script = offline_reply
    server = ScriptedServer(
        script,
        host=args.host,
        port=args.port,
        chunk_delay=args.chunk_delay,
        fault_delay=args.fault_delay,
        verbose=args.verbose,
        context_window=args.context_window,
    ).start()
    try:
        print(server.url, flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
