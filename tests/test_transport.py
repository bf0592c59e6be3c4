"""The Chat Completions transport (``jupyter_agent.model.transport``), over real sockets.

What the ``openai`` SDK did for the Chat Completions client and the transport does now:
keep-alive connections shared per endpoint, proxies from the environment (a forward
proxy for ``http``, a ``CONNECT`` tunnel for ``https``), ``SSL_CERT_FILE``, error
statuses read with their body, timeouts, and server-sent events split anywhere.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_agent.errors import (
    AgentError,
    EndpointTimeout,
    ErrorEvent,
    ModelError,
    StatusError,
    TransportError,
)
from jupyter_agent.model import endpoint_errors
from jupyter_agent.model.base import Endpoint
from jupyter_agent.model.chat import ChatCompletionsClient
from jupyter_agent.model.http import after_sending, announcing, ssl_context
from jupyter_agent.model.transport import ChatTransport, Response, shared_pool
from jupyter_agent.testing import ScriptedServer

USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(fault_delay=3.0) as srv:
        yield srv


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    ssl_context.cache_clear()
    yield
    ssl_context.cache_clear()


def client(url: str, timeout: float = 5.0, **kw: Any) -> ChatCompletionsClient:
    kw.setdefault("backoff", 0.01)
    return ChatCompletionsClient(Endpoint("scripted", url, "sk-test", url), timeout=timeout, **kw)


def relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways between two sockets until either side closes."""

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    other = threading.Thread(target=pump, args=(b, a), daemon=True)
    other.start()
    pump(a, b)
    other.join(5)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def serving(handle: Any) -> Iterator[tuple[_Server, int]]:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            handle(self.request)

    srv = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv, srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


@contextlib.contextmanager
def proxy() -> Iterator[tuple[int, list[str]]]:
    """A forward proxy (one request per connection) that also tunnels ``CONNECT``."""
    seen: list[str] = []

    def handle(conn: socket.socket) -> None:
        f = conn.makefile("rb")
        line = f.readline().decode()
        seen.append(line.strip())
        head = []
        while (h := f.readline()) not in (b"\r\n", b"\n", b""):
            head.append(h)
        method, target, _ = line.split(" ", 2)
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            relay(conn, upstream)
            return
        length = next(
            (int(h.split(b":")[1]) for h in head if h.lower().startswith(b"content-length")), 0
        )
        body = f.read(length)
        rest = target.split("://", 1)[1]
        hostport, path = rest.split("/", 1)
        host, port = hostport.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        kept = [h for h in head if not h.lower().startswith(b"connection")]
        upstream.sendall(
            f"{method} /{path} HTTP/1.1\r\n".encode()
            + b"".join(kept)
            + b"Connection: close\r\n\r\n"
            + body
        )
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                conn.sendall(data)
        upstream.close()

    with serving(handle) as (_, port):
        yield port, seen


