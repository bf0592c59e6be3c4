"""HTTP for the Chat Completions client, on the standard library alone.

A kernel has ``http.client``, ``ssl`` and ``json`` loaded before any cell runs,
while the ``openai`` SDK with httpx and pydantic takes most of a second to
import: a new agent's first model request would wait for it. So every Chat
Completions request goes through this one transport: HTTP/1.1 with keep-alive
connections kept per endpoint for the process (:func:`shared_pool`), replies
read whole or as server-sent events (:meth:`Response.events`), proxies taken
from the environment as httpx takes them (``HTTP(S)_PROXY``, ``ALL_PROXY``,
``NO_PROXY``; an ``https`` endpoint is reached through a ``CONNECT`` tunnel),
and the SSL context of :func:`~.http.ssl_context` (``SSL_CERT_FILE``).

Its failures are :class:`~jupyter_agent.errors.EndpointError` s, shaped like the
SDK's so that :mod:`.endpoint_errors` reads both: a lost or refused connection
is a :class:`TransportError`, silence past the timeout an :class:`EndpointTimeout`,
an error status a :class:`StatusError` carrying the response (its body read).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import re
import select
import socket
import ssl
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote, urlencode, urljoin, urlsplit

from .. import __version__
from ..errors import EndpointTimeout, ErrorEvent, StatusError, TransportError
from .http import sent, shared, ssl_context, unsent

#: Redirects followed: those that keep the method and body (a POST stays a POST).
_REDIRECTS = (307, 308)
_LINE_END = re.compile(rb"\r\n|\r|\n")
#: How much of a stream's tail is read after ``[DONE]`` to keep its connection.
_DRAIN = 1 << 16


def _failure(exc: BaseException) -> TransportError:
    """The transport error an exception of the socket, TLS or HTTP layer amounts to."""
    if isinstance(exc, TimeoutError):
        return EndpointTimeout("the request timed out")
    return TransportError(f"Connection error: {exc}" if str(exc) else type(exc).__name__)


class Response:
    """An endpoint's answer: status and headers, then the body whole or as events.

    Reading the body to its end gives the connection back to the pool; anything
    else (an error, a stop) closes it, in :meth:`close`.
    """

    def __init__(self, pool: Pool, origin: tuple, conn: Any, raw: http.client.HTTPResponse):
        self._pool, self._origin, self._conn, self._raw = pool, origin, conn, raw
        self.status_code = raw.status
        self.headers = raw.headers  # case-insensitive ``get``, as the SDK's responses
        self._body: bytes | None = None

    def read(self) -> bytes:
        """The whole body (once read, kept)."""
        if self._body is None:
            try:
                self._body = self._raw.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise _failure(exc) from exc
            self.close()
        return self._body

    @property
    def text(self) -> str:
        return self.read().decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON (``ValueError`` if it is not)."""
        return json.loads(self.read())

    def _chunks(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = self._raw.read1(_DRAIN)
            except (OSError, http.client.HTTPException) as exc:
                raise _failure(exc) from exc
            if not chunk:
                return
            yield chunk

    def events(self) -> Iterator[dict]:
        """The JSON of each server-sent event's ``data``, up to ``[DONE]``.

        Lines end in CR, LF or CRLF; an event's ``data:`` lines are joined with
        newlines and it ends at a blank line, as the SSE specification (and the
        SDK) read them. An event whose data is ``{"error": ...}`` is raised as an
        :class:`ErrorEvent`; data that is not JSON as ``ValueError`` (a malformed chunk).
        """
        data: list[str] = []
        rest = b""
        for chunk in self._chunks():
            buf = rest + chunk
            held = buf[-1:] == b"\r"  # its LF may open the next chunk: one line end, not two
            lines = _LINE_END.split(buf[:-1] if held else buf)
            rest = lines.pop() + (b"\r" if held else b"")
            for raw in lines:
                line = raw.decode("utf-8")
                if line:
                    name, _, value = line.partition(":")
                    if name == "data":
                        data.append(value[1:] if value.startswith(" ") else value)
                    continue
                if not data:  # a blank line of a CRLF pair, or an event without data
                    continue
                text, data = "\n".join(data), []
                if text.startswith("[DONE]"):
                    self._finish()
                    return
                yield _event(json.loads(text))

    def _finish(self) -> None:
        """After ``[DONE]``: read the stream's tail, to keep the connection if it ends."""
        for _ in range(4):
            try:
                if not self._raw.read1(_DRAIN):
                    break
            except (OSError, http.client.HTTPException):
                break
        self.close()

    def close(self) -> None:
        """Give the connection back if the body was read to its end; else close it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._raw.isclosed() and not self._raw.will_close:
            self._pool._put(self._origin, conn)
        else:
            self._raw.close()
            conn.close()


def _event(data: Any) -> Any:
    """One event's data, or the :class:`ErrorEvent` it reports."""
    if isinstance(data, dict) and data.get("error"):
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else None
        if not message or not isinstance(message, str):
            message = "An error occurred during streaming"
        raise ErrorEvent(message, error)
    return data


def without_none(data: Any) -> Any:
    """``data`` without its null fields at every depth, as the SDK's ``exclude_none`` dump
    gave a chunk to the reader (``"content": null`` is no content)."""
    if isinstance(data, dict):
        return {k: without_none(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [without_none(v) for v in data]
    return data


def status_error(response: Response) -> StatusError:
    """The error of an answer with an error status, worded as the SDK words it.

    ``body`` is the ``error`` object of a JSON body (else the JSON, else the text);
    ``message`` is ``Error code: N - <body>``, which the error reading strips.
    """
    status = response.status_code
    text = response.text.strip()
    body: Any = text
    try:
        body = json.loads(text)
        message = f"Error code: {status} - {body}"
    except ValueError:
        message = text or f"Error code: {status}"
    if isinstance(body, dict):
        body = body.get("error", body)
    return StatusError(message, status, body, response)


def _proxy(scheme: str, host: str) -> tuple[str, int, dict[str, str]] | None:
    """The proxy the environment names for ``host`` (host, port, its auth header), if any."""
    proxies = urllib.request.getproxies()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or urllib.request.proxy_bypass(host):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    auth: dict[str, str] = {}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth["Proxy-Authorization"] = "Basic " + base64.b64encode(pair).decode()
    return parts.hostname or "", parts.port or 80, auth


class Pool:
    """The keep-alive connections to one endpoint, for every client of the process.

    ``opened`` counts the connections made, so a test can see them reused.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.opened = 0
        self.is_closed = False
        self._idle: dict[tuple, list[Any]] = {}
        # Concurrency: a leaf lock (see the docstring of jupyter_agent.loop).
        self._lock = threading.Lock()

    def post(self, url: str, headers: dict[str, str], body: bytes) -> Response:
        """Send ``body``; the response once its status arrived. Error statuses are raised
        as :class:`StatusError` (their body read); 307 and 308 are followed."""
        for _ in range(5):
            response = self._send(url, headers, body)
            location = response.headers.get("location")
            if response.status_code not in _REDIRECTS or not location:
                break
            response.read()
            target = urljoin(url, location)
            if urlsplit(target)[:2] != urlsplit(url)[:2]:  # another origin gets no key
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
        if response.status_code >= 400:
            raise status_error(response)
        return response

    def _send(self, url: str, headers: dict[str, str], body: bytes) -> Response:
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        proxy = _proxy(scheme, host)
        origin = (scheme, host, port, proxy and proxy[:2])
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        if proxy is not None and scheme == "http":  # a forward proxy takes the whole URL
            target = url
            headers = {**headers, **proxy[2]}
        conn = self._take(origin) or self._open(scheme, host, port, proxy)
        try:
            conn.request("POST", target, body=body, headers=headers)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            unsent()
            raise _failure(exc) from exc
        sent()
        try:
            raw = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _failure(exc) from exc
        return Response(self, origin, conn, raw)

    def _open(self, scheme: str, host: str, port: int, proxy: tuple[str, int, dict] | None) -> Any:
        with self._lock:
            self.opened += 1
        if scheme == "https":
            where = proxy[:2] if proxy else (host, port)
            conn = http.client.HTTPSConnection(*where, timeout=self.timeout, context=ssl_context())
            if proxy:
                conn.set_tunnel(host, port, headers=proxy[2])
            return conn
        return http.client.HTTPConnection(
            *(proxy[:2] if proxy else (host, port)), timeout=self.timeout
        )

    def _take(self, origin: tuple) -> Any:
        """An idle connection to ``origin`` the server has not closed meanwhile, if any."""
        while True:
            with self._lock:
                idle = self._idle.get(origin)
                conn = idle.pop() if idle else None
            if conn is None:
                return None
            if conn.sock is not None and self._idle_and_open(conn.sock):
                return conn
            conn.close()

    def _idle_and_open(self, sock: socket.socket) -> bool:
        """Whether an idle connection is still open: a socket readable while idle was
        closed by the server, unless what it holds is TLS's own (a session ticket)."""
        if not select.select([sock], [], [], 0)[0]:
            return True
        try:
            sock.setblocking(False)
            sock.recv(1)  # b"": closed; a byte: nothing a request of ours asked for
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(self.timeout)
        return False

    def _put(self, origin: tuple, conn: Any) -> None:
        with self._lock:
            if not self.is_closed:
                self._idle.setdefault(origin, []).append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self.is_closed = True
            idle = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()


def shared_pool(base_url: str, timeout: float) -> Pool:
    """The process's connections to an endpoint at a timeout (each execution makes a
    client; the connections outlive it), in the registry of :mod:`.http`, closed at exit."""
    pool: Pool = shared(base_url, timeout, Pool, lambda: Pool(timeout))
    return pool


class ChatTransport:
    """Where one client's requests go: the endpoint's URL, headers and query, and its pool.

    The headers are the SDK's: the key as a bearer token, ``OpenAI-Organization``
    and ``OpenAI-Project`` from ``OPENAI_ORG_ID`` / ``OPENAI_PROJECT_ID``, then
    the endpoint's own (which win: Azure's ``api-key``, OpenRouter's ``X-Title``).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float,
        headers: dict[str, str],
        query: dict[str, str],
        environ: Mapping[str, str],
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.query = "?" + urlencode(query) if query else ""
        self.headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"jupyter-agent/{__version__}",
            "Authorization": f"Bearer {api_key}",
        }
        for name, variable in (("OpenAI-Organization", "OPENAI_ORG_ID"),
                               ("OpenAI-Project", "OPENAI_PROJECT_ID")):  # fmt: skip
            if environ.get(variable):
                self.headers[name] = environ[variable]
        self.headers.update(headers)
        self.pool = shared_pool(base_url, timeout)

    def post(self, path: str, body: dict) -> Response:
        """POST ``body`` as JSON to ``path`` under the base URL."""
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        return self.pool.post(self.base_url + path + self.query, self.headers, data)
