"""The process's HTTP clients for model endpoints, and what makes the first request fast.

Building an HTTP client builds an SSL context and loads the CA bundle (~50 ms),
which every cell execution would otherwise pay before its first model request;
sharing one per endpoint also keeps its connections alive between executions.
So the clients live in a registry of the process, not on the model client of
one execution, and are closed at exit: the Chat Completions transport's pools
(:func:`.transport.shared_pool`), and the SDKs' httpx clients of the native
APIs (:func:`shared_http`). Both use one SSL context (:func:`ssl_context`) and
tell the ``on_sent`` hook when a request goes out (:func:`announcing`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl


# Nothing beyond the standard library is imported here: `%load_ext` imports this module,
# and the SDKs (for the native APIs only) are imported when first used.

# Process-wide on purpose: the pool outlives each execution's client (see above).
# Concurrency: its place in the lock order is in the docstring of jupyter_agent.loop.
_http_lock = threading.Lock()
_HTTP: dict[tuple[str, float, Callable[..., Any]], Any] = {}


#: The ``on_sent`` hook of the model request being made in this thread, if any.
_sending = threading.local()


def shared_http(base_url: str, timeout: float, make: Callable[..., Any] | None = None) -> Any:
    """The process's HTTP client for an endpoint and timeout, closed at exit.

    ``make`` is the SDK's client class: ``openai``'s (the default), or
    ``anthropic``'s (which speaks another HTTP library); each gets its own pool.
    """
    if make is None:
        import openai

        make = openai.DefaultHttpxClient
    return shared(
        base_url,
        timeout,
        make,
        lambda: make(timeout=timeout, verify=ssl_context(), event_hooks={"request": [_sent]}),
    )


def shared(base_url: str, timeout: float, kind: Callable[..., Any], new: Callable[[], Any]) -> Any:
    """The process's client of ``kind`` for an endpoint and timeout (``new()`` makes one),
    closed at exit: anything with ``is_closed`` and ``close()``."""
    key = (base_url, timeout, kind)
    with _http_lock:
        client = _HTTP.get(key)
        if client is None or client.is_closed:
            client = _HTTP[key] = new()
        return client


@contextlib.contextmanager
def announcing(hook: Callable[[], None] | None) -> Iterator[None]:
    """Call ``hook`` as each request this thread sends through a shared client goes out.

    The request is sent deep inside a transport (ours, or an SDK's httpx client,
    whose event hook is the one place that knows the moment); it runs in the
    sending thread, so the hook is handed over in a thread-local.
    """
    _sending.hook = hook
    try:
        yield
    finally:
        _sending.hook = None


@contextlib.contextmanager
def after_sending(callback: Callable[[], None] | None) -> Iterator[None]:
    """Call ``callback`` once, after the first request this thread sends meanwhile has gone
    out (or could not: :func:`unsent`).

    What can wait for the endpoint's work on the reply is done then, not before the
    request: a cell's timeline widget is built there (:mod:`jupyter_agent.kernel.slot`).
    Its failure never fails the request.
    """
    _sending.after = callback
    try:
        yield
    finally:
        _sending.after = None


def sent() -> None:
    """A client calls this as a request goes out (in the thread that sends it)."""
    hook = getattr(_sending, "hook", None)
    if hook is not None:
        hook()
    unsent()


def unsent() -> None:
    """A client calls this when a request could not go out (no connection): what waits
    for a request to be sent (:func:`after_sending`) need not wait for a retry's."""
    after = getattr(_sending, "after", None)
    if after is not None:
        _sending.after = None
        with contextlib.suppress(Exception):
            after()


def _sent(request: object) -> None:
    """The httpx clients' request event hook."""
    sent()


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """The process's SSL context, as httpx makes it: ``SSL_CERT_FILE``, else
    ``SSL_CERT_DIR``, else certifi's CA bundle (the system's without certifi)."""
    import ssl

    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def warm_up() -> None:
    """Do in the background, before the first agent cell, what it would otherwise wait for.

    Called by ``%load_ext``: a new kernel's first agent cell (a resume after a
    restart) then does not wait for the modules of its first model request to be
    imported, nor for the CA bundle to load. Only those: Python imports under
    the GIL, so anything more would slow a cell sent at once; the timeline
    widget is built after the first request has gone out (:mod:`..kernel.slot`).
    """
    threading.Thread(target=_warm, name="jupyter-agent-warm-up", daemon=True).start()


def _warm() -> None:
    with contextlib.suppress(Exception):  # a warm-up: the cell does it all anyway
        importlib.import_module("jupyter_agent.model.clients")
        # The CA bundle holds the GIL while it loads: not for a plain-HTTP endpoint
        # (a local server), which a cell sent at once would otherwise wait for.
        if not os.environ.get("OPENAI_BASE_URL", "").startswith("http:"):
            ssl_context()


def close_shared_http() -> None:
    """Close the shared HTTP clients (at exit; a later :func:`shared` makes new ones)."""
    with _http_lock:
        clients = list(_HTTP.values())
        _HTTP.clear()
    for client in clients:
        client.close()


atexit.register(close_shared_http)
