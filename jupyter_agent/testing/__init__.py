"""Test helpers: a deterministic OpenAI-compatible server with fault injection."""

from jupyter_agent.testing.server import ScriptedServer

__all__ = ["ScriptedServer"]
