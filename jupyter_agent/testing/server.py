"""A deterministic, OpenAI-compatible chat server driven by a script.

Tests, benchmarks and the offline demo model need an LLM endpoint that answers
the same way every time and can inject failures (rate limits, dropped streams,
timeouts, garbage) on demand. This module provides one using only the standard
library, speaking the wire format the official ``openai`` client expects.

The reply to a request is picked by its *turn*: the number of assistant
messages already in the conversation, plus N for every message saying
``[N earlier model replies summarized]`` (a compacted history keeps its turn).
A request re-issued after a crash therefore gets the same reply as the
original, which is what makes resume-after-crash tests deterministic.

Like a real endpoint, the server can refuse a prompt longer than its
``context_window`` (OpenAI's 400 ``context_length_exceeded``), and it answers a
compaction request (no tools, first message a system message starting with
:data:`SUMMARY_PROMPT_PREFIX`) with a deterministic summary, outside the script.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

__all__ = [
    "CREATED",
    "FAULT_KINDS",
    "MODEL_IDS",
    "SUMMARY_PROMPT_PREFIX",
    "Script",
    "ScriptedServer",
    "is_summary_request",
    "prompt_tokens",
    "summary_text",
    "turn_of",
]

Script = list[dict[str, Any]] | Callable[[dict[str, Any]], dict[str, Any]] | None

#: Fault kinds understood in a script entry's ``"faults"`` list:
#: HTTP errors (``429``, ``500``, ``503``; ``401`` echoing the key like OpenAI does;
#: ``proxy_400``, a LiteLLM-style error pasted over several lines), ``timeout``,
#: ``drop`` (connection lost mid-stream), ``cut`` (the stream ends cleanly but
#: early: no ``finish_reason``, no ``[DONE]``), ``length`` (half the reply, with
#: ``finish_reason: "length"``; ``content_filter`` likewise), ``stream_error`` / ``stream_error_fatal`` (an
#: ``error`` event inside the stream, transient / permanent), ``endless`` (text
#: that never stops), ``malformed`` and ``empty``.
FAULT_KINDS = (
    "429",
    "500",
    "503",
    "401",
    "proxy_400",
    "timeout",
    "drop",
    "cut",
    "length",
    "content_filter",
    "stream_error",
    "stream_error_fatal",
    "endless",
    "malformed",
    "empty",
)
#: Entry keys beyond content/tool_calls/usage/faults/delay/fault_delay:
#: ``reasoning`` (text streamed first as ``reasoning_content`` deltas, or under the
#: name in ``reasoning_field``, e.g. ``"reasoning"`` as OpenRouter and Ollama send it)
#: and ``tool_call_index``: ``"omit"`` (fragments without ``index``) or ``"same"``
#: (every call at index 0), as some servers stream parallel tool calls.
#: Model ids listed by ``GET /v1/models``.
MODEL_IDS = ("scripted", "offline")
#: Fixed ``created`` timestamp so replies are byte-for-byte reproducible.
CREATED = 1_700_000_000
EXHAUSTED = "(script exhausted)"
CHAT_PATH = "/v1/chat/completions"
#: How a compaction (summarization) request's system message begins.
SUMMARY_PROMPT_PREFIX = "You are compacting an agent's working context"
_REPLIES_SUMMARIZED = re.compile(r"\[(\d+) earlier model replies summarized\]")
_SUMMARY_RAN = 20  # tool calls listed in a summary, the latest ones

_ERRORS: dict[str, tuple[int, str, str, str]] = {
    "429": (429, "Rate limit reached (scripted fault).", "requests", "rate_limit_exceeded"),
    "500": (500, "The server had an error (scripted fault).", "server_error", "server_error"),
    "503": (503, "The server is overloaded (scripted fault).", "server_error", "overloaded"),
    "401": (
        401,
        "Incorrect API key provided: {key}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    "proxy_400": (
        400,
        "litellm.BadRequestError: OpenAIException - Error code: 400 - {{'error': {{'message': "
        "\"Unrecognized request argument supplied: frobnicate\", 'type': "
        "'invalid_request_error', 'param': None, 'code': None}}}}\n"
        "Received Model Group=scripted\nAvailable Model Group Fallbacks=None\n"
        + 'Traceback (most recent call last):\n  File "litellm/main.py", line 1\n'
        * 20,
        "None",
        "400",
    ),
}
#: Error events sent inside a stream (LiteLLM and OpenAI do during incidents).
_STREAM_ERRORS: dict[str, dict[str, Any]] = {
    "stream_error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    },
    "stream_error_fatal": {
        "message": "The response was filtered due to the prompt triggering the content "
        "management policy.",
        "type": "invalid_request_error",
        "param": "prompt",
        "code": "content_filter",
    },
}


def _error_body(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    """OpenAI-style error envelope, so clients map it to the right exception."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _text_of(content: Any) -> str:
    """Text of a message ``content`` that may be a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return ""


def _prompt_chars(messages: list[Any]) -> int:
    """Character count of a conversation, the basis for deterministic token usage."""
    total = 0
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        total += len(_text_of(msg.get("content")))
        for call in msg.get("tool_calls") or []:
            if isinstance(call, dict):
                fn = call.get("function") or {}
                total += len(str(fn.get("name", ""))) + len(str(fn.get("arguments", "")))
    return total


def prompt_tokens(messages: list[Any], tools: Any = None) -> int:
    """Deterministic prompt size estimate the context window is checked against."""
    tool_chars = len(json.dumps(tools)) if tools else 0
    return (_prompt_chars(messages) + tool_chars) // 4


def turn_of(messages: list[Any]) -> int:
    """Model replies so far: assistant messages plus those a compaction summarized."""
    turn = 0
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        if msg.get("role") == "assistant":
            turn += 1
        turn += sum(int(n) for n in _REPLIES_SUMMARIZED.findall(_text_of(msg.get("content"))))
    return turn


def is_summary_request(body: dict[str, Any]) -> bool:
    """A compaction request: no tools, and a first system message with the known opening."""
    messages = body.get("messages") or []
    if body.get("tools") or not messages or not isinstance(messages[0], dict):
        return False
    first = messages[0]
    return first.get("role") == "system" and _text_of(first.get("content")).startswith(
        SUMMARY_PROMPT_PREFIX
    )


def _first_line(text: str, limit: int | None = None) -> str:
    line = text.strip().split("\n", 1)[0].strip() if text.strip() else ""
    return line[:limit] if limit else line


def summary_text(messages: list[Any]) -> str:
    """The deterministic answer to a compaction request: the code run and the last result."""
    ran: list[str] = []
    last_result = "(none)"
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        if msg.get("role") == "tool":
            last_result = _first_line(_text_of(msg.get("content"))) or "(no output)"
        for call in msg.get("tool_calls") or []:
            args = ((call or {}).get("function") or {}).get("arguments", "")
            try:
                code = json.loads(args).get("code", args)
            except (ValueError, AttributeError):
                code = args
            ran.append(_first_line(str(code), 60))
    lines = [f"- ran: {code}" for code in ran[-_SUMMARY_RAN:]]
    lines.append(f"- last result: {last_result}")
    return "Summary of the work so far: \n" + "\n".join(lines)


def _split3(text: str) -> list[str]:
    """Split text in about three pieces so streaming is visible to consumers."""
    if not text:
        return []
    size = max(1, -(-len(text) // 3))
    return [text[i : i + size] for i in range(0, len(text), size)]


class _Reply:
    """A fully resolved assistant reply: text, tool calls and usage."""

    def __init__(self, entry: dict[str, Any], turn: int, messages: list[Any], empty: bool) -> None:
        self.content: str | None
        self.tool_calls: list[dict[str, str]] = []
        self.reasoning = "" if empty else str(entry.get("reasoning") or "")
        self.reasoning_field = str(entry.get("reasoning_field") or "reasoning_content")
        self.index_mode = entry.get("tool_call_index")
        if empty:
            self.content = ""
        else:
            for i, call in enumerate(entry.get("tool_calls") or []):
                args = call.get("arguments", {})
                self.tool_calls.append(
                    {
                        "id": str(call.get("id") or f"call_{turn}_{i}"),
                        "name": str(call["name"]),
                        "arguments": args if isinstance(args, str) else json.dumps(args),
                    }
                )
            content = entry.get("content")
            self.content = (
                str(content) if content is not None else (None if self.tool_calls else "")
            )
        self.finish_reason = "tool_calls" if self.tool_calls else "stop"
        out_chars = len(self.content or "") + sum(
            len(c["name"]) + len(c["arguments"]) for c in self.tool_calls
        )
        usage = entry.get("usage") if not empty else None
        prompt = int((usage or {}).get("prompt_tokens", _prompt_chars(messages) // 4))
        completion = int((usage or {}).get("completion_tokens", out_chars // 4 + 1))
        self.usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def truncate(self) -> None:
        """Keep the first half of the text and of each call's arguments (a cut reply)."""
        if self.content:
            self.content = self.content[: len(self.content) // 2]
        for c in self.tool_calls:
            c["arguments"] = c["arguments"][: len(c["arguments"]) // 2]
        self.finish_reason = "length"

    def message(self) -> dict[str, Any]:
        """The non-streaming ``choices[0].message`` object."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content, "refusal": None}
        if self.reasoning:
            msg[self.reasoning_field] = self.reasoning
        if self.tool_calls:
            msg["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in self.tool_calls
            ]
        return msg

    def deltas(self) -> Iterator[dict[str, Any]]:
        """Streaming deltas after the initial role delta, in OpenAI's order."""
        for piece in _split3(self.reasoning):
            yield {self.reasoning_field: piece}
        for piece in _split3(self.content or ""):
            yield {"content": piece}
        for i, c in enumerate(self.tool_calls):
            half = len(c["arguments"]) // 2
            index = {"omit": {}, "same": {"index": 0}}.get(self.index_mode, {"index": i})
            first = {"type": "function", "function": {"name": c["name"], "arguments": ""}}
            first["function"]["arguments"] = c["arguments"][:half]
            yield {"tool_calls": [{**index, "id": c["id"], **first}]}
            yield {"tool_calls": [{**index, "function": {"arguments": c["arguments"][half:]}}]}


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 handler; streams use chunked encoding so a drop is detectable."""

    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    # Idle keep-alive connections should not pin a thread forever.
    timeout = 120

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.owner._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.owner.verbose:
            super().log_message(format, *args)

    # -- plumbing ---------------------------------------------------------

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self._send_raw(status, data, "application/json", headers)

    def _send_raw(
        self, status: int, data: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _error(self, status: int, message: str, type_: str = "invalid_request_error") -> None:
        self._send_json(status, _error_body(message, type_))

    def _read_json(self) -> tuple[bool, Any]:
        """Read the request body; returns (ok, parsed)."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return False, None
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            return True, json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return False, None

    # -- routes -----------------------------------------------------------

    def do_GET(self) -> None:
        url = urlparse(self.path)
        path = url.path.rstrip("/")
        owner = self.server.owner
        if path == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": CREATED, "owned_by": "jupyter-agent"}
                for m in MODEL_IDS
            ]
            self._send_json(200, {"object": "list", "data": data})
        elif path == "/_log":
            query = parse_qs(url.query)
            brief = query.get("brief", ["0"])[0] not in ("0", "", "false")
            since = query.get("since", ["0"])[0]
            if not since.isdigit():
                self._error(400, f"since must be a request count, not {since!r}")
                return
            with owner._lock:
                log = [dict(r) for r in owner.requests[int(since) :]]
            if brief:
                for r in log:
                    r.pop("body", None)
            self._send_json(200, log)
        else:
            self._error(404, f"Unknown path {url.path}")

    def do_POST(self) -> None:
        path = urlparse(self.path).path.rstrip("/")
        owner = self.server.owner
        if path == CHAT_PATH:
            self._chat()
        elif path == "/_script":
            ok, body = self._read_json()
            script = body.get("script") if ok and isinstance(body, dict) else None
            if not isinstance(script, list):
                self._error(400, 'Expected a JSON body {"script": [...]}')
                return
            owner.set_script(script)
            self._send_json(200, {"ok": True, "entries": len(script)})
        elif path == "/_reset_log":
            self._read_json()
            owner.reset_log()
            self._send_json(200, {"ok": True})
        else:
            self._read_json()
            self._error(404, f"Unknown path {path}")

    def _chat(self) -> None:
        owner = self.server.owner
        headers = {k.lower(): v for k, v in self.headers.items()}
        ok, body = self._read_json()
        messages = body.get("messages") if ok and isinstance(body, dict) else None
        if not isinstance(messages, list):
            owner._log(-1, self.path, body if isinstance(body, dict) else {}, headers, "error:400")
            msg = "Request body must be JSON with a 'messages' list."
            self._error(400, msg if ok else "We could not parse the JSON body of your request.")
            return
        turn = turn_of(messages)
        window = owner.context_window
        tokens = prompt_tokens(messages, body.get("tools"))
        if window is not None and tokens > window:
            owner._log(turn, self.path, body, headers, "error:context_length_exceeded")
            message = (
                f"This model's maximum context length is {window} tokens. However, your "
                f"messages resulted in {tokens} tokens. Please reduce the length of the messages."
            )
            error = _error_body(message, "invalid_request_error", "context_length_exceeded")
            error["error"]["param"] = "messages"
            self._send_json(400, error)
            return
        if owner.reject_stream_options and "stream_options" in body:
            owner._log(turn, self.path, body, headers, "error:stream_options")
            message = "Unrecognized request argument supplied: stream_options"
            error = _error_body(message, "invalid_request_error")
            error["error"]["param"] = "stream_options"
            self._send_json(400, error)
            return
        if is_summary_request(body):
            owner._log(-1, self.path, body, headers, "summary", summary=True)
            entry: dict[str, Any] | None = {"content": summary_text(messages)}
            attempt, fault = 0, None
        else:
            entry, attempt, fault = owner._begin(turn, body, self.path, headers)
        if entry is None:
            self._error(500, f"Scripted server could not build a reply ({fault}).", "server_error")
            return
        if entry.get("delay"):
            owner._sleep(float(entry["delay"]))
        if fault == "timeout":
            owner._sleep(float(entry.get("fault_delay", owner.fault_delay)))
        if owner._stopping.is_set():
            self.close_connection = True
            return
        req_id = {"x-request-id": f"req-{turn}-{attempt}"}
        if fault in _ERRORS:
            status, message, type_, code = _ERRORS[fault]
            key = headers.get("authorization", "").removeprefix("Bearer ")
            message = message.format(key=key)
            extra = {"Retry-After": "0"} if fault == "429" else {}
            self._send_json(status, _error_body(message, type_, code), {**req_id, **extra})
            return
        if fault == "drop" and not body.get("stream"):
            # Close without sending any response at all.
            self.close_connection = True
            return
        try:
            reply = _Reply(entry, turn, messages, empty=fault == "empty")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._error(500, f"Bad script entry for turn {turn}: {exc!r}", "server_error")
            return
        streaming = bool(body.get("stream")) and not owner.stream_json
        if fault in ("length", "content_filter") or (fault == "cut" and not streaming):
            reply.truncate()
        if fault == "content_filter":
            reply.finish_reason = "content_filter"
        cid = f"chatcmpl-{turn}-{attempt}"
        model = str(body.get("model") or "scripted")
        if streaming:
            self._stream(cid, model, reply, body, fault, req_id)
            return
        if fault == "malformed":
            self._send_raw(200, b'{"id": "' + cid.encode() + b'", "choices": [', "application/json")
            return
        completion = {
            "id": cid,
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": reply.message(),
                    "logprobs": None,
                    "finish_reason": None if fault == "cut" else reply.finish_reason,
                }
            ],
            "usage": reply.usage,
        }
        self._send_json(200, completion, req_id)

    def _stream(
        self,
        cid: str,
        model: str,
        reply: _Reply,
        body: dict[str, Any],
        fault: str | None,
        headers: dict[str, str],
    ) -> None:
        owner = self.server.owner
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

        def chunk(delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": model,
                "system_fingerprint": None,
                "choices": []
                if delta is None
                else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                out["usage"] = reply.usage if delta is None else None
            return out

        def send(data: bytes) -> None:
            if owner.chunk_delay:
                owner._sleep(owner.chunk_delay)
            self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def event(payload: dict[str, Any]) -> None:
            send(b"data: " + json.dumps(payload).encode() + b"\n\n")

        first: dict[str, Any] = {"role": "assistant", "content": "" if reply.content else None}
        event(chunk(first))
        deltas = list(reply.deltas())
        if fault == "drop":
            if deltas:
                event(chunk(deltas[0]))
            # Abrupt end: no [DONE], no terminating zero-length chunk.
            self.close_connection = True
            return
        if fault in ("cut", *_STREAM_ERRORS):
            # All but the last delta (a tool call's arguments stay half), then a clean
            # end of the HTTP body without finish_reason or [DONE]; or an error event.
            for delta in deltas[: max(1, len(deltas) - 1)]:
                event(chunk(delta))
            if fault in _STREAM_ERRORS:
                event({"error": _STREAM_ERRORS[fault]})
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        if fault == "endless":
            while not owner._stopping.is_set():
                event(chunk({"content": "and on "}))
                owner._sleep(0.005)
            return
        if fault == "malformed":
            send(b'data: {"id": "' + cid.encode() + b'", "choices": [{"delta": \n\n')
        else:
            for delta in deltas:
                event(chunk(delta))
            event(chunk({}, reply.finish_reason))
            if include_usage:
                event(chunk(None))
        send(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _HTTPServer(ThreadingHTTPServer):
    """Threading server that never blocks shutdown on in-flight handlers."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], owner: ScriptedServer) -> None:
        self.owner = owner
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, _Handler)

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


class ScriptedServer:
    """OpenAI-compatible chat endpoint that replays a script, with fault injection.

    Use as a context manager, pass ``server.url`` as the client's ``base_url``,
    and inspect ``server.requests`` afterwards.
    """

    def __init__(
        self,
        script: Script = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        chunk_delay: float = 0.0,
        fault_delay: float = 30.0,
        verbose: bool = False,
        context_window: int | None = None,
        stream_json: bool = False,
        reject_stream_options: bool = False,
    ) -> None:
        self.host = host
        #: Prompt tokens (:func:`prompt_tokens`) beyond which a request is refused.
        self.context_window = context_window
        #: Answer streaming requests with a plain JSON completion (no SSE at all).
        self.stream_json = stream_json
        #: Refuse any request carrying ``stream_options`` with a 400, as older servers do.
        self.reject_stream_options = reject_stream_options
        self.port = port
        self.chunk_delay = chunk_delay
        self.fault_delay = fault_delay
        self.verbose = verbose
        self.requests: list[dict[str, Any]] = []
        self._script: Script = script
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

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

    # -- script and log ---------------------------------------------------

    def set_script(self, script: Script) -> None:
        """Replace the script; the request log (and so attempt counts) is kept."""
        with self._lock:
            self._script = script

    def reset_log(self) -> None:
        """Forget logged requests, which also resets attempt counting."""
        with self._lock:
            self.requests.clear()

    def turns_requested(self) -> list[int]:
        """Turn of each chat request, in arrival order (bad and summary requests excluded)."""
        with self._lock:
            return [r["turn"] for r in self.requests if r["turn"] >= 0]

    # -- internals used by the handler ------------------------------------

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _sleep(self, seconds: float) -> None:
        """Sleep that ends early when the server stops."""
        if seconds > 0:
            self._stopping.wait(seconds)

    def _log(
        self,
        turn: int,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        outcome: str,
        *,
        summary: bool = False,
    ) -> None:
        """Record a request the script does not answer (bad body, refusal, summary).

        Such records count as no attempt of their turn.
        """
        with self._lock:
            self.requests.append(
                {
                    "turn": turn,
                    "attempt": 0,
                    "path": path,
                    "body": body,
                    "headers": headers,
                    "time": time.time(),
                    "outcome": outcome,
                    "summary": summary,
                    "scripted": False,
                }
            )

    def _begin(
        self, turn: int, body: dict[str, Any], path: str, headers: dict[str, str]
    ) -> tuple[dict[str, Any] | None, int, str | None]:
        """Resolve the entry, pick this attempt's fault and log it atomically.

        Returns ``(entry, attempt, fault)``; on a broken script or unknown fault
        kind the entry is None and the third item describes the problem.
        """
        with self._lock:
            script = self._script
        problem = None
        try:
            if callable(script):
                entry = dict(script(body))
            elif script is not None and turn < len(script):
                entry = dict(script[turn])
            else:
                entry = {"content": EXHAUSTED}
        except Exception:
            traceback.print_exc()
            entry, problem = {}, "error:script"
        faults = entry.get("faults") or []
        with self._lock:
            attempt = sum(1 for r in self.requests if r["turn"] == turn and r["scripted"])
            fault = str(faults[attempt]) if attempt < len(faults) else None
            if fault is not None and fault not in FAULT_KINDS:
                problem = f"error:unknown fault {fault!r}"
            outcome = problem or (f"fault:{fault}" if fault else "reply")
            self.requests.append(
                {
                    "turn": turn,
                    "attempt": attempt,
                    "path": path,
                    "body": body,
                    "headers": headers,
                    "time": time.time(),
                    "outcome": outcome,
                    "summary": False,
                    "scripted": True,
                }
            )
        if problem:
            return None, attempt, problem
        return entry, attempt, fault
