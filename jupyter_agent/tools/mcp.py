"""MCP servers' tools, through the official ``mcp`` SDK: ``%%agent --mcp NAME``.

Servers are configured in ``c.AgentMagics.mcp_servers`` in the shape Claude
Desktop and VS Code use: ``{"name": {"command": ..., "args": [...], "env":
{...}}}`` for a stdio server, ``{"name": {"url": ..., "headers": {...}}}`` for
streamable HTTP. Their tools are offered as ``NAME__tool``.

A server is ephemeral: started when an execution opens its tools, stopped
when the execution ends, started again by the next one (after a kernel
restart too). The SDK is async and the kernel's own event loop is busy running
the cell, so each server's session lives on a private thread with its own
loop (an anyio blocking portal); the agent's thread waits on each call, and
Ctrl-C still interrupts that wait.

A call has a time limit, ``"call_timeout"`` in the server's configuration
(seconds, default :data:`CALL_TIMEOUT`): a call that gets no answer by then
pauses the run like ``%agent pause`` (:class:`CallTimedOut`), and the call runs
again, or asks first, when the agent resumes. Pausing works during a call too,
and the servers still open when the kernel's process exits are stopped then;
a kernel that is killed takes its stdio servers with it (:func:`dying_with_kernel`).
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import AsyncIterator
from concurrent import futures
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from typing import Any

from ..errors import CallTimedOut, Cancelled, ToolError
from .base import Tool, ToolResult, clip, function_schema, json_arguments

#: Seconds a server has to start and answer ``initialize`` and ``tools/list``.
START_TIMEOUT = 30.0
#: Seconds a ``tools/call`` may take unless the server's ``"call_timeout"`` says otherwise.
CALL_TIMEOUT = 300.0
#: How often a waiting call looks whether the agent was paused.
_POLL = 0.1
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
SEPARATOR = "__"


def server_spec(name: str, config: dict) -> dict:
    """The configuration of server ``name``, checked; :class:`ToolError` saying what is wrong."""
    where = "c.AgentMagics.mcp_servers"
    if name not in config:
        known = ", ".join(sorted(config)) or "none"
        raise ToolError(f"--mcp: unknown MCP server {name!r}; configured in {where}: {known}.")
    if not _NAME.match(name):
        raise ToolError(
            f"MCP server {name!r}: a server name has 1 to 40 letters, digits, '_' or '-'."
        )
    spec = config[name]
    if not isinstance(spec, dict) or bool(spec.get("command")) == bool(spec.get("url")):
        raise ToolError(
            f'{where}[{name!r}] needs either "command" (a stdio server, with optional "args" '
            'and "env") or "url" (a streamable HTTP server).'
        )
    limits = {}
    for key, default in (("timeout", START_TIMEOUT), ("call_timeout", CALL_TIMEOUT)):
        value = default if spec.get(key) is None else spec[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ToolError(f'{where}[{name!r}]: "{key}" is a number of seconds above 0.')
        limits[key] = float(value)
    if spec.get("command"):
        args, env = spec.get("args") or [], spec.get("env") or {}
        if not isinstance(spec["command"], str) or not isinstance(args, list):
            raise ToolError(f'{where}[{name!r}]: "command" is a string and "args" a list.')
        if not isinstance(env, dict):
            raise ToolError(f'{where}[{name!r}]: "env" is a mapping of names to values.')
        return {
            "command": spec["command"],
            "args": [str(a) for a in args],
            "env": {str(k): str(v) for k, v in env.items()},
            "cwd": spec.get("cwd"),
            **limits,
        }
    return {
        "url": str(spec["url"]),
        "headers": {str(k): str(v) for k, v in (spec.get("headers") or {}).items()},
        **limits,
    }


def check_servers(names: tuple[str, ...] | list[str], config: dict) -> None:
    for name in names:
        server_spec(name, config)


def start(names: list[str], config: dict, cancel: threading.Event | None = None) -> list[Server]:
    """Start the servers named; all or none (a failure stops those already started).

    ``cancel``: the execution's pause event, which a waiting call watches."""
    started: list[Server] = []
    try:
        for name in names:
            started.append(Server(name, server_spec(name, config), cancel))
    except BaseException:
        for server in started:
            server.close()
        raise
    return started


