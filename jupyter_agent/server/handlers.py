"""REST handlers under ``/jupyter-agent/api``.

Every verb is authenticated, every parameter is checked before the store is
touched (400; an agent name outside the ``--name`` rule is looked up among the
notebook's agents first, see :meth:`BaseHandler.agent_params`), and every error
is JSON. Store work runs on the extension's
worker thread, never on the IOLoop.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from ..errors import AgentBusy, Conflict, NotFound, NotWaiting, UsageProblem
from ..vocab import NAME_PATTERN

if TYPE_CHECKING:
    from . import AgentServer

API_PREFIX = "jupyter-agent/api"
RUN_ID_PATTERN = re.compile(r"^[0-9a-f]{8,64}$")
#: nbformat 4.5 cell ids.
CELL_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SEGMENT = r"(?P<{}>[^/]+)"


def valid_agent_name(name: str) -> bool:
    """``--name`` names, and the ``cell-<cell id>`` names of unnamed agents."""
    if NAME_PATTERN.match(name):
        return True
    return name.startswith("cell-") and bool(CELL_ID_PATTERN.match(name[5:]))


class BaseHandler(APIHandler):
    """Shared parameter checks and store access."""

    auth_resource = "contents"

    @property
    def agents(self) -> AgentServer:
        return self.settings["jupyter_agent"]

    def notebook_param(self) -> tuple[str, str]:
        """The ``notebook`` parameter (relative, as in the contents API) and its absolute path."""
        rel = self.get_query_argument("notebook", "")
        if not rel:
            raise web.HTTPError(400, "The 'notebook' parameter is required.")
        try:
            return rel, self.agents.absolute(rel)
        except ValueError as exc:
            raise web.HTTPError(400, str(exc)) from None

    async def agent_params(self, name: str) -> tuple[str, str, str]:
        """The notebook (relative and absolute, see :meth:`notebook_param`) and the agent name.

        A name must follow the ``--name`` rule, unless the notebook holds an agent of
        exactly that name (written before names were checked): every agent the API
        lists can be fetched and deleted.
        """
        rel, path = self.notebook_param()
        if not valid_agent_name(name) and name not in await self.call(self._held_names, path):
            raise web.HTTPError(
                400,
                f"Invalid agent name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit.",
            )
        return rel, path, name

    def _held_names(self, path: str) -> set[str]:
        return {a["name"] for a in self.agents.reader.agents_in_order(path)[0]}

    def run_id(self, run_id: str) -> str:
        if not RUN_ID_PATTERN.match(run_id):
            raise web.HTTPError(400, f"Invalid run id {run_id!r}.")
        return run_id

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a store query on the worker thread; map store errors to HTTP errors."""
        try:
            return await self.agents.call(fn, *args, **kwargs)
        except NotFound as exc:
            raise web.HTTPError(404, str(exc)) from None
        except (Conflict, NotWaiting, AgentBusy) as exc:
            raise web.HTTPError(409, str(exc)) from None

    def reply(self, payload: dict[str, Any]) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(payload))


class StatusHandler(BaseHandler):
    """``GET /status``: where the store is, and whether it exists (503: it cannot be reached)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(await self.call(self.agents.status))


class AgentsHandler(BaseHandler):
    """``GET /agents?notebook=P[&cell_id=C]``: the agents of a notebook and their status."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        rel, path = self.notebook_param()
        cell_id = self.get_query_argument("cell_id", None)
        if cell_id is not None and not CELL_ID_PATTERN.match(cell_id):
            raise web.HTTPError(400, f"Invalid cell id {cell_id!r}.")
        agents, as_of = await self.call(self.agents.reader.agents_as_of, path)
        if cell_id is not None:
            agents = [a for a in agents if a["cell_id"] == cell_id]
        reply = {
            "notebook": rel,
            "agents": agents,
            "running": any(a["status"] == "running" for a in agents),
        }
        if as_of is not None:  # a kernel holds the store: what it held then, plus the journals
            reply["as_of"] = as_of
        self.reply(reply)