@contextlib.contextmanager
def tls_front(target_port: int, tmp: Path) -> Iterator[tuple[int, Path]]:
    """TLS on ``localhost`` in front of a plain HTTP server, with a self-signed certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    def handle(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as tls:
            relay(tls, socket.create_connection(("127.0.0.1", target_port)))

    with serving(handle) as (_, port):
        yield port, cert


def test_connections_are_kept_alive_and_shared_by_clients(server: ScriptedServer) -> None:
    server.set_script([{"content": "one"}, {"content": "two"}])
    pool = shared_pool(server.url, 4.5)
    opened = pool.opened
    first = client(server.url, 4.5)
    assert first.complete(USER, []).content == "one"
    assert client(server.url, 4.5).complete([*USER, *USER[:0]], []).content == "one"
    assert pool.opened == opened + 1  # two requests, two clients, one connection
    assert len(server.requests) == 2


def test_a_connection_the_server_closed_is_not_reused(server: ScriptedServer) -> None:
    server.set_script([{"content": "x", "faults": ["500"]}])
    pool = shared_pool(server.url, 4.6)
    c = client(server.url, 4.6)
    assert c.complete(USER, []).content == "x"  # the 500, then the reply
    for conn in [c for conns in pool._idle.values() for c in conns]:
        conn.sock.shutdown(socket.SHUT_RDWR)  # as if the server had closed it meanwhile
    opened = pool.opened
    assert client(server.url, 4.6).complete(USER, []).content == "x"
    assert pool.opened == opened + 1


def test_forward_proxy_from_the_environment(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.set_script([{"content": "via the proxy"}])
    with proxy() as (port, seen):
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        assert client(server.url, 4.7).complete(USER, []).content == "via the proxy"
        assert seen == [f"POST {server.url}/chat/completions HTTP/1.1"]
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert client(server.url, 4.8).complete(USER, []).content == "via the proxy"
        assert len(seen) == 1  # bypassed


def test_https_through_a_connect_tunnel_with_ssl_cert_file(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server.set_script([{"content": "tunnelled"}])
    with tls_front(server.port, tmp_path) as (tls_port, cert), proxy() as (port, seen):
        url = f"https://localhost:{tls_port}/v1"
        with pytest.raises(ModelError, match="cannot reach the endpoint.*CERTIFICATE"):
            client(url, 4.9, retries=0).complete(USER, [])  # certifi does not know it
        ssl_context.cache_clear()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        assert client(url, 4.9).complete(USER, []).content == "tunnelled"
        assert client(url, 4.9).complete(USER, []).content == "tunnelled"
        # One tunnel: the TLS connection through it is kept alive and used again.
        assert [line.split(" HTTP/")[0] for line in seen] == [f"CONNECT localhost:{tls_port}"]


def test_an_error_status_is_raised_with_its_body_read(server: ScriptedServer) -> None:
    transport = ChatTransport(server.url, "sk-test", 5.0, {"X-Title": "t"}, {"a": "1"}, {})
    with pytest.raises(StatusError) as info:
        transport.post("/nowhere", {"model": "m"})
    exc = info.value
    assert isinstance(exc, AgentError) and exc.status_code == 404
    assert exc.body["message"] == "Unknown path /v1/nowhere"
    assert "Unknown path" in exc.response.text
    assert endpoint_errors.describe(exc) == "HTTP 404: Unknown path /v1/nowhere"
    server.set_script([{"content": "x", "faults": ["429"]}])
    with pytest.raises(StatusError) as info:
        transport.post("/chat/completions", {"model": "m", "messages": USER})
    assert info.value.status_code == 429 and endpoint_errors.retry_after(info.value) == 0.0
    assert server.requests[-1]["headers"]["x-title"] == "t"


def test_a_silent_endpoint_times_out(server: ScriptedServer) -> None:
    server.set_script([{"content": "x", "faults": ["timeout", "timeout"]}])
    transport = ChatTransport(server.url, "sk-test", 0.5, {}, {}, {})
    with pytest.raises(EndpointTimeout) as info:
        transport.post("/chat/completions", {"model": "m", "messages": USER})
    assert isinstance(info.value, TransportError)
    assert endpoint_errors.describe(info.value) == "the request timed out"
    with pytest.raises(ModelError, match=r"kept failing \(the request timed out\)"):
        client(server.url, 0.5, retries=0).complete(USER, [])


class _Raw:
    """An ``http.client`` response reduced to what :class:`Response` reads."""

    status, will_close = 200, False
    headers: dict[str, str] = {}

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def read1(self, n: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def isclosed(self) -> bool:
        return not self.chunks

    def close(self) -> None:
        self.chunks = []


class _Conn:
    def close(self) -> None:
        pass


def events(chunks: list[bytes]) -> list[Any]:
    kept: list[Any] = []
    pool: Any = type("P", (), {"_put": lambda self, origin, conn: kept.append(conn)})()
    return list(Response(pool, (), _Conn(), _Raw(chunks)).events())  # type: ignore[arg-type]


def test_server_sent_events_split_anywhere() -> None:
    stream = (
        b'data: {"a":1}\r\n\r\n: a comment\n\nevent: x\ndata: {"b":\ndata: 2}\n\n'
        b'data:{"c":3}\r\rdata: [DONE]\n\n'
    )
    expected = [{"a": 1}, {"b": 2}, {"c": 3}]
    assert events([stream]) == expected
    for cut in range(1, len(stream)):  # CRLF split across reads is one line end
        assert events([stream[:cut], stream[cut:]]) == expected, cut
    with pytest.raises(ErrorEvent, match="overloaded") as info:
        events([b'data: {"error": {"message": "overloaded", "code": 529}}\n\n'])
    assert info.value.code == 529 and info.value.status_code is None
    with pytest.raises(ValueError):
        events([b'data: {"a": \n\n'])


def test_what_waits_for_the_first_request_runs_once_it_is_out_or_could_not_be(
    server: ScriptedServer,
) -> None:
    """The cell's timeline is built then (``after_sending``); ``on_sent`` hears every request."""
    server.set_script([{"content": "x"}])
    transport = ChatTransport(server.url, "sk-test", 5.0, {}, {}, {})
    after: list[int] = []
    each: list[int] = []
    body = {"model": "m", "messages": USER}
    with after_sending(lambda: after.append(len(each))), announcing(lambda: each.append(1)):
        transport.post("/chat/completions", body).read()
        transport.post("/chat/completions", body).read()
    assert (after, each) == ([1], [1, 1])  # once, after the first request's own hook
    dead = ChatTransport("http://127.0.0.1:9/v1", "sk-test", 5.0, {}, {}, {})
    with after_sending(lambda: after.append(-1)), pytest.raises(TransportError):
        dead.post("/chat/completions", body)
    assert after == [1, -1]