class Server:
    """One running MCP server and its session, on a private thread and event loop."""

    def __init__(self, name: str, spec: dict, cancel: threading.Event | None = None) -> None:
        import anyio.from_thread

        self.name = name
        self.call_timeout: float = spec["call_timeout"]
        self._cancel = cancel or threading.Event()
        self._stack = ExitStack()
        _open.add(self)  # from here on, stopped at the latest when the process exits
        self._errlog = self._stack.enter_context(tempfile.TemporaryFile("w+"))  # noqa: SIM115
        try:
            self._portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal())
            self._session = self._stack.enter_context(
                self._portal.wrap_async_context_manager(_session(spec, self._errlog))
            )
            listed = self._portal.call(self._list_tools, spec["timeout"])
        except BaseException as exc:
            reason = self._reason(exc)
            self.close()
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise ToolError(f"MCP server {name!r} failed to start: {reason}") from None
        self.tools = [self._tool(t) for t in listed]

    async def _list_tools(self, timeout: float) -> list[dict]:
        import anyio

        tools: list[dict] = []
        cursor = None
        with anyio.fail_after(timeout):
            while True:
                page = await (
                    self._session.list_tools(cursor=cursor)
                    if cursor
                    else self._session.list_tools()
                )
                tools += [_plain(t) for t in page.tools]
                cursor = getattr(page, "next_cursor", None) or getattr(page, "nextCursor", None)
                if not cursor:
                    return tools

    def _tool(self, listed: dict) -> Tool:
        original = listed["name"]
        room = 64 - len(self.name) - len(SEPARATOR)
        name = self.name + SEPARATOR + re.sub(r"[^A-Za-z0-9_-]", "_", original)[:room]
        annotations = listed.get("annotations") or {}
        description = listed.get("description") or annotations.get("title") or original
        parameters = listed.get("inputSchema") or {"type": "object", "properties": {}}
        return Tool(
            name,
            function_schema(name, description, parameters),
            run=lambda args: self.call(original, args),
            parse=lambda raw: json_arguments(raw, f"Send the arguments of {name} as an object."),
            idempotent=annotations.get("idempotentHint") is True,
        )

    def call(self, tool: str, args: dict) -> ToolResult:
        """Call ``tool``, waiting at most :attr:`call_timeout` and only while not paused.

        Pause and time-out raise (the call stays in flight, resumable); a call the
        server answers with an error, or a broken server, is a result the model reads.
        """
        future = self._portal.start_task_soon(self._session.call_tool, tool, args)
        deadline = time.monotonic() + self.call_timeout
        try:
            while not futures.wait([future], timeout=_POLL).done:
                if self._cancel.is_set():
                    raise Cancelled()
                if time.monotonic() > deadline:
                    raise CallTimedOut(
                        f"the MCP server {self.name!r} did not answer {tool} within "
                        f"{self.call_timeout:g} s (its call_timeout)"
                    )
            result = _plain(future.result())
        except (KeyboardInterrupt, Cancelled):
            future.cancel()
            raise
        except Exception as exc:
            return ToolResult(
                f"Error: the MCP server {self.name!r} failed: {self._reason(exc)}", error=True
            )
        return ToolResult(clip(result_text(result)), error=bool(result.get("isError")))

    def _reason(self, exc: BaseException) -> str:
        """One line: the innermost error, and the server's last line of stderr."""
        while getattr(exc, "exceptions", None):  # an anyio task group's ExceptionGroup
            exc = exc.exceptions[0]  # type: ignore[attr-defined]
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            text = "no answer in time"
        try:
            self._errlog.seek(0)
            last = [line.strip() for line in self._errlog.read().splitlines() if line.strip()]
        except (OSError, ValueError):
            last = []
        return text + (f" (stderr: {last[-1][:300]})" if last else "")

    def close(self) -> None:
        """Stop the server: end the session and transport, then the portal's thread."""
        _open.discard(self)
        self._stack.close()


