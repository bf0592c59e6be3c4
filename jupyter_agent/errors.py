"""The errors users can meet, in one light module (standard library only).

Every one derives from :class:`AgentError`, so a caller that reports errors as
one short message catches that alone. :class:`StoreError` is kept for faults of
the store itself (damaged, full, read-only, busy); refusals of the run state
machine (an agent already running, nothing waiting for an approval) and
lookups that find nothing have types of their own.
"""

from __future__ import annotations


class AgentError(Exception):
    """Something a user caused or can fix; the message says what to do."""


class StoreError(AgentError):
    """The store cannot be used; the message says why and what to do."""


class StoreBusy(StoreError):
    """Another process held the store for longer than the wait allows."""


class StoreWarning(UserWarning):
    """Something in the store needs attention, but nothing stopped working."""


class NotFound(AgentError, LookupError):
    """The agent, run or checkpoint asked for does not exist."""


class Conflict(AgentError):
    """The request would touch a run that is running, or one another run depends on."""


class AgentBusy(AgentError):
    """The agent is running elsewhere (another kernel, or in the background here).

    ``where`` says which, for messages of callers that refuse something else.
    """

    where: str = "elsewhere"

    @classmethod
    def here(cls, agent: str) -> AgentBusy:
        exc = cls(
            f"Agent {agent!r} is already running in this kernel (in the background or "
            "from its timeline). Wait for it, or pause it in the timeline or with "
            f"%agent pause {agent}."
        )
        exc.where = "in this kernel"
        return exc

    @classmethod
    def elsewhere(cls, agent: str, pid: int | None) -> AgentBusy:
        who = f"pid {pid}" if pid is not None else "pid unknown"
        exc = cls(
            f"Agent {agent!r} is running in another kernel ({who}). Wait for it, or stop it "
            "there, before running it here."
        )
        exc.where = f"in another kernel ({who})"
        return exc


class NotWaiting(AgentError):
    """An approval was given to an agent that is not waiting for one."""