class AgentHandler(BaseHandler):
    """``GET /agents/NAME?notebook=P``: one agent; ``DELETE`` removes it (``keep=latest`` prunes)."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        rel, path, name = await self.agent_params(name)
        self.reply({"notebook": rel, **await self.call(self.agents.reader.agent, path, name)})

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        rel, path, name = await self.agent_params(name)
        keep = self.get_query_argument("keep", "")
        if keep not in ("", "latest"):
            raise web.HTTPError(400, "The 'keep' parameter can only be 'latest'.")
        reader = self.agents.reader
        deleted = await self.call(reader.delete_agent, path, name, keep_latest=bool(keep))
        self.reply({"notebook": rel, "name": name, "deleted": deleted})


class AgentRunsHandler(BaseHandler):
    """``GET /agents/NAME/runs?notebook=P``: every run of an agent."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        rel, path, name = await self.agent_params(name)
        runs = await self.call(self.agents.reader.runs, path, name)
        self.reply({"notebook": rel, "name": name, "runs": runs})


class AgentCellsHandler(BaseHandler):
    """``GET /agents/NAME/cells?notebook=P``: the python calls of an agent's latest run as
    nbformat code cells with their outputs (secrets redacted), for below its cell."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        rel, path, name = await self.agent_params(name)
        self.reply({"notebook": rel, **await self.call(self.agents.reader.cells, path, name)})


class DecisionHandler(BaseHandler):
    """``POST /agents/NAME/decision?notebook=P``: approve, edit or reject the call it waits on.

    The body is ``{"action": "approve"|"edit"|"reject", "call_id": ..., "code": ...,
    "note": ...}``; ``call_id`` (the call as the asker saw it) guards against
    answering a call that is no longer pending. 409 with the reason when the agent
    waits on no call, on another, or runs now; the answer is applied when it next runs.
    """

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        from ..loop.decisions import decision_of  # the loop loads only when an answer is given

        rel, path, name = await self.agent_params(name)
        try:
            body = json.loads(self.request.body or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
            decision = decision_of(
                str(body.get("action", "")), code=body.get("code"), note=body.get("note")
            )
        except (ValueError, UsageProblem) as exc:
            raise web.HTTPError(400, f"Invalid decision: {exc}") from None
        call_id = body.get("call_id")
        if call_id is not None and not isinstance(call_id, str):
            raise web.HTTPError(400, "Invalid decision: 'call_id' must be a string.")
        stored = await self.call(self.agents.decide, path, name, decision, call_id)
        self.reply({"notebook": rel, "name": name, **stored})


class JobsHandler(BaseHandler):
    """``GET /jobs[?notebook=P]``: the worker pool's queued, running and failed jobs.

    Those of the server's store (on a team store, of its user's role); none where
    DBOS or the queue is absent (``jupyter agent submit`` makes the queue).
    """

    @web.authenticated
    @authorized
    async def get(self) -> None:
        from ..store import queue  # only here: the server's import stays light

        path = self.notebook_param()[1] if self.get_query_argument("notebook", "") else None
        jobs = await self.call(queue.unfinished_jobs, self.agents.store, path)
        shown = []
        for job in jobs:  # a notebook outside the server's root is not the server's to show
            if rel := self.agents.relative(job["notebook"] or ""):
                shown.append({**job, "notebook": rel})
        self.reply({"jobs": shown})


class RunHandler(BaseHandler):
    """``GET /runs/RUN[?messages=1]`` (and ``/runs/RUN/checkpoints``): a run, its checkpoints'
    metadata and, with ``messages=1``, the messages each added (secrets redacted)."""

    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        flag = self.get_query_argument("messages", "0")
        if flag not in ("0", "1"):
            raise web.HTTPError(400, "The 'messages' parameter can only be 0 or 1.")
        run, notebook = await self.call(
            self.agents.reader.run, self.run_id(run_id), messages=flag == "1"
        )
        self.reply({"notebook": self.agents.relative(notebook), **run})


def handlers(base_url: str) -> list[tuple[str, type[BaseHandler]]]:
    from jupyter_server.utils import url_path_join

    def route(*parts: str) -> str:
        return url_path_join(base_url, API_PREFIX, *parts)

    return [
        (route("status"), StatusHandler),
        (route("agents"), AgentsHandler),
        (route("agents", _SEGMENT.format("name")), AgentHandler),
        (route("agents", _SEGMENT.format("name"), "runs"), AgentRunsHandler),
        (route("agents", _SEGMENT.format("name"), "cells"), AgentCellsHandler),
        (route("agents", _SEGMENT.format("name"), "decision"), DecisionHandler),
        (route("jobs"), JobsHandler),
        (route("runs", _SEGMENT.format("run_id")), RunHandler),
        (route("runs", _SEGMENT.format("run_id"), "checkpoints"), RunHandler),
    ]
