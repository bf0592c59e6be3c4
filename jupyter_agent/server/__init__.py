"""The Jupyter Server extension: agent status over REST, before any kernel runs.

Enabled on install by ``jupyter-config/server-config/jupyter_agent.json``. It
reads checkpoint *metadata* from the same store the kernels write, through
the store interface (:mod:`jupyter_agent.store.api`), and never deserializes a
variable's value. What it answers are the rows ``%agent list`` and ``jupyter
agent list`` show too (:mod:`jupyter_agent.views.listing`); the handlers only
check parameters and turn those rows into JSON. DuckDB work runs on one worker
thread. While a kernel holds the store, the agents of a notebook are the last
answer brought up to date from the journals (see
:mod:`jupyter_agent.store.duckdb.stale`) after a short wait; other requests wait up to
``busy_timeout`` and answer 503 if it stays busy. The server never holds the
store long enough to make a kernel wait.

It also follows notebook renames and moves made through the contents API, so a
renamed notebook keeps its agents (see docs/server.md).
"""

from __future__ import annotations

import asyncio
import functools
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tornado import web
from traitlets import Float, Unicode
from traitlets.config import LoggingConfigurable

from .. import __version__
from ..errors import StoreBusy, StoreError, StoreUnavailable
from ..store.open import open_store
from ..views.listing import Reader
from .handlers import handlers

CONTENTS_EVENTS = "https://events.jupyter.org/jupyter_server/contents_service/v1"


class AgentServer(LoggingConfigurable):
    """Serves the agent store to JupyterLab. Configure as ``c.AgentServer.<trait>``."""

    store_path = Unicode(
        "",
        help="The agent store: a DuckDB file or a postgresql:// URL. Default: "
        "$JUPYTER_AGENT_STORE, else <Jupyter data dir>/jupyter_agent/agents.duckdb, as in kernels.",
    ).tag(config=True)
    busy_timeout = Float(
        2.0, help="Seconds to wait for a store another process holds before answering 503."
    ).tag(config=True)

    def __init__(self, root_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root_dir = os.path.abspath(root_dir)
        target: str | None = self.store_path or None
        if target and "://" not in target:
            target = str(Path(target).expanduser().absolute())
        self.store = open_store(target, busy_timeout=self.busy_timeout)
        self.reader = Reader(self.store)
        # One thread: DuckDB work is serialized, and the IOLoop never waits on it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jupyter-agent")
        self._pending_moves: list[tuple[str, str]] = []

    # -- paths ----------------------------------------------------------------------

    def absolute(self, rel: str) -> str:
        """The absolute path of a contents-API path, as kernels store it; ValueError if unsafe."""
        if "\\" in rel or "\0" in rel:
            raise ValueError(f"Invalid notebook path {rel!r}.")
        if rel.startswith("/") or posixpath.isabs(rel) or (len(rel) > 1 and rel[1] == ":"):
            raise ValueError(
                f"The notebook path {rel!r} must be relative to the server root, "
                "as in the contents API."
            )
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ValueError(f"The notebook path {rel!r} must not contain '..'.")
        if not parts:
            raise ValueError("The 'notebook' parameter is empty.")
        return os.path.join(self.root_dir, *parts)

    def relative(self, path: str) -> str | None:
        """The contents-API path of an absolute notebook path, or None outside the root."""
        root = self.root_dir.rstrip(os.sep) + os.sep
        if not path.startswith(root):
            return None
        return path[len(root) :].replace(os.sep, "/")

    # -- running store work ---------------------------------------------------------------

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the worker thread; 503 if the store stays busy."""
        loop = asyncio.get_running_loop()
        job = functools.partial(self._with_moves, fn, *args, **kwargs)
        future = loop.run_in_executor(self._executor, job)
        try:
            # Queued requests share the thread: bound the total wait, not just the open.
            return await asyncio.wait_for(asyncio.shield(future), self.busy_timeout + 3)
        except (StoreBusy, asyncio.TimeoutError):
            raise web.HTTPError(
                503,
                f"The agent store is busy (another process holds {self.store.location}); try again.",
            ) from None
        except StoreUnavailable as exc:  # the database server is down: a client waits it out
            raise web.HTTPError(503, str(exc)) from None
        except StoreError as exc:
            raise web.HTTPError(500, str(exc)) from None

    def _with_moves(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Apply renames that could not be recorded yet, then ``fn`` (worker thread only)."""
        while self._pending_moves:
            old, new = self._pending_moves[0]
            moved = self.store.move_notebook(old, new)
            self.reader.last_good.forget()
            self._pending_moves.pop(0)
            self.log.info("jupyter-agent: %s moved to %s (%d runs)", old, new, moved)
        return fn(*args, **kwargs)

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "store": self.store.location,
            "exists": self.store.exists(),
            "root_dir": self.root_dir,
        }

    def decide(
        self, notebook: str, agent: str, decision: dict, call_id: str | None
    ) -> dict[str, Any]:
        """Store an answer to the call ``agent`` waits on (worker thread; see loop.decisions)."""
        from ..loop.decisions import decide  # the loop loads only when an answer is given

        stored = decide(self.store, notebook, agent, decision, call_id=call_id, source="rest")
        self.reader.last_good.forget()
        return stored

    # -- renames ----------------------------------------------------------------------------

    async def on_contents_event(self, logger: Any, schema_id: str, data: dict) -> None:
        """Record notebook and folder renames so agents follow their notebooks."""
        if data.get("action") != "rename" or not data.get("source_path"):
            return
        try:
            old = self.absolute(str(data["source_path"]))
            new = self.absolute(str(data["path"]))
        except ValueError:
            return
        if not self.reader.exists():
            return  # no agents anywhere yet
        if not (new.endswith(".ipynb") or os.path.isdir(new)):
            return
        loop = asyncio.get_running_loop()
        self._pending_moves.append((old, new))
        try:
            await loop.run_in_executor(self._executor, self._with_moves, lambda: None)
        except StoreError as exc:  # kept pending: applied before the next request
            self.log.warning("jupyter-agent: rename of %s recorded later: %s", old, exc)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _load_jupyter_server_extension(serverapp: Any) -> None:
    root = getattr(serverapp.contents_manager, "root_dir", None) or serverapp.root_dir
    ext = AgentServer(root, parent=serverapp, log=serverapp.log)
    web_app = serverapp.web_app
    web_app.settings["jupyter_agent"] = ext
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    event_logger = getattr(serverapp, "event_logger", None)
    if event_logger is not None:
        event_logger.add_listener(schema_id=CONTENTS_EVENTS, listener=ext.on_contents_event)
    serverapp.log.info("jupyter-agent: serving agent status from %s", ext.store.location)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "jupyter_agent.server"}]
