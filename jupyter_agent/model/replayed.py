"""A model that answers from a run's stored replies: replay at zero tokens.

Every reply of every run is in the store, so a run can be executed again
without its endpoint: :class:`ReplayedClient` hands back the recorded replies
in order (and the recorded summaries, when the loop compacts), sends nothing
and needs no key. Once the recording is used up it raises :class:`ModelError`,
which ends the replay where the run ended. The loop cannot tell it from a live
model, so the tools run as they are now (see :mod:`jupyter_agent.loop.replay`).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import Cancelled, ModelError
from .base import Endpoint, Hooks, ModelReply

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: How a replay's endpoint is described (it has no server).
REPLAY_LABEL = "stored replies (replay)"


class RecordingExhausted(ModelError):
    """The replay asked for more replies (or summaries) than the run recorded."""


@dataclass
class Recorded:
    """One stored reply: the assistant message and the usage the endpoint reported."""

    message: dict
    usage: dict


class ReplayedClient:
    """A :class:`~jupyter_agent.model.base.ModelClient` over stored replies; makes no request.

    ``replies`` answer requests that offer tools, ``summaries`` (the text of
    each recorded compaction) the summary requests that offer none. Usage is
    the recorded one, so the loop's estimates, and so its compaction points,
    are those of the run it replays.
    """

    def __init__(
        self,
        model: str,
        replies: list[Recorded],
        summaries: list[str],
        cancel: threading.Event | None = None,
    ) -> None:
        self._endpoint = Endpoint(model, None, "replay", REPLAY_LABEL)
        self._replies = deque(replies)
        self._summaries = deque(summaries)
        self._cancel = cancel or threading.Event()
        #: Replies and summaries handed out, in order.
        self.answered = 0

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    @property
    def cancel(self) -> threading.Event:
        return self._cancel

    def complete(
        self, messages: list[dict], tools: list[dict], **hooks: Unpack[Hooks]
    ) -> ModelReply:
        """The next stored reply (a summary when no tools are offered)."""
        if self._cancel.is_set():
            raise Cancelled()
        if not tools:
            if not self._summaries:
                raise RecordingExhausted("The run recorded no more summaries to replay.")
            self.answered += 1
            return ModelReply(self._summaries.popleft(), [])
        if not self._replies:
            raise RecordingExhausted("The run recorded no more replies to replay.")
        recorded = self._replies.popleft()
        self.answered += 1
        message = recorded.message
        content = message.get("content") or ""
        if content and (on_text := hooks.get("on_text")):
            on_text(content)
        return ModelReply(content, list(message.get("tool_calls") or []), dict(recorded.usage))

    def close(self) -> None:
        """Nothing is held."""
