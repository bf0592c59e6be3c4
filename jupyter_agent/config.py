"""What the configuration says about running agents, as small frozen objects.

The magics' traits (``c.AgentMagics.*``) and a cell's ``%%agent`` line are
turned into these in one place (:meth:`jupyter_agent.kernel.traits.AgentTraits._settings`);
everything below takes them as they are:

* :class:`RunPolicy`: what a run may do and when it stops (steps, approvals,
  budget, plan, context window, the tools a new run offers);
* :class:`ClientSettings`: how the model endpoint is reached (where, with which
  key, how long and how often to try);
* :class:`Settings`: both, with the MCP server configurations and the secrets
  redacted from everything stored.

They hold settings only. What an execution works *with* (the store, the
shell, where progress is reported, the namespace lock, the runner of child
agents) is passed as objects of their own
(:class:`jupyter_agent.loop.checkpoints.Collaborators`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import UsageProblem

if TYPE_CHECKING:
    from .core.budget import Budget

#: Durability modes of a checkpoint, strongest first (see :attr:`RunPolicy.durability`).
SYNC, PROCESS = "sync", "process"
DURABILITY_MODES = (SYNC, PROCESS)


#: The default of :attr:`Settings.rich_output_bytes`: a few plots and tables per call.
RICH_OUTPUT_BYTES = 1_000_000
#: The default of :attr:`FilePolicy.cap`: bytes of file content one run versions.
FILES_CAP = 50_000_000
#: The default of :attr:`FilePolicy.scan_limit`: files one scan of the folder looks at.
FILES_SCAN_LIMIT = 10_000


@dataclass(frozen=True)
class FilePolicy:
    """Which files beside the notebook a run versions (see :mod:`jupyter_agent.namespace.files`)."""

    #: Record the files the agent's code creates, changes or deletes under the notebook's folder.
    enabled: bool = True
    #: Bytes of file content a run versions; a file past it is listed as not versioned.
    cap: int = FILES_CAP
    #: More paths not to watch: glob patterns matched against a path relative to the
    #: notebook's folder and against each of its parts (``data/raw/*``, ``*.log``, ``cache``).
    ignore: tuple[str, ...] = ()
    #: Files one scan looks at, so a huge folder costs a bounded time per call; files
    #: past it (in name order) are not watched, and the cell says so once.
    scan_limit: int = FILES_SCAN_LIMIT


@dataclass(frozen=True)
class RunPolicy:
    """What a run may do in one execution, and when it stops."""

    #: Model calls in one execution; None: no limit (the default under a budget).
    max_steps: int | None = 30
    approve: bool = False
    #: Tools that need approval when ``approve`` is on; empty means every tool.
    approve_tools: tuple[str, ...] = ()
    #: The model's context window in tokens; None: learnt from the endpoint or
    #: :func:`jupyter_agent.core.context.default_window`.
    context_window: int | None = None
    #: What the run may spend over all its executions; None: the run's last budget.
    budget: Budget | None = None
    #: Dollars per million (prompt, completion[, cached prompt[, cache write]]) tokens,
    #: by model name prefix (see :class:`jupyter_agent.core.budget.Price`).
    prices: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    #: Start with a planning phase, then work through the plan an item at a time.
    plan: bool = False
    #: A new run's notebook functions offered as tools (besides ``@tool`` ones).
    tools: tuple[str, ...] = ()
    #: A new run's MCP servers, by name in :attr:`Settings.mcp_servers`.
    mcp: tuple[str, ...] = ()
    #: What a checkpoint survives before the agent acts on it. ``sync``: a machine crash
    #: or power loss (the journal is ``fdatasync``ed once per step). ``process``: the
    #: kernel being killed, not the machine (written to the OS, never synced: a crash of
    #: the machine may lose the last steps, and the run resumes before them).
    durability: str = SYNC
    #: Refuse to continue a run when what it depends on changed since its last
    #: execution (a tool's source, the model, versions: :mod:`jupyter_agent.loop.fingerprint`).
    strict: bool = False

    def __post_init__(self) -> None:
        if self.durability not in DURABILITY_MODES:
            modes = " or ".join(repr(m) for m in DURABILITY_MODES)
            raise UsageProblem(f"durability must be {modes}, not {self.durability!r}.")

    def recorded_approval(self) -> bool | list[str]:
        """How a run records its approval policy: off, every tool, or the listed tools."""
        if not self.approve:
            return False
        return list(self.approve_tools) or True

    def continuing(self, recorded: bool | list[str] | None) -> RunPolicy:
        """This policy for a continuation the cell does not start: it keeps asking.

        ``recorded``: the run's latest approval policy (as :meth:`recorded_approval`
        wrote it). A run that asked for approvals goes on asking, for the same
        tools, unless this policy asks for every tool.
        """
        if not recorded:
            return self
        tools = tuple(recorded) if isinstance(recorded, list) else ()
        if self.approve and not self.approve_tools:
            tools = ()
        return replace(self, approve=True, approve_tools=tools)


@dataclass(frozen=True)
class ClientSettings:
    """How the model endpoint is reached; unset ones come from the environment."""

    #: An OpenAI-compatible endpoint; None: ``$OPENAI_BASE_URL``, else OpenAI.
    base_url: str | None = None
    #: None: ``$OPENAI_API_KEY``.
    api_key: str | None = None
    #: Seconds to wait for the endpoint.
    timeout: float = 120.0
    #: Retries of a failing model call before the agent pauses.
    retries: int = 4
    #: First retry delay in seconds; doubles each retry.
    backoff: float = 0.5
    #: The API models are asked through ("chat", "responses", "anthropic"); None:
    #: the model's prefix (``anthropic:NAME``), else Chat Completions.
    api: str | None = None
    #: Extra headers of every model request (OpenRouter's ``HTTP-Referer``, a gateway's key).
    headers: dict[str, str] = field(default_factory=dict)
    #: Extra query parameters of every model request (Azure's ``api-version``).
    query: dict[str, str] = field(default_factory=dict)
    #: Extra fields of every model request's body (Anthropic's ``thinking``, the
    #: Responses API's ``reasoning``, ``temperature``).
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """Everything the configuration says about one execution."""

    policy: RunPolicy = field(default_factory=RunPolicy)
    client: ClientSettings = field(default_factory=ClientSettings)
    #: MCP server configurations by name (``c.AgentMagics.mcp_servers``).
    mcp_servers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Values redacted from everything an execution stores or sends on.
    secrets: list[str] = field(default_factory=list)
    #: Bytes of rich output (all but text/plain) a python call keeps with its checkpoint.
    rich_output_bytes: int = RICH_OUTPUT_BYTES
    #: Webhook URLs told when an execution stops (``c.AgentMagics.notify``).
    notify: tuple[str, ...] = ()
    #: The Jupyter server's URL, for links to notebooks in notifications ('' unknown).
    server_url: str = ""
    #: Files as part of a run's state (``c.AgentMagics.files``, ``files_cap``, ``files_ignore``).
    files: FilePolicy = field(default_factory=FilePolicy)