#: Servers started and not yet stopped, stopped when the process exits: a server
#: must not outlive the kernel that started it.
_open: weakref.WeakSet[Server] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for server in list(_open):
        try:
            server.close()
        except BaseException:  # noqa: S112  (exiting: stop the others all the same)
            continue


@asynccontextmanager
async def _session(spec: dict, errlog: Any) -> AsyncIterator[Any]:
    import anyio
    from mcp import ClientSession

    async with AsyncExitStack() as stack:
        if "url" in spec:
            streams = await stack.enter_async_context(
                await _http_transport(stack, spec["url"], spec["headers"])
            )
        else:
            from mcp import StdioServerParameters, stdio_client

            command, args = dying_with_kernel(spec["command"], spec["args"], spec["env"])
            params = StdioServerParameters(
                command=command, args=args, env=spec["env"] or None, cwd=spec["cwd"]
            )
            streams = await stack.enter_async_context(stdio_client(params, errlog=errlog))
        session = await stack.enter_async_context(ClientSession(streams[0], streams[1]))
        with anyio.fail_after(spec["timeout"]):
            await session.initialize()
        yield session


#: Run by the kernel's Python before a stdio server on Linux: ask for SIGTERM when the
#: kernel dies (prctl PR_SET_PDEATHSIG, kept across exec), give up if it died already,
#: then become the server. argv: the kernel's pid, the server's command and arguments.
_LAUNCH = """import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.exit(f"{sys.argv[2]}: {exc.strerror}")
"""


def dying_with_kernel(command: str, args: list[str], env: dict) -> tuple[str, list[str]]:
    """The command line that starts a stdio server so that it ends when this kernel dies.

    The SDK starts a server in a session of its own and stops it when the execution
    ends, or at the kernel's exit; a kernel that is killed (SIGKILL, the OOM killer)
    does neither, and a server busy in a call does not read that its stdin closed.
    On Linux the server is therefore started through :data:`_LAUNCH`, which has the
    system send it SIGTERM when the kernel dies (the signal the SDK's own stop
    sends first). Elsewhere the command runs as it is. A command that cannot be
    found is refused here, as starting it would be.
    """
    if not sys.platform.startswith("linux"):
        return command, args
    path = env.get("PATH", os.environ.get("PATH", os.defpath))
    relative = os.sep in command and not os.path.isabs(command)  # to the server's cwd
    if not relative and shutil.which(command, path=path) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command)
    return sys.executable, ["-I", "-S", "-c", _LAUNCH, str(os.getpid()), command, *args]


async def _http_transport(stack: AsyncExitStack, url: str, headers: dict) -> Any:
    """The SDK's streamable HTTP client (``mcp`` 2 and 1 name it differently)."""
    from mcp.client import streamable_http

    if hasattr(streamable_http, "streamable_http_client"):
        client = None
        if headers:
            from mcp.shared._httpx_utils import create_mcp_http_client

            client = await stack.enter_async_context(create_mcp_http_client(headers=headers))
        return streamable_http.streamable_http_client(url, http_client=client)
    sdk_1: Any = streamable_http  # its name under mcp 1, unknown to a checker with mcp 2
    return sdk_1.streamablehttp_client(url, headers=headers or None)


def _plain(model: Any) -> dict:
    """An SDK object as its JSON (camelCase) form, the same under SDK 1 and 2."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def result_text(result: dict) -> str:
    """What the model reads of a ``tools/call`` result."""
    parts = []
    for block in result.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            parts.append(block.get("text") or "")
        elif kind == "resource":
            resource = block.get("resource") or {}
            parts.append(resource.get("text") or f"[resource {resource.get('uri', '')}]")
        elif kind == "resource_link":
            parts.append(f"[resource {block.get('uri', '')}]")
        else:  # image, audio: the model of a text tool result cannot see them
            parts.append(f"[{kind} {block.get('mimeType', '')}]".replace(" ]", "]"))
    if not parts and result.get("structuredContent") is not None:
        parts.append(json.dumps(result["structuredContent"], ensure_ascii=False))
    return "\n".join(parts)
