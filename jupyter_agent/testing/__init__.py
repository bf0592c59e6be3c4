"""Test helpers: a deterministic OpenAI-compatible server with fault injection."""

import threading

from ..model.offline import offline_reply
from .server import ScriptedServer

__all__ = ["ScriptedServer", "offline_base_url"]

_lock = threading.Lock()
_server: ScriptedServer | None = None


def offline_base_url() -> str:
    """Base URL of a server answering as the offline model (one per process), for HTTP tests."""
    global _server
    with _lock:
        if _server is None:
            _server = ScriptedServer(script=offline_reply, host="127.0.0.1", port=0).start()
        return _server.url
