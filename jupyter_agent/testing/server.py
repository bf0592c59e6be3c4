"""A deterministic, OpenAI-compatible chat server driven by a script.

Tests, benchmarks and the offline demo model need an LLM endpoint that answers
the same way every time and can inject failures (rate limits, dropped streams,
timeouts, garbage) on demand. This module serves one using only the standard
library; what it sends is the wire format of :mod:`.wire`, which the official
``openai`` client expects, and on ``/v1/responses`` and ``/v1/messages`` that of
the OpenAI Responses API (:mod:`.responses_wire`) and of Anthropic's Messages
API (:mod:`.anthropic_wire`), from the same script.

The reply to a request is picked by its *turn*: the number of assistant
messages already in the conversation, plus N for every message saying
``[N earlier model replies summarized]`` (a compacted history keeps its turn).
A request re-issued after a crash therefore gets the same reply as the
original, which is what makes resume-after-crash tests deterministic.

Like a real endpoint, the server can refuse a prompt longer than its
``context_window`` (OpenAI's 400 ``context_length_exceeded``), and it answers a
compaction request (no tools, first message a system message starting with
:data:`~.wire.SUMMARY_PROMPT_PREFIX`) with a deterministic summary, outside the script.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import socketserver
import sys
import threading
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

from . import anthropic_wire
from .handler import ChatHandler
from .replay import Replay
from .wire import (
    PromptCache,
    ScriptedReply,
)

__all__ = ["ScriptedServer"]


class _HTTPServer(ThreadingHTTPServer):
    """Threading server that never blocks shutdown on in-flight handlers."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], owner: ScriptedServer) -> None:
        self.owner = owner
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, ChatHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup, which can stall for
        # seconds on hosts with broken resolvers; the name is not needed here.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (timeouts, drops) are expected here, not errors.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


@dataclass(eq=False)
class ScriptedServer(Replay):
    """OpenAI-compatible chat endpoint that replays a script, with fault injection.

    Use as a context manager, pass ``server.url`` as the client's ``base_url``,
    and inspect ``server.requests`` afterwards (:class:`~.replay.Replay`). The settings may be changed
    while it serves; each request reads them as it comes.
    """

    _: dataclasses.KW_ONLY
    host: str = "127.0.0.1"
    #: 0 picks a free port, known once started.
    port: int = 0
    #: Seconds between the chunks of a stream.
    chunk_delay: float = 0.0
    #: Seconds a ``timeout`` fault stalls, unless its entry says otherwise.
    fault_delay: float = 30.0
    #: Log each HTTP request to stderr.
    verbose: bool = False
    #: Prompt tokens (:func:`~.wire.prompt_tokens`) beyond which a request is refused.
    context_window: int | None = None
    #: Answer streaming requests with a plain JSON completion (no SSE at all).
    stream_json: bool = False
    #: Refuse any request carrying ``stream_options`` with a 400, as older servers do.
    reject_stream_options: bool = False
    #: Send ``usage`` when asked; False: never, as some mock servers and proxies do.
    send_usage: bool = True
    #: Simulate OpenAI's automatic prompt cache (:class:`~.wire.PromptCache`): usage
    #: reports ``prompt_tokens_details.cached_tokens``; False: no cache, no details.
    prompt_cache: bool = True
    #: The usage of every reply built, in order, with its ``turn`` (-1: a summary):
    #: what the endpoint bills, cached tokens included, whatever the client reads of it.
    usage_log: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)
    _cache: PromptCache = field(default_factory=PromptCache, init=False, repr=False)
    #: Anthropic's prompt cache, simulated: the prefixes written so far.
    anthropic_cache: anthropic_wire.PromptCache = field(
        default_factory=anthropic_wire.PromptCache, init=False, repr=False
    )
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _conns: set[socket.socket] = field(default_factory=set, init=False, repr=False)
    _httpd: _HTTPServer | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    # -- lifecycle --------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL to hand to an OpenAI client, e.g. ``http://127.0.0.1:PORT/v1``."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    def start(self) -> ScriptedServer:
        """Bind and serve in a daemon thread; returns self for chaining."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _HTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"ScriptedServer:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers and cut open connections."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals used by the handler ------------------------------------

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _served(self, reply: ScriptedReply, messages: list[Any], tools: Any, turn: int) -> None:
        """Log ``reply``'s usage, with what the simulated prompt cache serves of the request."""
        prompt = reply.usage.get("prompt_tokens")
        with self._lock:
            if self.prompt_cache:
                cached = self._cache.read(messages, tools, prompt if isinstance(prompt, int) else 0)
                reply.usage["prompt_tokens_details"] = {"cached_tokens": cached}
            self.usage_log.append({"turn": turn, **reply.usage})

    def _sleep(self, seconds: float) -> None:
        """Sleep that ends early when the server stops."""
        if seconds > 0:
            self._stopping.wait(seconds)
