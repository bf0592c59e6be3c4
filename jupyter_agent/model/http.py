"""The process's HTTP clients for model endpoints, and what makes the first request fast.

Building an HTTP client builds an SSL context and loads the CA bundle (~50 ms),
which every cell execution would otherwise pay before its first model request;
sharing one per endpoint also keeps its connections alive between executions.
So the clients live in a registry of the process (:func:`shared_http`), not on
the model client of one execution, and are closed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl


# httpx and the openai SDK are imported when first used: this module is imported by
# `%load_ext`, which starts the warm-up that imports them off the kernel's main thread.

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
    key = (base_url, timeout, make)
    with _http_lock:
        client = _HTTP.get(key)
        if client is None or client.is_closed:
            client = _HTTP[key] = make(
                timeout=timeout, verify=ssl_context(), event_hooks={"request": [_sent]}
            )
        return client


@contextlib.contextmanager
def announcing(hook: Callable[[], None] | None) -> Iterator[None]:
    """Call ``hook`` as each request this thread sends through a shared client goes out.

    The request is sent deep inside the ``openai`` client; its HTTP client's
    event hook is the one place that knows the moment, and it runs in the
    sending thread, so the hook is handed over in a thread-local.
    """
    _sending.hook = hook
    try:
        yield
    finally:
        _sending.hook = None


def _sent(request: object) -> None:
    """The HTTP client calls this as a request goes out (in the thread that sends it)."""
    hook = getattr(_sending, "hook", None)
    if hook is not None:
        hook()


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """The process's SSL context, as httpx makes it (CA bundle, ``SSL_CERT_FILE``)."""
    import httpx

    return httpx.create_ssl_context()


def warm_up() -> None:
    """Do in the background, before the first agent cell, what it would otherwise wait for.

    Called by ``%load_ext``: a new kernel's first agent cell (a resume after a
    restart) then does not wait for the CA bundle to load or for the modules
    of its first model request and its timeline to be imported.
    """
    threading.Thread(target=_warm, name="jupyter-agent-warm-up", daemon=True).start()


def _warm() -> None:
    with contextlib.suppress(Exception):  # a warm-up: the cell does it all anyway
        import openai

        openai.DefaultHttpxClient(verify=ssl_context()).close()  # imports the transport
        for module in (
            "openai.resources.chat.completions",
            "jupyter_agent.model.chat",
            "jupyter_agent.store.duckdb.store",
            "jupyter_agent.kernel.widget",
        ):
            importlib.import_module(module)


def close_shared_http() -> None:
    """Close the shared HTTP clients (at exit; a later :func:`shared_http` makes new ones)."""
    with _http_lock:
        clients = list(_HTTP.values())
        _HTTP.clear()
    for client in clients:
        client.close()


atexit.register(close_shared_http)
