"""The HTTP side of :class:`~.server.ScriptedServer`: one request read, answered from the script.

Chat Completions on ``/v1/chat/completions``, and the native APIs (:data:`NATIVE`) from
the same script, streamed in chunked encoding so that a dropped stream is detectable.
"""

from __future__ import annotations

import contextlib
import json
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from . import anthropic_wire, responses_wire
from .wire import (
    CHAT_PATH,
    ERRORS,
    STREAM_ERRORS,
    ScriptedReply,
    context_length_error,
    error_body,
    is_summary_request,
    models,
    prompt_tokens,
    summary_text,
    turn_of,
    unknown_argument_error,
)

#: The native APIs served besides Chat Completions: path, and the wire module that
#: reads a request as a Chat Completions body and streams the reply its own way.
NATIVE: dict[str, Any] = {anthropic_wire.PATH: anthropic_wire, responses_wire.PATH: responses_wire}


class ChatHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 handler; streams use chunked encoding so a drop is detectable."""

    protocol_version = "HTTP/1.1"
    #: The server.py HTTP server (not imported: it imports this); ``server.owner`` is the
    #: :class:`~.server.ScriptedServer` whose script is played.
    server: Any
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
        self._send_json(status, error_body(message, type_))

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
            self._send_json(200, models())
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
        elif path in NATIVE:
            self._chat(NATIVE[path])
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

    def _chat(self, native: Any = None) -> None:
        """Answer a chat request; ``native``: the wire module of another API (:data:`NATIVE`)."""
        owner = self.server.owner
        headers = {k.lower(): v for k, v in self.headers.items()}
        ok, body = self._read_json()
        if native is not None and ok and isinstance(body, dict):
            body = native.chat_body(body)
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
            anthropic = native is anthropic_wire
            refusal = anthropic_wire.overflow_body if anthropic else context_length_error
            self._send_json(400, refusal(window, tokens))
            return
        if native is anthropic_wire and anthropic_wire.breakpoints_in(body["native"]) > 4:
            owner._log(turn, self.path, body, headers, "error:cache_control")
            found = anthropic_wire.breakpoints_in(body["native"])
            message = f"A maximum of 4 blocks with cache_control may be provided. Found {found}."
            self._send_json(400, anthropic_wire.error_body("invalid_request_error", message))
            return
        if owner.reject_stream_options and "stream_options" in body:
            owner._log(turn, self.path, body, headers, "error:stream_options")
            self._send_json(400, unknown_argument_error("stream_options"))
            return
        summary = is_summary_request(body)
        if summary:
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
        if native is anthropic_wire and fault in anthropic_wire.ERRORS:
            status, type_, message = anthropic_wire.ERRORS[fault]
            message = message.format_map(body["native"])
            self._send_json(status, anthropic_wire.error_body(type_, message), req_id)
            return
        if fault in ERRORS:
            status, message, type_, code = ERRORS[fault]
            key = headers.get("authorization", "").removeprefix("Bearer ")
            message = message.format(key=key)
            extra = {"Retry-After": "0"} if fault == "429" else {}
            self._send_json(status, error_body(message, type_, code), {**req_id, **extra})
            return
        if fault == "drop" and not body.get("stream"):
            # Close without sending any response at all.
            self.close_connection = True
            return
        try:
            reply = ScriptedReply(entry, turn, messages, empty=fault == "empty")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._error(500, f"Bad script entry for turn {turn}: {exc!r}", "server_error")
            return
        owner._served(reply, messages, body.get("tools"), -1 if summary else turn)
        streaming = bool(body.get("stream")) and not owner.stream_json
        if fault in ("length", "content_filter") or (fault == "cut" and not streaming):
            reply.truncate()
        if fault == "content_filter":
            reply.finish_reason = "content_filter"
        cid = f"chatcmpl-{turn}-{attempt}"
        model = str(body.get("model") or "scripted")
        if native is not None:
            self._native_stream(native, reply, body, fault, cid, req_id)
            return
        if streaming:
            self._stream(cid, model, reply, body, fault, req_id)
            return
        if fault == "malformed":
            self._send_raw(200, b'{"id": "' + cid.encode() + b'", "choices": [', "application/json")
            return
        finish = None if fault == "cut" else reply.finish_reason
        completion = reply.completion(cid, model, finish)
        if not owner.send_usage:
            del completion["usage"]
        self._send_json(200, completion, req_id)

    def _native_stream(
        self,
        native: Any,
        reply: ScriptedReply,
        body: dict[str, Any],
        fault: str | None,
        rid: str,
        headers: dict[str, str],
    ) -> None:
        """Stream ``reply`` as the native API does (events named, Anthropic's cache simulated)."""
        owner = self.server.owner
        model = str(body.get("model") or "scripted")
        if native is anthropic_wire:
            with owner._lock:
                prompt = int(reply.usage.get("prompt_tokens") or 0)
                cached: Any = owner.anthropic_cache.usage(body["native"], prompt)
        else:
            cached = 0
        events, clean = native.events(reply, rid, model, cached, fault)
        self._open_stream(headers)
        for name, payload in events:
            self._send_chunk(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode())
        if clean:
            self._end_chunks()
        else:
            self.close_connection = True

    def _open_stream(self, headers: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _send_chunk(self, data: bytes) -> None:
        """One HTTP chunk of a stream, after the server's ``chunk_delay``."""
        owner = self.server.owner
        if owner.chunk_delay:
            owner._sleep(owner.chunk_delay)
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_chunks(self) -> None:
        """The clean end of a chunked body."""
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _stream(
        self,
        cid: str,
        model: str,
        reply: ScriptedReply,
        body: dict[str, Any],
        fault: str | None,
        headers: dict[str, str],
    ) -> None:
        owner = self.server.owner
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        include_usage = include_usage and owner.send_usage
        self._open_stream(headers)

        def chunk(delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
            return reply.chunk(cid, model, delta, finish, with_usage=include_usage)

        send = self._send_chunk

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
        if fault == "cut_stop":
            # A proxy whose upstream stream was cut: half the reply, then a clean
            # finish ("stop"), usage and [DONE], as LiteLLM sends it.
            for delta in deltas[: max(1, len(deltas) - 1)]:
                event(chunk(delta))
            event(chunk({}, "stop"))
            if include_usage:
                event(chunk(None))
            send(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        if fault in ("cut", *STREAM_ERRORS):
            # All but the last delta (a tool call's arguments stay half), then a clean
            # end of the HTTP body without finish_reason or [DONE]; or an error event.
            for delta in deltas[: max(1, len(deltas) - 1)]:
                event(chunk(delta))
            if fault in STREAM_ERRORS:
                event({"error": STREAM_ERRORS[fault]})
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
