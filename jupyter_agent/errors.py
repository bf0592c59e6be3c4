"""Every error a user can meet, in one light module (standard library only).

One tree, so a boundary that reports errors as one short message (the magics, the
widget, the CLI, the REST handlers) catches :class:`AgentError` alone::

    AgentError                  something a user caused or can fix; the message says what to do
    ├── ConfigError             a setting, option or argument cannot be used
    │   ├── ToolError           a tool cannot be offered (undefined, not callable, server down)
    │   ├── BudgetError         a budget that cannot be understood            (also ValueError)
    │   ├── IdentityError       a cell or agent name that cannot be used      (also ValueError)
    │   └── UsageProblem        bad input to a command (--after, a cycle)     (also ValueError)
    ├── ModelError              the model endpoint kept failing; the run pauses, resumable
    │   ├── ContextOverflow     the prompt is too long for the window; compaction shortens it
    │   └── ReplyLimitExceeded  a runaway reply (too long, past the deadline); not retried
    ├── EndpointError           one request to a model endpoint failed; its client retries or
    │   │                       turns it into a ModelError (never reaches a user as it is)
    │   ├── TransportError      no connection, or it was lost mid-reply (a cut stream)
    │   │   └── EndpointTimeout no answer within the client's timeout
    │   ├── StatusError         the endpoint answered with an error status (``response``)
    │   └── ErrorEvent          the endpoint reported an error inside its reply
    ├── StoreError              the store cannot be used (damaged, full, read-only)
    │   ├── StoreBusy           another process held the store past the wait
    │   └── StoreUnavailable    the store's database server cannot be reached now
    ├── StateVersionError       a checkpoint written by a newer jupyter-agent
    ├── NotFound                no such agent, run or checkpoint                (also LookupError)
    ├── Conflict                the request would touch a running run, or one another depends on
    ├── AgentBusy               the agent runs elsewhere (another kernel, or here in the background)
    ├── NotWaiting              an approval for an agent that waits for none
    ├── NotebookError           a notebook ``resume`` cannot read or run to the end
    │   └── OtherStore          the notebook's agents live in another store, or this one is empty
    ├── CallTimedOut            a tool call got no answer in time; the run pauses (also Cancelled)
    └── ToolCallError           the model's own call was malformed; told to the model, not the user
        ├── MalformedCall       arguments that are not a JSON object, an unknown tool  (also ValueError)
        ├── PlanError           bad ``update_plan`` arguments
        ├── DelegateError       bad or refused ``delegate`` arguments
        └── ReadAgentError      bad ``read_agent`` arguments, or an unknown agent

Two more live here because every layer meets them, but they are not errors:
:class:`Cancelled` (the user asked the agent to stop; :class:`CallTimedOut` stops it
the same way) and
:class:`StoreWarning` (something in the store needs attention; nothing stopped).
Subclasses of ``ValueError`` or ``LookupError`` keep that base so callers that
validate input with ``except ValueError`` go on catching them.
"""

from __future__ import annotations


class AgentError(Exception):
    """Something a user caused or can fix; the message says what to do."""


class ConfigError(AgentError):
    """A setting, option or argument cannot be used; the message says what to set."""


class ToolError(ConfigError):
    """A tool cannot be offered: not defined, not callable, its server did not start.

    Raised before an execution writes anything; the message says what to do.
    """


class BudgetError(ConfigError, ValueError):
    """A budget that cannot be understood; the message says what is accepted."""


class IdentityError(ConfigError, ValueError):
    """A notebook, cell or agent name that cannot identify an agent."""


class UsageProblem(ConfigError, ValueError):
    """Bad input to a command (``--after`` naming no agent, a cycle); one short message."""


