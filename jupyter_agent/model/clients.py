"""Which client class speaks an API (:data:`~.base.APIS`), imported only when used.

The ``anthropic`` SDK takes a while to import; a kernel that never asks
Anthropic never pays for it.
"""

from __future__ import annotations

import importlib

from .chat import ChatCompletionsClient

#: The module and class of each API's client.
_CLIENTS = {
    "chat": ("jupyter_agent.model.chat", "ChatCompletionsClient"),
    "responses": ("jupyter_agent.model.responses", "ResponsesClient"),
    "anthropic": ("jupyter_agent.model.anthropic_messages", "AnthropicClient"),
}


def client_class(api: str) -> type[ChatCompletionsClient]:
    """The client class of ``api`` (one of :data:`~.base.APIS`, checked by ``Endpoint.resolve``)."""
    module, name = _CLIENTS[api]
    cls: type[ChatCompletionsClient] = getattr(importlib.import_module(module), name)
    return cls
