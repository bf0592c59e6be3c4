"""The configurable traits of the magics (``c.AgentMagics.*``) and the settings built from them.

:class:`AgentTraits` is a mixin of :class:`jupyter_agent.kernel.magics.AgentMagics`: the
traits are the magics' own (a config section of that name sets them, ``%config AgentMagics``
lists them), kept here so that adding one does not touch the commands. :meth:`AgentTraits._settings`
is the one place they, and a cell's options, become :class:`jupyter_agent.config.Settings`.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from IPython.core.error import UsageError
from traitlets import (
    Bool,
    Dict,
    Enum,
    Float,
    HasTraits,
    Int,
    List,
    TraitError,
    TraitType,
    Unicode,
    validate,
)

from ..config import (
    DURABILITY_MODES,
    FILES_CAP,
    RICH_OUTPUT_BYTES,
    SYNC,
    ClientSettings,
    FilePolicy,
    RunPolicy,
    Settings,
)
from ..core.budget import Budget, parse_budget
from ..core.redaction import secrets_in_environment
from ..errors import BudgetError
from ..loop.notify import ENV_NOTIFY, ENV_SERVER_URL, webhook_urls
from ..model.base import APIS
from ..vocab import ENV_STRICT

T = TypeVar("T", bound=TraitType)


def _config(trait: T) -> T:
    """``trait``, settable from a config file (``c.AgentMagics.name = ...``)."""
    return trait.tag(config=True)


class AgentTraits(HasTraits):
    """The configuration of the magics; see :meth:`_settings` for what it becomes."""

    model = _config(
        Unicode("", help="Default model name for %%agent (e.g. 'gpt-4o-mini', 'offline').")
    )
    max_steps = _config(Int(30, help="Default maximum model calls per execution of an agent."))
    approve = _config(Bool(False, help="Ask for approval before every tool call."))
    base_url = _config(Unicode("", help="OpenAI-compatible endpoint; default: $OPENAI_BASE_URL."))
    api = _config(
        Enum(
            ("", *APIS),
            default_value="",
            help="The API models are asked through: 'chat' (Chat Completions), 'responses' "
            "(OpenAI Responses), 'anthropic' (Anthropic Messages); '': the model's prefix "
            "(anthropic:NAME, responses:NAME), else chat.",
        )
    )
    headers = _config(
        Dict(
            help="Extra HTTP headers of every model request, e.g. {'HTTP-Referer': ...} for "
            "OpenRouter or {'api-key': ...} for Azure."
        )
    )
    query = _config(
        Dict(
            help="Extra query parameters of every model request, e.g. {'api-version': "
            "'2024-10-21'} for Azure OpenAI deployments."
        )
    )
    extra_body = _config(
        Dict(
            help="Extra fields of every model request, e.g. {'thinking': {'type': 'enabled', "
            "'budget_tokens': 4096}} (Anthropic) or {'reasoning': {'effort': 'high', 'summary': "
            "'auto'}} (Responses)."
        )
    )
    store = _config(
        Unicode("", help="Store file; default: $JUPYTER_AGENT_STORE or the Jupyter data dir.")
    )
    retries = _config(Int(4, help="Retries of a failing model call before the agent pauses."))
    retry_backoff = _config(Float(0.5, help="First retry delay in seconds; doubles each retry."))
    timeout = _config(Float(120.0, help="Seconds to wait for the model endpoint."))
    budget = _config(
        Unicode(
            "",
            help="Default budget of a run: tokens (50000, 50k) or dollars ('$2.50'); '' for none.",
        )
    )
    context_window = _config(
        Int(0, help="The model's context window in tokens; 0: learnt from the endpoint or known.")
    )
    prices = _config(
        Dict(
            help="Dollars per million [prompt, completion, cached prompt, cache write] tokens by "
            "model prefix (the last two optional), for $ budgets and costs."
        )
    )
    strict = _config(
        Bool(False, help="Refuse to continue a run whose tools, model or versions changed since.")
    )
    timeline = _config(
        Bool(True, help="Show the checkpoint timeline widget under %%agent cells (in a kernel).")
    )
    rich_output_bytes = _config(
        Int(
            RICH_OUTPUT_BYTES,
            min=0,  # 0: text/plain only
            help="Bytes of a python call's rich output (HTML, images; text/plain is always kept) "
            "saved with its checkpoint and shown again when the cell is restored.",
        )
    )
    notify = _config(
        List(
            Unicode(),
            help="Webhook URLs told when an agent waits for approval, pauses at its budget, is "
            "stuck, errors or finishes (Slack incoming webhooks or any JSON endpoint); "
            "default: $JUPYTER_AGENT_NOTIFY (whitespace- or comma-separated).",
        )
    )
    server_url = _config(
        Unicode(
            "",
            help="The Jupyter server's URL, for links in notifications; default: "
            "$JUPYTER_AGENT_SERVER_URL.",
        )
    )
    durability = _config(
        Enum(
            DURABILITY_MODES,
            SYNC,
            help="What a checkpoint survives before the agent goes on: 'sync' (a machine crash; "
            "one fdatasync per step) or 'process' (the kernel being killed; no fdatasync).",
        )
    )
    mcp_servers = _config(
        Dict(
            help='MCP servers for --mcp, as Claude Desktop writes them: {"name": {"command": ..., '
            '"args": [...], "env": {...}}} (stdio) or {"name": {"url": ...}} (streamable HTTP).'
        )
    )
    # Files as part of a run's state (config.FilePolicy).
    files = _config(
        Bool(
            True,
            help="Record the files the agent's code writes under the notebook's folder, so "
            "rewind and fork put them back.",
        )
    )
    files_cap = _config(
        Int(
            FILES_CAP,
            min=0,
            help="Bytes of file content one run versions; files past it are listed as not "
            "versioned.",
        )
    )
    files_ignore = _config(
        List(
            Unicode(),
            help="More paths not to record: glob patterns of paths relative to the notebook's "
            "folder or of their parts ('data/raw/*', '*.log', 'cache').",
        )
    )

    @validate("max_steps")
    def _check_max_steps(self, proposal: Any) -> int:
        return _at_least(proposal, 1, "the agent could never take a step")

    @validate("retries")
    def _check_retries(self, proposal: Any) -> int:
        return _at_least(proposal, 0, "0 means: no retries")

    @validate("retry_backoff")
    def _check_backoff(self, proposal: Any) -> float:
        return _at_least(proposal, 0, "0 means: retry at once")

    @validate("timeout")
    def _check_timeout(self, proposal: Any) -> float:
        value = proposal["value"]
        if not value > 0:
            raise TraitError(f"AgentMagics.timeout must be more than 0 seconds, not {value!r}.")
        return value

    def _settings(
        self,
        max_steps: int | None = None,
        approve: bool = False,
        tools: tuple[str, ...] = (),
        *,
        budget: Budget | None = None,
        context_window: int | None = None,
        plan: bool = False,
        user_tools: tuple[str, ...] = (),
        mcp: tuple[str, ...] = (),
        strict: bool = False,
    ) -> Settings:
        """The one place the traits (and a cell's options, given here) become settings."""
        budget = budget or self._budget()
        if max_steps is None:  # a budget is a long run's natural limit, not the step count
            max_steps = None if budget is not None else self.max_steps
        policy = RunPolicy(
            max_steps=max_steps,
            budget=budget,
            context_window=context_window or self.context_window or None,
            prices={
                k: tuple(v) if isinstance(v, list | tuple) else (v,) for k, v in self.prices.items()
            },
            plan=plan,
            approve=approve or self.approve,
            approve_tools=() if self.approve else tools,
            tools=user_tools,
            mcp=mcp,
            durability=self.durability,
            strict=strict or self.strict or os.environ.get(ENV_STRICT) == "1",
        )
        client = ClientSettings(
            base_url=self.base_url or None,
            timeout=self.timeout,
            retries=self.retries,
            backoff=self.retry_backoff,
            api=self.api or None,
            headers={str(k): str(v) for k, v in self.headers.items()},
            query={str(k): str(v) for k, v in self.query.items()},
            extra_body=dict(self.extra_body),
        )
        return Settings(
            policy=policy,
            client=client,
            mcp_servers=dict(self.mcp_servers),
            secrets=secrets_in_environment(),
            rich_output_bytes=self.rich_output_bytes,
            notify=webhook_urls(self.notify or os.environ.get(ENV_NOTIFY, "")),
            server_url=self.server_url or os.environ.get(ENV_SERVER_URL, ""),
            files=FilePolicy(
                enabled=self.files, cap=self.files_cap, ignore=tuple(self.files_ignore)
            ),
        )

    def _budget(self) -> Budget | None:
        try:
            return parse_budget(self.budget)
        except BudgetError as exc:
            raise UsageError(f"AgentMagics.budget: {exc}") from None


def _at_least(proposal: Any, low: float, why: str) -> Any:
    value = proposal["value"]
    if value < low:
        name = proposal["trait"].name
        raise TraitError(f"AgentMagics.{name} must be {low} or more ({why}), not {value!r}.")
    return value