class ModelError(AgentError):
    """The model endpoint kept failing; the agent pauses and can be resumed.

    ``str()`` is one short sentence for the user; ``detail`` keeps the whole
    (redacted) error the endpoint sent, for the checkpoint and for debugging.
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail or message


class ContextOverflow(ModelError):
    """The endpoint refused the prompt as too long for the model's context window.

    Never retried: the same prompt fails the same way. The caller shortens the
    conversation (compaction) and asks again. ``limit`` is the window and
    ``requested`` the prompt size, in tokens, where the endpoint's message says them.
    """

    def __init__(
        self,
        message: str,
        limit: int | None = None,
        requested: int | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message, detail)
        self.limit = limit
        self.requested = requested


class ReplyLimitExceeded(ModelError):
    """The reply grew past ``max_text`` characters or streamed past the deadline.

    Not retried (a runaway model would run away again); the run pauses, resumable.
    """


class EndpointError(AgentError):
    """One request to a model endpoint failed: the model client retries it or says why.

    Raised by the Chat Completions transport (:mod:`jupyter_agent.model.transport`),
    shaped like the SDKs' errors so one reading of them serves both
    (:mod:`jupyter_agent.model.endpoint_errors`): ``message``; ``body``, the error
    object the endpoint sent (a dict, a text, or None); ``code``, its ``code``;
    ``status_code`` and ``response`` where the endpoint answered.
    """

    status_code: int | None = None

    def __init__(self, message: str, body: object = None, response: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.body = body
        self.response = response
        self.code = body.get("code") if isinstance(body, dict) else None


class TransportError(EndpointError):
    """No connection to the endpoint, or it was lost before the reply ended (retried)."""


class EndpointTimeout(TransportError):
    """The endpoint did not answer, or stopped sending, within the timeout (retried)."""


class StatusError(EndpointError):
    """The endpoint answered with an error status; ``response`` holds its headers and body."""

    def __init__(self, message: str, status_code: int, body: object, response: object) -> None:
        super().__init__(message, body, response)
        self.status_code = status_code


class ErrorEvent(EndpointError):
    """The endpoint reported an error inside its reply (``data: {"error": ...}``)."""


class StoreError(AgentError):
    """The store cannot be used; the message says why and what to do."""


class StoreBusy(StoreError):
    """Another process held the store for longer than the wait allows."""


class StoreUnavailable(StoreError):
    """The store's database server cannot be reached now (down, restarting, network cut).

    Temporary, like :class:`StoreBusy`: the REST API answers 503 with the reason."""


class StoreWarning(UserWarning):
    """Something in the store needs attention, but nothing stopped working."""


class StateVersionError(AgentError):
    """A checkpoint was written by a newer version of jupyter-agent."""


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


class NotebookError(AgentError):
    """A notebook run headless could not be read, or stopped before its end.

    One sentence: which notebook or cell, and why (not JSON, no cells, a kernel
    that is not installed, a failing or timed-out cell). A notebook that cannot
    be read is never written.
    """


class OtherStore(NotebookError):
    """The notebook's agents live in another store than the one given, or it holds none.

    Running it there would start every agent afresh and repeat its model and tool
    calls, so ``resume`` stops before running anything (exit code 3)."""


class ToolCallError(AgentError, ValueError):
    """The model called a tool wrongly; the message is sent back to the model as the result."""


class MalformedCall(ToolCallError):
    """A call whose arguments are not a JSON object, or that names no known tool."""


class PlanError(ToolCallError):
    """Malformed ``update_plan`` arguments; the message is sent back to the model."""


class DelegateError(ToolCallError):
    """Malformed or refused ``delegate`` arguments; the message is sent back to the model."""


class ReadAgentError(ToolCallError):
    """Malformed ``read_agent`` arguments or an unknown agent; told to the model."""


class Cancelled(Exception):
    """The user asked the agent to stop while a reply was streaming (not an error)."""


class CallTimedOut(AgentError, Cancelled):
    """A tool call got no answer within its time limit: the run pauses, resumable, as if
    the user had paused it (the message says which call and which limit)."""


class JobError(AgentError):
    """A job could not be submitted, listed, cancelled or run: one sentence saying why.

    A notebook that does not exist or has no agents, a bad cron expression, a
    queue the member's role may not use, a pinned notebook that changed since.
    """
